"""The one exception type that the CLI turns into a single line on stderr."""


class TunerError(Exception):
    """A user-facing error: bad input, a missing study, an unreachable database.

    Its message is shown as is, on one line, without a traceback.
    """
