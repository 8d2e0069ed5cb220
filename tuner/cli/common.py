"""What the command groups share: the two consoles, the --storage option and the storage it opens, and the
logging of the commands that log (worker, evaluate, report).

Light on purpose: every command module imports it, and read-only commands must not pay for torch.
"""

from __future__ import annotations

import logging
import sys
import warnings

import typer
from rich.console import Console

# Piped output (CI logs, `| less`) gets a fixed width instead of rich's 80 columns, so tables stay whole.
out = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

STORAGE_HELP = ("Database URL. Default: $TUNER_STORAGE, else the file named by $TUNER_STORAGE_FILE, else "
                "sqlite:///tuner.db. A URL given here is visible in `ps`: prefer the environment for passwords.")
StorageOpt = typer.Option(None, "--storage", help=STORAGE_HELP, show_default=False)


def open_storage(flag: str | None, **kwargs):
    import optuna

    from tuner.store.storage import make_storage
    from tuner.store.urls import resolve_storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tuner says what it did ("study 'x' created") itself
    return make_storage(resolve_storage_url(flag), **kwargs)


def existing_storage(flag: str | None):
    """For commands that only read: a SQLite file that is not there is an error, never created."""
    return open_storage(flag, create=False)


def setup_logging(verbose: bool = False) -> None:
    import optuna

    # other libraries' INFO lines (matplotlib's "generated new fontManager", ...) are not the user's business
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(process)d] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("tuner").setLevel(logging.DEBUG if verbose else logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tuner logs its own one line per trial
    # tuner uses heartbeats, fail_stale_trials and the retry callback on purpose, with ask/tell.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def check_paths_of(file: str, config) -> None:
    """The launching host's look at the data, weights and plug-ins a study file names, its one line naming
    the file (a user with several study files open must know which one to fix)."""
    from tuner.errors import TunerError
    from tuner.spec.preflight import check_task_paths

    try:
        check_task_paths(config.task)
    except TunerError as exc:
        raise TunerError(f"study file {file}: {exc}") from None
