"""The exceptions tuner raises on purpose: TunerError (the CLI shows it as one line, no traceback), and
Interrupted / TrialFailed (a trial ended for a reason the worker records as its fail_reason)."""


class TunerError(Exception):
    """A user-facing error: bad input, a missing study, an unreachable database.

    Its message is shown as is, on one line, without a traceback.
    """


class Interrupted(Exception):
    """The worker was asked to stop (SIGTERM/SIGINT) while a trial was running."""


class TrialFailed(Exception):
    """A trial failed for a reason worth recording as is (NaN loss, CUDA out of memory, ...)."""
