"""The `tuner` command: each command is a few lines calling one library function. The only module that prints."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import warnings
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tuner.errors import TunerError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hyperparameter search for PyTorch fine-tuning, on Optuna + PostgreSQL/SQLite.")
# Piped output (CI logs, `| less`) gets a fixed width instead of rich's 80 columns, so tables stay whole.
out = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

STORAGE_HELP = ("Database URL. Default: $TUNER_STORAGE, else the file named by $TUNER_STORAGE_FILE, else "
                "sqlite:///tuner.db. A URL given here is visible in `ps`: prefer the environment for passwords.")
StorageOpt = typer.Option(None, "--storage", help=STORAGE_HELP, show_default=False)


def _storage(flag: str | None, **kwargs):
    from tuner.storage import make_storage, resolve_storage_url

    return make_storage(resolve_storage_url(flag), **kwargs)


def _setup_logging(verbose: bool = False) -> None:
    import optuna

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(process)d] %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tuner logs its own one line per trial
    # tuner uses heartbeats, fail_stale_trials and the retry callback on purpose, with ask/tell.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


@app.command("launch-study")
def launch_study_cmd(
    file: str = typer.Argument(..., help="Study file (TOML), e.g. studies/digits.toml."),
    storage: Optional[str] = StorageOpt,
    name: Optional[str] = typer.Option(None, "--name", help="Study name; overrides [study] name in the file."),
    no_check: bool = typer.Option(False, "--no-check", help="Do not check here that task.data_dir and "
                                  "task.weights exist (when only the workers can see them)."),
) -> None:
    """Validate a study file and store the study and its config in the database."""
    from tuner.config import load_config
    from tuner.study import launch_study

    config = load_config(file, name=name)  # validate before touching the database
    result = launch_study(_storage(storage), config, check_paths=not no_check)
    if result.replaced:
        out.print(f"replaced the config of study {result.name!r} (no trial had finished): "
                  f"{result.replaced}", markup=False, highlight=False, soft_wrap=True)
    else:
        verb = "created" if result.created else "already exists with this config; reusing"
        out.print(f"study {result.name!r} {verb}")
    out.print(f"next: tuner worker --study {result.name}  (one per GPU: --gpu 0, --gpu 1, ...)")


@app.command()
def worker(
    study: Optional[str] = typer.Option(None, "--study", help="Study to serve. Default: every unfinished study, "
                                        "oldest first."),
    storage: Optional[str] = StorageOpt,
    gpu: Optional[int] = typer.Option(None, "--gpu", help="Pin this GPU index (an error if it does not exist)."),
    cpu: bool = typer.Option(False, "--cpu", help="Train on the CPU even if a GPU is present."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's)."),
    db_retry_seconds: float = typer.Option(600, "--db-retry-seconds", help="Ride out a database outage this "
                                           "long (retrying with backoff) before exiting."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging (tracebacks of failed trials)."),
) -> None:
    """Pull trials from the database and train them until the study's total budget is spent."""
    from tuner.device import pick_device
    from tuner.objective import make_objective
    from tuner.storage import brief_storage, redact, resolve_storage_url
    from tuner.study import load_config
    from tuner.worker import Worker

    if gpu is not None and cpu:
        raise TunerError("--gpu and --cpu exclude each other")
    _setup_logging(verbose)
    device = pick_device(gpu, cpu)
    if threads:
        import torch

        torch.set_num_threads(threads)
    url = resolve_storage_url(storage)
    with brief_storage(url) as st:  # fail fast, with one line, if the database is unreachable...
        if study is not None:
            load_config(st, study)  # ...or the study does not exist
    log = logging.getLogger("tuner")
    log.info("worker on %s, storage %s", device, redact(url))

    def on_epoch(e) -> None:
        log.info("trial %d epoch %d/%d value %.4f", e.trial, e.epoch, e.epochs, e.value)

    def on_trial(e) -> None:
        value = "" if e.value is None else f" value {e.value:.4f}"
        detail = f" ({e.detail})" if e.detail else ""
        log.info("trial %d %s%s%s", e.trial, e.state, value, detail)

    worker = Worker(url, lambda config: make_objective(config, device), on_epoch=on_epoch, on_trial=on_trial,
                    db_retry_seconds=db_retry_seconds)
    raise typer.Exit(worker.run(study))


