"""Commands that set a study going: launch-study, prepare, worker, run."""

from __future__ import annotations

import logging
import signal
import time
from typing import Optional

import typer

from tuner.cli.common import StorageOpt, check_paths_of, err, open_storage, out, setup_logging
from tuner.errors import TunerError


def launch_study_cmd(
    file: str = typer.Argument(..., help="Study file (TOML), e.g. studies/digits.toml."),
    storage: Optional[str] = StorageOpt,
    name: Optional[str] = typer.Option(None, "--name", help="Study name; overrides [study] name in the file."),
    no_check: bool = typer.Option(False, "--no-check", help="Do not check here that task.data_dir and "
                                  "task.weights exist (when only the workers can see them)."),
) -> None:
    """Validate a study file and store the study and its config in the database."""
    from tuner.spec.config import load_config
    from tuner.store.urls import resolve_storage_url, worker_hint
    from tuner.fleet.study import launch_study

    config = load_config(file, name=name)  # validate before touching the database
    url = resolve_storage_url(storage)
    if not no_check:
        check_paths_of(file, config)
    result = launch_study(open_storage(url), config, check_paths=False)
    if result.replaced:
        out.print(f"replaced the config of study {result.name!r} (no trial had finished): "
                  f"{result.replaced}", markup=False, highlight=False, soft_wrap=True)
    else:
        verb = "created" if result.created else "already exists with this config; reusing"
        out.print(f"study {result.name!r} {verb}", markup=False, highlight=False)
    if result.warm_start:
        out.print(result.warm_start, markup=False, highlight=False, soft_wrap=True)
    # The hint names the storage: pasted on another host (or in another directory) without it, a worker
    # would open a new, empty sqlite:///tuner.db there and find no study.
    command, note = worker_hint(url, result.name)
    out.print(f"next: {command}  (one per GPU: --gpu 0, --gpu 1, ...; --slots K for K trials per GPU; "
              "--cpu without one)", markup=False, highlight=False, soft_wrap=True)
    if note:
        out.print(f"      {note}", markup=False, highlight=False, soft_wrap=True)


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
    from tuner.store.storage import brief_storage
    from tuner.store.urls import resolve_storage_url
    from tuner.fleet.study import stored_config

    if gpu is not None and cpu:
        raise TunerError("--gpu and --cpu exclude each other")
    if slots < 1:
        raise TunerError(f"--slots must be >= 1, got {slots}")
    setup_logging(verbose)
    device = pick_device(gpu, cpu)
    url = resolve_storage_url(storage)
    # One line, before any data is loaded, if it is a SQLite file that is not there (a worker serves studies
    # launched before: a new empty file would only hide a wrong --storage or working directory), or if the study
    # does not exist. A database that does not answer is waited for (it may be restarting) up to
    # --db-retry-seconds, with a warning at once; a wrong password or database name fails at once.
    with brief_storage(url, create=False, retry_seconds=db_retry_seconds) as st:
        if study is not None:
            stored_config(st, study)
    if slots > 1:
        from tuner.fleet.local import run_slots

        raise typer.Exit(run_slots(url, study, device, slots, threads=threads, db_retry_seconds=db_retry_seconds,
                                   verbose=verbose))
    raise typer.Exit(_serve(url, study, device, threads, db_retry_seconds))


