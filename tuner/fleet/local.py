"""Worker processes on this host: `tuner run` (launch a study, run N local workers until its budget is spent, wait
for them) and `tuner worker --slots K` (K trial loops on one device under one parent).

Each child is an ordinary `tuner worker` (tuner.fleet.processes). Prints nothing: what the command line shows
comes back as callbacks and as the returned LocalRun. Which device a worker uses is the caller's to say (device
flags in, `--cpu` or `--gpu N`): the fleet imports neither torch nor the engine.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from tuner.fleet.compute import study_done
from tuner.fleet.processes import WorkerGroup, worker_argv, worst
from tuner.fleet.progress import ProgressSnapshot, ProgressWatch
from tuner.fleet.study import launch_study
from tuner.spec.config import StudyConfig
from tuner.store.urls import shown_url

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalRun:
    """How a local run ended."""

    study: str
    first: ProgressSnapshot  # the study as the run began
    complete: str = ""  # why its budget was already spent (then no worker was started), else ""
    codes: list[int] = field(default_factory=list)  # the workers' exit codes
    signals: int = 0  # signals (Ctrl-C, SIGTERM) passed on to the workers: they stopped on purpose
    elapsed_s: float = 0.0  # from starting the workers until the last one exited

    @property
    def exit_code(self) -> int:
        return worst(self.codes)


def run_local(storage: optuna.storages.RDBStorage, url: str, config: StudyConfig, *, workers: int, slots: int,
              device_args: Callable[[int], Sequence[str]], log_path: Path | None = None,
              on_start: Callable[[ProgressSnapshot], None] = lambda first: None,
              on_signal: Callable[[int], None] = lambda signum: None,
              watch: Callable[[WorkerGroup, ProgressWatch], None] | None = None,
              check_paths: bool = True) -> LocalRun:
    """Launch `config`'s study (idempotent) in `storage` (opened at `url`, which the workers get) and run
    `workers` local `tuner worker --slots <slots>` processes on it until its budget is spent.

    device_args(i) gives worker i's device flags; the CPUs are shared out as each slot's torch threads. Nothing is
    started when the budget is already spent (LocalRun.complete says why). on_start(snapshot) is called just
    before the workers start; with `log_path` their output is appended to that file (an earlier run's log may
    explain a retry), else it is this process's. A signal this process gets is passed on to them, then
    on_signal(signum) is called. watch(group, progress), if given, runs while they do (it returns once they
    have exited or after passing a Ctrl-C on with group.forward); then every worker is waited for.
    """
    launch_study(storage, config, check_paths=check_paths)  # False: the caller looked at the task's paths
    study = config.study.name
    progress = ProgressWatch(storage, study)
    first = progress.snapshot()
    if first.done:
        return LocalRun(study, first, complete=study_done(storage, storage.get_study_id_from_name(study), config))
    on_start(first)
    threads = max(1, (os.cpu_count() or 1) // (workers * slots))
    commands = [worker_argv(study, [*device_args(i), "--slots", str(slots)], threads=threads)
                for i in range(workers)]
    started = time.monotonic()
    log = log_path.open("a") if log_path else None
    try:
        group = WorkerGroup(commands, url, log=log, on_signal=on_signal)
        if watch is not None:
            watch(group, progress)
        codes = group.wait()
    finally:
        if log:
            log.close()
    return LocalRun(study, first, codes=codes, signals=group.signals, elapsed_s=time.monotonic() - started)


def run_slots(url: str, study: str | None, device, slots: int, *, threads: int | None = None,
              db_retry_seconds: float | None = None, verbose: bool = False) -> int:
    """`tuner worker --slots K`: K ordinary workers on `device` (a torch.device: its .type and .index), this
    process their parent, which logs what it does; returns the group's exit code (the worst of theirs)."""
    device_args = ["--cpu"] if device.type == "cpu" else ["--gpu", str(device.index or 0)]
    if device.type == "cpu":  # the slots share the CPUs rather than each taking all of them
        threads = threads or max(1, (os.cpu_count() or 1) // slots)
    cmd = worker_argv(study, device_args, threads=threads, db_retry_seconds=db_retry_seconds, verbose=verbose)
    group = WorkerGroup([cmd] * slots, url, on_signal=lambda signum: _log.warning(
        "%s received: passed on to the %d slots", signal.Signals(signum).name, slots))
    _log.info("worker on %s with %d slots (pids %s), storage %s", device, slots,
              " ".join(str(p.pid) for p in group.procs), shown_url(url))
    codes = group.wait()
    _log.info("slots exited with codes %s", codes)
    return worst(codes)