@app.command()
def best(
    study: str = typer.Option(..., "--study", help="Study name."),
    storage: Optional[str] = StorageOpt,
    format: str = typer.Option("table", "--format", help="table | json"),
) -> None:
    """Print the best trial: number, value, params and parameter count."""
    from tuner.study import best_trial

    if format not in ("table", "json"):
        raise TunerError(f"--format must be table or json, got {format!r}")
    b = best_trial(_storage(storage), study)
    if format == "json":
        out.print_json(json.dumps({"study": b.study, "trial": b.number, "value": b.value, "params": b.params,
                                   "fixed": b.fixed, "param_count": b.param_count, "epochs_run": b.epochs_run}))
        return
    _print_best(b)


def _device_args(index: int, cpu: bool) -> list[str]:
    """Worker `index` of `tuner run`: the CPU, or the GPUs in turn (several workers may share one GPU)."""
    if cpu:
        return ["--cpu"]
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["--gpu", str(index % gpus)] if gpus else ["--cpu"]


def _print_best(b) -> None:
    table = Table(title=f"best trial of {b.study!r}: #{b.number}, value {b.value:.4f}")
    table.add_column("param")
    table.add_column("value")
    for k, v in b.params.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    for k, v in b.fixed.items():
        table.add_row(f"{k} (fixed)", str(v))
    table.add_row("param_count", f"{b.param_count:,}" if b.param_count is not None else "?")
    out.print(table)


