"""The `tuner` command: each command is a few lines calling one library function. The only module that prints."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import warnings
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tuner.errors import TunerError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Hyperparameter search for PyTorch fine-tuning, on Optuna + PostgreSQL/SQLite.")
# Piped output (CI logs, `| less`) gets a fixed width instead of rich's 80 columns, so tables stay whole.
out = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

STORAGE_HELP = ("Database URL. Default: $TUNER_STORAGE, else the file named by $TUNER_STORAGE_FILE, else "
                "sqlite:///tuner.db. A URL given here is visible in `ps`: prefer the environment for passwords.")
StorageOpt = typer.Option(None, "--storage", help=STORAGE_HELP, show_default=False)


def _storage(flag: str | None, **kwargs):
    import optuna

    from tuner.store.storage import make_storage, resolve_storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tuner says what it did ("study 'x' created") itself
    return make_storage(resolve_storage_url(flag), **kwargs)


def _existing_storage(flag: str | None):
    """For commands that only read: a SQLite file that is not there is an error, never created."""
    return _storage(flag, create=False)


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
    from tuner.spec.config import load_config
    from tuner.store.storage import resolve_storage_url, worker_hint
    from tuner.fleet.study import launch_study

    config = load_config(file, name=name)  # validate before touching the database
    url = resolve_storage_url(storage)
    result = launch_study(_storage(url), config, check_paths=not no_check)
    if result.replaced:
        out.print(f"replaced the config of study {result.name!r} (no trial had finished): "
                  f"{result.replaced}", markup=False, highlight=False, soft_wrap=True)
    else:
        verb = "created" if result.created else "already exists with this config; reusing"
        out.print(f"study {result.name!r} {verb}", markup=False, highlight=False)
    # The hint names the storage: pasted on another host (or in another directory) without it, a worker
    # would open a new, empty sqlite:///tuner.db there and find no study.
    command, note = worker_hint(url, result.name)
    out.print(f"next: {command}  (one per GPU: --gpu 0, --gpu 1, ...; --slots K for K trials per GPU; "
              "--cpu without one)", markup=False, highlight=False, soft_wrap=True)
    if note:
        out.print(f"      {note}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def prepare(
    file: str = typer.Argument(..., help="Study file (TOML) whose [task] dataset to prepare."),
) -> None:
    """Prepare the study's dataset into the cache now (workers otherwise do it on first use, once per host)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from tuner.spec.config import load_config
    from tuner.data.cache import prepare as prepare_data

    config = load_config(file)
    started = time.monotonic()
    with Progress("preparing", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("images", total=None)
        prepared = prepare_data(config.task, progress=lambda done, total: bar.update(task, completed=done,
                                                                                      total=total))
    size = sum(f.stat().st_size for f in prepared.path.iterdir())
    counts = ", ".join(f"{split} {len(index):,}" for split, index in prepared.splits.items())
    out.print(f"{config.task.dataset}: {len(prepared.labels):,} images ({counts}) at "
              f"{prepared.images.shape[-1]} px, {size / 2**20:,.1f} MiB in {prepared.path} "
              f"({time.monotonic() - started:.1f} s)", markup=False, highlight=False, soft_wrap=True)


@app.command()
def worker(
    study: Optional[str] = typer.Option(None, "--study", help="Study to serve. Default: every unfinished study, "
                                        "oldest first."),
    storage: Optional[str] = StorageOpt,
    gpu: Optional[int] = typer.Option(None, "--gpu", help="Pin this GPU index (an error if it does not exist)."),
    cpu: bool = typer.Option(False, "--cpu", help="Train on the CPU even if a GPU is present."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's; "
                                          "with --slots on the CPU: the CPUs shared between the slots)."),
    slots: int = typer.Option(1, "--slots", min=1, help="Trial loops on this device at once: K worker processes under "
                              "this one, which forwards signals to them and exits with their worst code."),
    db_retry_seconds: float = typer.Option(600, "--db-retry-seconds", help="Ride out a database outage this "
                                           "long (retrying with backoff) before exiting."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging (tracebacks of failed trials)."),
) -> None:
    """Pull trials from the database and train them until the study's total budget is spent."""
    from tuner.engine.device import pick_device
    from tuner.store.storage import brief_storage, resolve_storage_url, shown_url
    from tuner.fleet.study import load_config

    if gpu is not None and cpu:
        raise TunerError("--gpu and --cpu exclude each other")
    if slots < 1:
        raise TunerError(f"--slots must be >= 1, got {slots}")
    _setup_logging(verbose)
    device = pick_device(gpu, cpu)
    url = resolve_storage_url(storage)
    # One line, before any data is loaded, if it is a SQLite file that is not there (a worker serves studies
    # launched before: a new empty file would only hide a wrong --storage or working directory), or if the study
    # does not exist. A database that does not answer is waited for (it may be restarting) up to
    # --db-retry-seconds, with a warning at once; a wrong password or database name fails at once.
    with brief_storage(url, create=False, retry_seconds=db_retry_seconds) as st:
        if study is not None:
            load_config(st, study)
    log = logging.getLogger("tuner")
    if slots > 1:
        raise typer.Exit(_run_slots(study, device, slots, threads, db_retry_seconds, verbose, url))
    if threads:
        import torch

        torch.set_num_threads(threads)
    from tuner.engine.objective import make_objective
    from tuner.fleet.worker import Worker

    log.info("worker on %s, storage %s", device, shown_url(url))

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
    """Print the best trial: number, value, params and parameter count (several objectives: the Pareto front)."""
    from tuner.fleet.study import best_trial, load_config, front_trials

    if format not in ("table", "json"):
        raise TunerError(f"--format must be table or json, got {format!r}")
    st = _existing_storage(storage)
    config = load_config(st, study)
    if config.study.multi_objective:
        _print_front(config, front_trials(st, study), format)
        return
    b = best_trial(st, study)
    if format == "json":
        out.print_json(json.dumps({"study": b.study, "trial": b.number, "value": b.value, "params": b.params,
                                   "fixed": b.fixed, "param_count": b.param_count, "nonzero_params": b.nonzero_params,
                                   "epochs_run": b.epochs_run,
                                   "test_accuracy": b.test_accuracy}))
        return
    _print_best(b)


def _device_args(index: int, cpu: bool) -> list[str]:
    """Worker `index` of `tuner run`: the CPU, or the GPUs in turn (several workers may share one GPU)."""
    if cpu:
        return ["--cpu"]
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["--gpu", str(index % gpus)] if gpus else ["--cpu"]


def _run_slots(study: str | None, device, slots: int, threads: int | None, db_retry_seconds: float,
               verbose: bool, url: str) -> int:
    """`tuner worker --slots K`: K ordinary workers on one device, this process their parent."""
    from tuner.fleet.processes import WorkerGroup, worker_argv, worst
    from tuner.store.storage import shown_url

    device_args = ["--cpu"] if device.type == "cpu" else ["--gpu", str(device.index or 0)]
    if device.type == "cpu":  # the slots share the CPUs rather than each taking all of them
        threads = threads or max(1, (os.cpu_count() or 1) // slots)
    cmd = worker_argv(study, device_args, threads=threads, db_retry_seconds=db_retry_seconds, verbose=verbose)
    log = logging.getLogger("tuner")
    group = WorkerGroup([cmd] * slots, url, on_signal=lambda signum: log.warning(
        "%s received: passed on to the %d slots", signal.Signals(signum).name, slots))
    log.info("worker on %s with %d slots (pids %s), storage %s", device, slots,
             " ".join(str(p.pid) for p in group.procs), shown_url(url))
    codes = group.wait()
    log.info("slots exited with codes %s", codes)
    return worst(codes)


def _print_front(config, front, format: str) -> None:
    """A multi-objective study's best trials: the Pareto front, one row (or JSON object) per trial."""
    if format == "json":
        out.print_json(json.dumps([{"number": t.number, "values": list(t.values), "params": t.params}
                                   for t in front]))
        return
    objectives = config.study.objectives
    directions = ", ".join(f"{o} ({d})" for o, d in zip(objectives, config.study.directions))
    out.print(f"Pareto front of {config.study.name!r}: {len(front)} trials no other trial beats on every "
              f"objective; {directions}", markup=False, highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("trial")
    for name in objectives:
        table.add_column(name)
    names = list(front[0].params)
    for name in names:
        table.add_column(name)
    for t in front:
        cells = [f"{v:,.0f}" if o in ("param_count",) else f"{v:.4f}" for o, v in zip(objectives, t.values)]
        params = [f"{t.params[n]:.4g}" if isinstance(t.params.get(n), float) else str(t.params.get(n, "-"))
                  for n in names]
        table.add_row(f"#{t.number}", *cells, *params)
    out.print(table)


def _print_best(b) -> None:
    # the title as its own line: a table title wraps at the table's width, mid-sentence
    out.print(f"best trial of {b.study!r}: #{b.number}, value {b.value:.4f}", markup=False, highlight=False,
              soft_wrap=True)
    table = Table()
    table.add_column("param")
    table.add_column("value")
    for k, v in b.params.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    for k, v in b.fixed.items():
        table.add_row(f"{k} (fixed)", str(v))
    table.add_row("param_count", f"{b.param_count:,}" if b.param_count is not None else "?")
    if b.nonzero_params is not None and b.nonzero_params != b.param_count:  # its weights were pruned
        table.add_row("nonzero_params", f"{b.nonzero_params:,}")
    table.add_row("test_accuracy", f"{b.test_accuracy:.4f}" if b.test_accuracy is not None
                  else "not measured (tuner evaluate)")
    out.print(table)


@app.command()
def status(
    study: Optional[str] = typer.Option(None, "--study", help="Study name. Default: all tuner studies."),
    storage: Optional[str] = StorageOpt,
    watch: bool = typer.Option(False, "--watch", help="Refresh the table until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between refreshes with --watch."),
) -> None:
    """Per study: trials by state, retries, best value so far, budget left, checkpoint disk use."""
    from tuner.cli import ui
    from tuner.fleet.study import study_status, tuner_studies

    if watch and not interval > 0:
        raise TunerError(f"--interval must be > 0 seconds, got {interval}")
    st = _existing_storage(storage)

    def table(caption: str = ""):
        return ui.status_table([study_status(st, n) for n in ([study] if study else tuner_studies(st))], caption)

    if not watch:
        out.print(table())
        return
    try:
        ui.redraw(out, ui.tolerant(lambda: table(f"every {interval:g} s; Ctrl-C to stop"), lambda note: note),
                  interval)
    except KeyboardInterrupt:  # the way to leave --watch: not an error
        pass


@app.command()
def run(
    file: str = typer.Argument(..., help="Study file (TOML)."),
    workers: int = typer.Option(2, "--workers", min=1, help="Local worker processes."),
    storage: Optional[str] = StorageOpt,
    name: Optional[str] = typer.Option(None, "--name", help="Study name; overrides [study] name in the file."),
    cpu: bool = typer.Option(False, "--cpu", help="Workers train on the CPU."),
    slots: int = typer.Option(1, "--slots", min=1, help="Trial loops per worker (`tuner worker --slots`)."),
) -> None:
    """Launch a study, run N local workers until its budget is spent, and print the best params.

    On a terminal it shows live progress and the workers log to tuner-run-STUDY.log; piped, their log is the
    output."""
    from tuner.cli import ui
    from tuner.spec.config import load_config
    from tuner.fleet.processes import WorkerGroup, worker_argv, worst
    from tuner.fleet.progress import ProgressWatch, complete_message
    from tuner.store.storage import resolve_storage_url
    from tuner.fleet.study import best_trial, launch_study

    if workers < 1:
        raise TunerError(f"--workers must be >= 1, got {workers}")
    if slots < 1:
        raise TunerError(f"--slots must be >= 1, got {slots}")
    config = load_config(file, name=name)
    url = resolve_storage_url(storage)
    st = _storage(storage)
    launch_study(st, config)
    study = config.study.name
    progress = ProgressWatch(st, study)
    first = progress.snapshot()
    if first.done:
        from tuner.fleet.compute import study_done

        out.print(complete_message(study, study_done(st, st.get_study_id_from_name(study), config)))
        if first.best_trial is not None:
            _print_best(best_trial(st, study))
        return
    # A live view and worker log lines would overwrite each other: on a terminal the log goes to a file.
    log_path = ui.run_log_path(study) if out.is_interactive else None
    where = f"; worker log: {log_path}" if log_path else ""
    out.print(f"study {study!r}: budget {first.budget}, {workers} worker{'s' if workers != 1 else ''}{where}")
    threads = max(1, (os.cpu_count() or 1) // (workers * slots))
    commands = [worker_argv(study, _device_args(i, cpu) + ["--slots", str(slots)], threads=threads)
                for i in range(workers)]
    started = time.monotonic()
    log = log_path.open("a") if log_path else None  # append: an earlier run's log may explain a retry
    try:
        group = WorkerGroup(commands, url, log=log, on_signal=_say_waiting)
        codes = _wait_for_workers(group, progress if log else None)
    finally:
        if log:
            log.close()
    if group.signals:  # stopped by Ctrl-C or SIGTERM: the workers failed their trials cleanly, to be retried
        raise typer.Exit(worst(codes))
    if any(codes):
        if log_path:
            ui.print_tail(err, log_path)
        raise TunerError(f"workers exited with codes {codes}; see {log_path or 'their log above'}")
    out.print(f"finished in {time.monotonic() - started:.0f} s")
    if config.study.multi_objective:
        from tuner.fleet.study import front_trials

        _print_front(config, front_trials(st, study), "table")
        return
    _score_best_on_test(st, study, cpu)
    _print_best(best_trial(st, study))


def _score_best_on_test(st, study: str, cpu: bool) -> None:
    """The best trial's held-out test score, once, at the end of `tuner run`; a study without a test split
    (or whose best weights live on another host) says why and goes on to print the best params."""
    from tuner.engine.device import pick_device
    from tuner.engine.evaluate import score_on_test

    try:
        score_on_test(st, study, top=1, device=pick_device(None, cpu))
    except TunerError as exc:
        err.print(f"note: no test score: {exc}", markup=False, highlight=False, soft_wrap=True)


def _say_waiting(signum: int) -> None:
    err.print("waiting for the workers to stop (Ctrl-C again to exit at once)", markup=False)


def _wait_for_workers(group, progress) -> list[int]:
    """Wait for every worker, showing `progress` live (once a second) if given; a signal (Ctrl-C) is passed
    on to them, and the view goes on until they have failed their trials cleanly and exited."""
    from tuner.cli import ui

    last = None

    def view():
        nonlocal last
        last = progress.snapshot()
        return ui.progress_view(last)

    def stale(note: str):  # the DB is down for a moment: keep showing what we knew
        return ui.progress_view(last, note) if last is not None else note

    if progress is not None:
        try:
            ui.redraw(out, ui.tolerant(view, stale), 1.0, until=lambda: not group.running())
        except KeyboardInterrupt:  # the view's own Ctrl-C: the workers run in their own session, pass it on
            group.forward(signal.SIGINT)
    return group.wait()


@app.command()
def evaluate(
    study: str = typer.Option(..., "--study", help="Study name."),
    storage: Optional[str] = StorageOpt,
    top: int = typer.Option(1, "--top", min=1, help="Score this many of the best COMPLETE trials."),
    cpu: bool = typer.Option(False, "--cpu", help="Score on the CPU even if a GPU is present."),
) -> None:
    """Score the best trials' final models once on the held-out test split (stored as test_accuracy; never
    used to select anything)."""
    from tuner.engine.device import pick_device
    from tuner.engine.evaluate import score_on_test

    _setup_logging()
    scores = score_on_test(_existing_storage(storage), study, top=top, device=pick_device(None, cpu))
    for number, accuracy in scores:
        out.print(f"trial {number}: test_accuracy {accuracy:.4f}", markup=False, highlight=False)


@app.command()
def export(
    study: str = typer.Option(..., "--study", help="Study name."),
    out_file: str = typer.Option(..., "--out", help="File to write, e.g. model.pt."),
    trial: Optional[int] = typer.Option(None, "--trial", help="Export this COMPLETE trial instead of the best "
                                        "(a study with several objectives: one from `tuner best`'s front)."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Write the best trial's final weights with its params and the study config (load with torch.load)."""
    from pathlib import Path

    from tuner.engine.export import export_best

    payload = export_best(_existing_storage(storage), study, Path(out_file), trial)
    out.print(f"wrote {out_file}: trial #{payload['trial']}, value {payload['value']:.4f}, epoch {payload['epoch']}")


@app.command()
def extend(
    study: str = typer.Option(..., "--study", help="Study name."),
    n_trials: int = typer.Option(..., "--n-trials", min=1, help="The new total budget of COMPLETE + PRUNED trials."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Change a study's total budget; running workers pick it up before their next trial."""
    from tuner.fleet.lifecycle import extend_study

    r = extend_study(_existing_storage(storage), study, n_trials)
    if r.new == r.old:
        out.print(f"study {r.name!r}: n_trials is already {r.new}")
        return
    out.print(f"study {r.name!r}: n_trials {r.old} -> {r.new} ({r.finished} finished)")
    if r.new > r.old:
        out.print(f"workers still running take the new trials; a worker that had exited does not come back: "
                  f"tuner worker --study {r.name}", markup=False, soft_wrap=True)


@app.command()
def enqueue(
    params: list[str] = typer.Argument(..., help="The trial's params as name=value (the rest are sampled)."),
    study: str = typer.Option(..., "--study", help="Study name."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Queue a known-good config: the next worker to ask runs it, once. It takes a slot of the trial budget."""
    from tuner.fleet.lifecycle import enqueue_params

    number = enqueue_params(_existing_storage(storage), study, params)
    out.print(f"study {study!r}: queued trial #{number} with {' '.join(params)}", markup=False, highlight=False,
              soft_wrap=True)


@app.command()
def delete(
    study: str = typer.Option(..., "--study", help="Study name."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Delete a study from the database, with all its trials and checkpoints."""
    from tuner.fleet.lifecycle import delete_study, plan_delete
    from tuner.store.place import human_bytes

    st = _existing_storage(storage)
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
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port (0: any free port)."),
) -> None:
    """Serve optuna-dashboard for the storage."""
    from tuner.report.dashboard import open_dashboard

    with open_dashboard(_existing_storage(storage), host, port) as server:  # a port in use fails here
        where = "loopback only" if host in ("127.0.0.1", "localhost", "::1") else "REACHABLE FROM OTHER HOSTS"
        out.print(f"optuna-dashboard on http://{host}:{server.server_port}/ ({where}; --host to change)")
        server.serve_forever()


@app.command()
def report(
    study: str = typer.Option(..., "--study", help="Study name."),
    out_file: str = typer.Option("report.html", "--out", help="HTML file to write: one self-contained page that "
                                 "opens from disk, offline."),
    png: Optional[str] = typer.Option(None, "--png", help="Also write one PNG per plot into this folder."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Write one HTML page (and PNGs) of what a study found and what pruning saved."""
    from pathlib import Path

    from tuner.report.build import build_report

    _setup_logging()
    result = build_report(_existing_storage(storage), study, Path(out_file), Path(png) if png else None)
    s = result.snapshot
    spent = ", ".join(text for _, text in s.budget())
    out.print(f"wrote {result.html}: study {study!r}, {len(s.finished)} trials finished (budget spent {spent})",
              markup=False)
    if png:
        out.print(f"wrote {len(result.pngs)} PNGs to {png}", markup=False)


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
