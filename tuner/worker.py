"""The worker: pulls trials of a study from the database until its budget is spent.

One loop: take the budget lock -> count -> ask -> run with a heartbeat -> tell. A reaper thread fails
and retries dead workers' trials. SIGTERM/SIGINT end the current trial as FAIL ("interrupted", so it is
retried) and exit; a second signal exits at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from tuner.budget import budget_lock, can_start, trial_counts
from tuner.config import StudyConfig
from tuner.errors import Interrupted, TrialFailed, TunerError
from tuner.lifecycle import current_config
from tuner.progress import complete_message
from tuner.recovery import INTERRUPTED, Reaper, RetryFailedTrial, TrialHeartbeat, objective_failures
from tuner.retention import sweep_checkpoints
from tuner.storage import brief_storage, call_with_retry, make_storage
from tuner.study import load_config, tuner_studies

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialEvent:
    study: str
    trial: int
    state: str  # COMPLETE | PRUNED | FAIL | LOST
    value: float | None
    detail: str


class _Signals:
    """First SIGTERM/SIGINT: stop after failing the current trial cleanly. Second: exit now."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.signum = 0

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        self.stop.set()
        # The next signal gets the default action: the kernel ends the process at once, even while the main
        # thread is blocked in a database call (a Python handler would only run after that call returns).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _log.warning("%s received: failing the current trial as 'interrupted' and exiting "
                     "(send it again to exit at once)", signal.Signals(signum).name)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """For a few database writes that must not be cut in half (a FAIL and its retry): a signal that arrives
        meanwhile takes effect right after them, even a second one, which otherwise ends the process at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        pending: list[int] = []
        previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum))
                    for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for signum in pending:  # now, with the handler (or default action) that was in place
                signal.raise_signal(signum)


def _make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    # Each worker seeds its sampler differently (host, pid): with one seed, parallel workers would
    # propose identical trials. A trial's training is still seeded by the study seed + trial number.
    seed = hash((config.study.seed, socket.gethostname(), os.getpid())) % 2**31
    if config.study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    if config.pruner.type == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=config.pruner.n_startup_trials,
                                       n_warmup_steps=config.pruner.n_warmup_steps)


class Worker:
    """Serves studies from one storage. `make_objective(config)` builds the per-study objective
    (tuner.objective.make_objective bound to a device; bench/scale.py passes a cheap one)."""

    def __init__(
        self,
        url: str,
        make_objective: Callable[[StudyConfig], Callable],
        *,
        on_epoch: Callable = lambda e: None,
        on_trial: Callable[[TrialEvent], None] = lambda e: None,
        db_retry_seconds: float = 600.0,
    ):
        self.url, self.make_objective = url, make_objective
        self.db_retry_seconds = db_retry_seconds  # how long a DB outage is ridden out before exiting
        self.on_epoch, self.on_trial = on_epoch, on_trial
        self.signals = _Signals()

    def run(self, study_name: str | None) -> int:
        """Serve one study (or every unfinished one, oldest first); returns the process exit code."""
        self.signals.install()
        if study_name is not None:
            self._serve(study_name)
        else:
            served: set[str] = set()
            while not self.signals.stop.is_set():
                with brief_storage(self.url, retry_seconds=self.db_retry_seconds) as storage:
                    pending = [n for n in tuner_studies(storage) if n not in served]
                if not pending:
                    break
                served.add(pending[0])
                self._serve(pending[0])
        return 128 + self.signals.signum if self.signals.stop.is_set() else 0

    def _serve(self, name: str) -> None:
        with brief_storage(self.url, retry_seconds=self.db_retry_seconds) as config_storage:
            config = load_config(config_storage, name)
            study_id = config_storage.get_study_id_from_name(name)
            finished = self._with_retry(lambda: trial_counts(config_storage, study_id).finished, "count trials")
        if finished >= config.study.n_trials:  # say so, before loading any data for it
            _log.info("%s", complete_message(name, finished, config.study.n_trials))
            return
        w = config.worker
        storage = make_storage(self.url, heartbeat_interval=w.heartbeat_interval, grace_period=w.grace_period,
                               heartbeat_stale_trial_callback=RetryFailedTrial(max_retry=config.study.max_retries),
                               retry_seconds=self.db_retry_seconds)
        study = optuna.load_study(study_name=name, storage=storage, sampler=_make_sampler(config),
                                  pruner=_make_pruner(config))
        objective = self.make_objective(config)
        self.storage = storage  # the RDBStorage itself (study._storage is Optuna's caching wrapper)
        reaper = Reaper(study, storage, w.reaper_period)
        reaper.start()
        _log.info("serving study %r", name)
        try:
            while not self.signals.stop.is_set():
                trial = self._next_trial(study, config)
                if trial is None:
                    break
                if trial is _WAIT:
                    self.signals.stop.wait(w.reaper_period)
                    continue
                self._run_one(study, trial, config, objective)
        finally:
            reaper.stop()
            storage.engine.dispose()

    def _with_retry(self, fn: Callable, what: str):
        """A multi-statement DB step (under the budget lock) retried as a whole on connection errors."""
        return call_with_retry(fn, url=self.url, retry_seconds=self.db_retry_seconds, what=what)

    def _next_trial(self, study: optuna.Study, config: StudyConfig) -> optuna.Trial | object | None:
        sweep_checkpoints(self.storage, study._study_id, study.study_name)  # after each tell, and before exiting
        return self._with_retry(lambda: self._next_trial_once(study, config), "next trial")

    def _next_trial_once(self, study: optuna.Study, config: StudyConfig) -> optuna.Trial | object | None:
        """A new trial, _WAIT (others' running trials hold the rest of the budget), or None (done)."""
        storage, study_id = self.storage, study._study_id
        with budget_lock(storage, study_id):
            config = current_config(storage, study_id, config)  # `tuner extend` may have changed n_trials
            counts = trial_counts(storage, study_id)
            if counts.finished >= config.study.n_trials:
                return None
            failures = objective_failures(storage, study_id) if counts["FAIL"] else 0
            if failures >= config.study.max_failures:
                raise TunerError(f"study {study.study_name!r}: {failures} trials failed "
                                 f"(study.max_failures = {config.study.max_failures}); see `tuner status` "
                                 "and the trials' fail_reason")
            if not can_start(counts, config.study.n_trials):
                return _WAIT
            # No heartbeat is written here: the trial's heartbeat thread writes its first one as it starts,
            # and the reaper starts the clock for a trial whose worker died before that.
            return study.ask()

    def _run_one(self, study: optuna.Study, trial: optuna.Trial, config: StudyConfig, objective: Callable) -> None:
        # The heartbeat runs until the result is stored, not just until training ends: telling can wait
        # (for the budget lock, a slow database, a busy machine), and a trial that stops heartbeating while
        # its worker is alive would be failed as stale by another worker's reaper and its result dropped.
        heartbeat = TrialHeartbeat(self.storage, trial._trial_id, config.worker.heartbeat_interval)
        heartbeat.start()
        try:
            self._train_and_tell(study, trial, objective)
        finally:
            heartbeat.stop()

    def _train_and_tell(self, study: optuna.Study, trial: optuna.Trial, objective: Callable) -> None:
        started = time.monotonic()
        state, value, reason = TrialState.COMPLETE, None, ""
        try:
            value = objective(trial, self.signals.stop.is_set, self.on_epoch)
            if not math.isfinite(value):
                state, reason = TrialState.FAIL, f"objective returned {value}"
        except optuna.TrialPruned as exc:
            state, reason = TrialState.PRUNED, str(exc)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._lost(study, trial)
            return
        except Interrupted:
            state, reason = TrialState.FAIL, INTERRUPTED
        except TrialFailed as exc:
            state, reason = TrialState.FAIL, str(exc)
        except TunerError as exc:  # the study cannot run here (bad weights/data) or the DB stayed down
            self._fail_quietly(study, trial, str(exc))
            raise
        except Exception as exc:  # the objective's own failure: record it, keep the worker going
            state, reason = TrialState.FAIL, f"{type(exc).__name__}: {exc}"
            _log.debug("trial %d failed", trial.number, exc_info=True)
        self._tell(study, trial, state, value, reason, time.monotonic() - started)

    def _tell(self, study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None,
              reason: str, wall_time: float) -> None:
        try:
            trial.set_user_attr("wall_time_s", round(wall_time, 3))
            if state == TrialState.FAIL:
                trial.set_user_attr("fail_reason", reason)
                self._with_retry(lambda: self._fail_and_retry(study, trial), "tell FAIL")
            elif state == TrialState.PRUNED:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, value)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
            if isinstance(exc, ValueError) and "Cannot tell" not in str(exc):
                raise
            stored = self.storage.get_trial(trial._trial_id)
            # Our own tell may have committed just before the connection dropped, and been retried.
            if stored.state != state or (state == TrialState.COMPLETE and stored.value != value):
                self._lost(study, trial)
                return
        self.on_trial(TrialEvent(study.study_name, trial.number, state.name, value, reason))

    def _fail_and_retry(self, study: optuna.Study, trial: optuna.Trial) -> None:
        # Under the budget lock: between FAIL and the WAITING retry no other worker may take the slot.
        with budget_lock(self.storage, study._study_id):
            if self.storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
                return  # an earlier attempt of this step committed; its retry is queued already
            with self.signals.deferred():  # a FAIL without its retry would lose the trial's params for good
                frozen = study.tell(trial, state=TrialState.FAIL)
                self.storage.get_heartbeat_stale_trial_callback()(study, frozen)

    def _fail_quietly(self, study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
        """Best effort before the worker exits: do not leave the trial RUNNING until the reaper finds it."""
        try:
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=TrialState.FAIL)
        except Exception:  # the database may be the reason we are exiting; the reaper will do it then
            pass

    def _lost(self, study: optuna.Study, trial: optuna.Trial) -> None:
        """Our trial was failed behind our back (we were paused past the grace period) and retried elsewhere."""
        _log.warning("trial %d was failed by another worker while this one was unresponsive; "
                     "dropping its result (its retry counts instead)", trial.number)
        self.on_trial(TrialEvent(study.study_name, trial.number, "LOST", None, "heartbeat lost"))


_WAIT = object()