@app.command()
def status(
    study: Optional[str] = typer.Option(None, "--study", help="Study name. Default: all tuner studies."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Per study: trials by state, retries, best value so far, budget left, checkpoint disk use."""
    from tuner.place import human_bytes
    from tuner.study import study_status, tuner_studies

    st = _storage(storage)
    names = [study] if study else tuner_studies(st)
    table = Table()
    for col in ("study", "complete", "pruned", "running", "waiting", "failed", "retries", "best", "budget left",
                "checkpoints"):
        table.add_column(col)
    for name in names:
        s = study_status(st, name)
        c = s.counts
        best = "-" if s.best_value is None else f"{s.best_value:.4f}"
        disk = "-" if s.checkpoint_bytes is None else human_bytes(s.checkpoint_bytes)  # "-": no folder on this host
        table.add_row(name, *(str(c.get(k, 0)) for k in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")),
                      str(s.retries), best, f"{s.budget_left}/{s.n_trials}", disk)
    out.print(table)


@app.command()
def run(
    file: str = typer.Argument(..., help="Study file (TOML)."),
    workers: int = typer.Option(2, "--workers", help="Local worker processes."),
    storage: Optional[str] = StorageOpt,
    name: Optional[str] = typer.Option(None, "--name", help="Study name; overrides [study] name in the file."),
    cpu: bool = typer.Option(False, "--cpu", help="Workers train on the CPU."),
) -> None:
    """Launch a study, run N local workers until its budget is spent, and print the best params."""
    from tuner.config import load_config
    from tuner.storage import resolve_storage_url
    from tuner.study import best_trial, launch_study

    if workers < 1:
        raise TunerError(f"--workers must be >= 1, got {workers}")
    config = load_config(file, name=name)
    url = resolve_storage_url(storage)
    st = _storage(storage)
    launch_study(st, config)
    out.print(f"study {config.study.name!r}: {config.study.n_trials} trials, {workers} workers")
    # The URL goes to the workers through the environment, never their argv (visible in `ps`).
    env = {**os.environ, "TUNER_STORAGE": url}
    threads = max(1, (os.cpu_count() or 1) // workers)
    cmd = [sys.executable, "-m", "tuner", "worker", "--study", config.study.name, "--threads", str(threads)]
    started = time.monotonic()
    procs = [subprocess.Popen(cmd + _device_args(i, cpu), env=env) for i in range(workers)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # the workers got the Ctrl-C too: let them fail their trials cleanly
        err.print("waiting for the workers to stop (Ctrl-C again to exit at once)", markup=False)
        for p in procs:
            p.wait()
        raise typer.Exit(130) from None
    if any(codes):
        raise TunerError(f"workers exited with codes {codes}; see their log above")
    out.print(f"finished in {time.monotonic() - started:.0f} s")
    _print_best(best_trial(st, config.study.name))


@app.command()
def export(
    study: str = typer.Option(..., "--study", help="Study name."),
    out_file: str = typer.Option(..., "--out", help="File to write, e.g. model.pt."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Write the best trial's final weights with its params and the study config (load with torch.load)."""
    from pathlib import Path

    from tuner.export import export_best

    payload = export_best(_storage(storage), study, Path(out_file))
    out.print(f"wrote {out_file}: trial #{payload['trial']}, value {payload['value']:.4f}, epoch {payload['epoch']}")


@app.command()
def extend(
    study: str = typer.Option(..., "--study", help="Study name."),
    n_trials: int = typer.Option(..., "--n-trials", help="The new total budget of COMPLETE + PRUNED trials."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Change a study's total budget; running workers pick it up before their next trial."""
    from tuner.lifecycle import extend_study

    r = extend_study(_storage(storage), study, n_trials)
    if r.new == r.old:
        out.print(f"study {r.name!r}: n_trials is already {r.new}")
        return
    out.print(f"study {r.name!r}: n_trials {r.old} -> {r.new} ({r.finished} finished)")
    if r.new > r.old:
        out.print(f"workers still running take the new trials; a worker that had exited does not come back: "
                  f"tuner worker --study {r.name}", markup=False, soft_wrap=True)


@app.command()
def delete(
    study: str = typer.Option(..., "--study", help="Study name."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Delete a study from the database, with all its trials and checkpoints."""
    from tuner.lifecycle import delete_study, plan_delete
    from tuner.place import human_bytes

    st = _storage(storage)
    plan = plan_delete(st, study)
    if not yes:
        if not sys.stdin.isatty():
            raise TunerError(f"tuner delete asks for confirmation on a terminal; pass --yes to delete study "
                             f"{study!r} without asking")
        running = f", {plan.running} of them RUNNING (stop their workers first)" if plan.running else ""
        if not typer.confirm(f"delete study {study!r}: {plan.trials} trials{running} and "
                             f"{human_bytes(plan.checkpoint_bytes)} of checkpoints in {plan.place.path}?"):
            out.print("nothing deleted")
            raise typer.Exit(1)
    done = delete_study(st, study)
    out.print(f"deleted study {study!r}: {done.trials} trials, {human_bytes(done.checkpoint_bytes)} of "
              f"checkpoints freed ({done.place.path})", markup=False, highlight=False, soft_wrap=True)


@app.command()
def dashboard(
    storage: Optional[str] = StorageOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. The dashboard has no login and can "
                             "delete studies: keep it on loopback unless behind an authenticating proxy."),
    port: int = typer.Option(8080, "--port", help="Port."),
) -> None:
    """Serve optuna-dashboard for the storage."""
    from tuner.dashboard import serve_dashboard

    st = _storage(storage)
    where = "loopback only" if host in ("127.0.0.1", "localhost", "::1") else "REACHABLE FROM OTHER HOSTS"
    out.print(f"optuna-dashboard on http://{host}:{port}/ ({where}; --host to change)")
    serve_dashboard(st, host, port)


def main() -> None:
    """Entry point: a TunerError becomes one line on stderr and exit code 1."""
    try:
        # standalone_mode=False: click returns a command's typer.Exit code instead of exiting itself
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except TunerError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted", markup=False)
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):  # usage errors: click's own one-liner
            exc.show()
            sys.exit(exc.exit_code)
        _print_bug(exc)
        sys.exit(1)


def _print_bug(exc: BaseException) -> None:
    """A bug, not a user error: show the traceback, with the storage password scrubbed out of it."""
    import traceback

    from tuner.storage import resolve_storage_url, scrub

    text = "".join(traceback.format_exception(exc))
    try:
        text = scrub(text, resolve_storage_url(_argv_storage()))
    except TunerError:
        pass
    sys.stderr.write(text)


def _argv_storage() -> str | None:
    args = sys.argv
    for i, arg in enumerate(args):
        if arg == "--storage" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--storage="):
            return arg.split("=", 1)[1]
    return None