def _serve(url: str, study: str | None, device, threads: int | None, db_retry_seconds: float) -> int:
    """This process as the worker: the trial loop on `device`, a log line per epoch and per finished trial."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from tuner.engine.objective import make_objective
    from tuner.fleet.worker import Worker
    from tuner.store.urls import shown_url

    log = logging.getLogger("tuner")
    log.info("worker on %s, storage %s", device, shown_url(url))

    def on_epoch(e) -> None:
        log.info("trial %d epoch %d/%d value %.4f", e.trial, e.epoch, e.epochs, e.value)

    def on_trial(e) -> None:
        value = "" if e.value is None else f" value {e.value:.4f}"
        detail = f" ({e.detail})" if e.detail else ""
        log.info("trial %d %s%s%s", e.trial, e.state, value, detail)

    worker = Worker(url, lambda config: make_objective(config, device), on_epoch=on_epoch, on_trial=on_trial,
                    db_retry_seconds=db_retry_seconds)
    return worker.run(study)


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
    from tuner.fleet.local import run_local
    from tuner.store.urls import resolve_storage_url

    if workers < 1:
        raise TunerError(f"--workers must be >= 1, got {workers}")
    if slots < 1:
        raise TunerError(f"--slots must be >= 1, got {slots}")
    config = load_config(file, name=name)
    check_paths_of(file, config)  # here, to name the file (run_local's launch then skips the look)
    url = resolve_storage_url(storage)
    st = open_storage(url)
    # A live view and worker log lines would overwrite each other: on a terminal the log goes to a file.
    log_path = ui.run_log_path(config.study.name) if out.is_interactive else None
    where = f"; worker log: {log_path}" if log_path else ""
    result = run_local(st, url, config, workers=workers, slots=slots, check_paths=False,
                       device_args=lambda i: _device_args(i, cpu),
                       log_path=log_path, on_signal=_say_waiting, watch=_show_progress if log_path else None,
                       on_start=lambda first: out.print(f"study {first.study!r}: budget {first.budget}, {workers} "
                                                        f"worker{'s' if workers != 1 else ''}{where}"))
    _print_run_result(st, config, result, log_path, cpu)


def _device_args(index: int, cpu: bool) -> list[str]:
    """Worker `index` of `tuner run`: the CPU, or the GPUs in turn (several workers may share one GPU)."""
    if cpu:
        return ["--cpu"]
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["--gpu", str(index % gpus)] if gpus else ["--cpu"]


def _say_waiting(signum: int) -> None:
    err.print("waiting for the workers to stop (Ctrl-C again to exit at once)", markup=False)


def _show_progress(group, progress) -> None:
    """`progress` live, once a second, until every worker has exited; a Ctrl-C is passed on to the workers
    (which then fail their trials cleanly, to be retried) and ends the view."""
    from tuner.cli import ui

    last = None

    def view():
        nonlocal last
        last = progress.snapshot()
        return ui.progress_view(last)

    def stale(note: str):  # the DB is down for a moment: keep showing what we knew
        return ui.progress_view(last, note) if last is not None else note

    try:
        ui.redraw(out, ui.tolerant(view, stale), 1.0, until=lambda: not group.running())
    except KeyboardInterrupt:  # the view's own Ctrl-C: the workers run in their own session, pass it on
        group.forward(signal.SIGINT)


def _print_run_result(st, config, result, log_path, cpu: bool) -> None:
    """The end of `tuner run`: the best params (tested), the Pareto front, or why there are none."""
    from tuner.cli import ui
    from tuner.fleet.progress import complete_message
    from tuner.fleet.compute import study_done
    from tuner.fleet.study import best_trial, front_trials, stored_config

    study = result.study
    if result.complete:  # the budget was spent before: no worker was started
        out.print(complete_message(study, result.complete))
        _refuse_without_a_result(st, study)
        if result.first.best_trial is not None:
            ui.print_best(out, best_trial(st, study))
        return
    if result.signals:  # stopped by Ctrl-C or SIGTERM: the workers failed their trials cleanly, to be retried
        raise typer.Exit(result.exit_code)
    if any(result.codes):
        if log_path:
            ui.print_tail(err, log_path)
        raise TunerError(f"workers exited with codes {result.codes}; see {log_path or 'their log above'}")
    why = study_done(st, st.get_study_id_from_name(study), stored_config(st, study))
    out.print(f"finished in {result.elapsed_s:.0f} s" + (f" ({why})" if why else ""), markup=False)
    _refuse_without_a_result(st, study)
    if config.study.multi_objective:
        ui.print_front(out, config, front_trials(st, study))
        return
    _score_best_on_test(st, study, cpu)
    ui.print_best(out, best_trial(st, study))


def _refuse_without_a_result(st, study: str) -> None:
    """A spent budget with no COMPLETE trial (every one pruned, infeasible or failed) is one line and exit 1:
    the run was asked for the best params and has none to give."""
    from collections import Counter

    states = Counter(t.state.name for t in st.get_all_trials(st.get_study_id_from_name(study), deepcopy=False))
    if states["COMPLETE"] == 0:
        raise TunerError(f"study {study!r} ended with no COMPLETE trial ({states['PRUNED']} pruned, "
                         f"{states['FAIL']} failed): the pruner, max_params or the objective stopped every one; "
                         f"see `tuner status --study {study}`")


def _score_best_on_test(st, study: str, cpu: bool) -> None:
    """The best trial's held-out test score, once, at the end of `tuner run`; a study without a test split
    (or whose best weights live on another host) says why and goes on to print the best params."""
    from tuner.engine.device import pick_device
    from tuner.engine.evaluate import score_on_test

    try:
        score_on_test(st, study, top=1, device=pick_device(None, cpu))
    except TunerError as exc:
        err.print(f"note: no test score: {exc}", markup=False, highlight=False, soft_wrap=True)
