"""The `tuner` command: the typer app, --version, the commands registered from their groups, and main().

The commands live one group per module (study_commands, result_commands, lifecycle_commands), each a few lines
calling one library function; what they share (consoles, --storage, logging) is in common.py.
"""

from __future__ import annotations

import sys

import typer

from tuner.cli import lifecycle_commands, result_commands, study_commands
from tuner.cli.common import err, out
from tuner.errors import TunerError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Hyperparameter search for PyTorch fine-tuning, on Optuna + PostgreSQL/SQLite.")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("tuner")
        except PackageNotFoundError:  # run from a source tree that was never pip-installed
            from tuner import __version__ as number
        out.print(f"tuner {number}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


# In this order in `tuner --help`.
app.command("launch-study")(study_commands.launch_study_cmd)
app.command()(study_commands.prepare)
app.command()(study_commands.worker)
app.command()(result_commands.best)
app.command()(result_commands.status)
app.command()(study_commands.run)
app.command()(result_commands.evaluate)
app.command()(result_commands.export)
app.command()(lifecycle_commands.extend)
app.command()(lifecycle_commands.enqueue)
app.command()(lifecycle_commands.delete)
app.command()(lifecycle_commands.copy)
app.command()(result_commands.dashboard)
app.command()(result_commands.report)


def main() -> None:
    """Entry point: a TunerError becomes one line on stderr and exit code 1.

    typer runs in standalone mode: it prints usage errors itself (exit 2), help and --version (exit 0), and
    turns typer.Exit (a worker's 128+signal) into the exit code. Only what it lets through is handled here.
    """
    try:
        app(prog_name="tuner")  # `python -m tuner` too says "Usage: tuner ..."
    except TunerError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:  # outside a command (typer turns one inside into exit 130 itself)
        err.print("aborted", markup=False)
        sys.exit(130)
    except Exception as exc:  # a bug, not a user error: the traceback, with the password scrubbed out
        from tuner.store.urls import scrubbed_traceback

        sys.stderr.write(scrubbed_traceback(exc, sys.argv))
        sys.exit(1)
