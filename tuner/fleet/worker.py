"""The worker: pulls trials of a study from the database until its budget is spent.

One loop: take the budget lock -> count -> ask -> run with a heartbeat -> tell. A reaper thread fails
and retries dead workers' trials. SIGTERM/SIGINT end the current trial as FAIL ("interrupted", so it is
retried) and exit; a second signal exits at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from tuner.fleet.asha import PAUSED_ATTR, AshaPruner, make_asha_pruner, promotable, promote
from tuner.fleet.pbt import MEMBER_ATTR, PbtPruner, make_pbt_pruner, members_started, next_generation, queue_generation
from tuner.store.budget import budget_lock, can_start, trial_counts
from tuner.fleet.compute import TrialCompute, study_done
from tuner.fleet.stopping import WallClock, has_stops
from tuner.spec.config import StudyConfig
from tuner.errors import Interrupted, TrialFailed, TunerError
from tuner.fleet.lifecycle import current_config
from tuner.store.place import study_place
from tuner.fleet.progress import complete_message
from tuner.fleet.recovery import INTERRUPTED, Reaper, RetryFailedTrial, TrialHeartbeat, objective_failures
from tuner.fleet.retention import sweep_checkpoints
from tuner.spec.search import make_pruner, make_sampler
from tuner.store.storage import brief_storage, call_with_retry, make_storage
from tuner.fleet.study import stored_config, tuner_studies

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialEvent:
    study: str
    trial: int
    state: str  # COMPLETE | PRUNED | FAIL | LOST
    value: float | None  # the first objective's, with several
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


JOINED_ATTR = "tuner_workers_joined"  # study system attribute: how many worker processes have served it


def take_ordinal(storage: optuna.storages.RDBStorage, study_id: int) -> int:
    """This worker's ordinal in the study: 0 for the first worker process that asks it for a trial, then 1, 2, ...
    (call under the budget lock)."""
    ordinal = storage.get_study_system_attrs(study_id).get(JOINED_ATTR, 0)
    storage.set_study_system_attr(study_id, JOINED_ATTR, ordinal + 1)
    return ordinal


def sampler_seed(config: StudyConfig, ordinal: int) -> int:
    """The first worker of a study samples with the study's seed itself, so one worker and one seed give the
    same trials run after run; each later worker takes seed + its ordinal (the same seed in two workers would
    propose identical trials). QMC is the exception: its workers share one scrambled sequence, whose position
    Optuna keeps in the study, so every one takes the study's seed. (Training is seeded by seed + trial number.)"""
    if config.study.sampler == "qmc":
        return config.study.seed
    return (config.study.seed + ordinal) % 2**32


class Worker:
    """Serves studies from one storage. `make_objective(config)` builds the per-study objective
    (tuner.engine.objective.make_objective bound to a device; bench/scale.py passes a cheap one)."""

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
        self.compute: dict[int, TrialCompute] = {}  # trial id -> its claims, from ask until it runs
        self.clocks: dict[int, WallClock] = {}  # trial id -> its max_hours check, from ask until it runs

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
            config = stored_config(config_storage, name)
            study_id = config_storage.get_study_id_from_name(name)
            self.place = study_place(config_storage.get_study_user_attrs(study_id), name)  # where its checkpoints go
            why = self._with_retry(lambda: _done_now(config_storage, study_id, config), "count trials")
        if why:  # say so, before loading any data for it
            _log.info("%s", complete_message(name, why))
            return
        w = config.worker
        storage = make_storage(self.url, heartbeat_interval=w.heartbeat_interval, grace_period=w.grace_period,
                               heartbeat_stale_trial_callback=RetryFailedTrial(max_retry=config.study.max_retries),
                               retry_seconds=self.db_retry_seconds)
        # the sampler is replaced by one seeded for this worker as it asks for its first trial (_next_trial_once)
        study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                                  pruner=_make_pruner(config))
        self.seeded = False
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
        # after each tell, and before exiting; the place and config are the ones this worker serves
        sweep_checkpoints(self.storage, study._study_id, study.study_name, known=(self.place, config))
        return self._with_retry(lambda: self._next_trial_once(study, config), "next trial")

    def _next_trial_once(self, study: optuna.Study, config: StudyConfig) -> optuna.Trial | object | None:
        """A new trial, _WAIT (others' running trials hold the rest of the budget), or None (done)."""
        storage, study_id = self.storage, study._study_id
        with budget_lock(storage, study_id):
            config = current_config(storage, study_id, config)  # `tuner extend` may have changed n_trials
            counts = trial_counts(storage, study_id)
            why = study_done(storage, study_id, config, counts, record=True)  # the first to see a stop records it
            if why:  # the worker's last line says why it ends (a spent budget, a stop condition)
                _log.info("%s", complete_message(study.study_name, why))
                return None
            failures = objective_failures(storage, study_id) if counts["FAIL"] else 0
            if failures >= config.study.max_failures:
                raise TunerError(f"study {study.study_name!r}: {failures} trials failed "
                                 f"(study.max_failures = {config.study.max_failures}); see `tuner status` "
                                 "and the trials' fail_reason")
            queued = self._continue_paused(study, config)  # ASHA, PBT: resume paused trials before new ones
            if not queued and not can_start(counts, config.study.n_trials):
                return _WAIT
            if not self.seeded:  # under the lock: workers that start together still get distinct ordinals
                ordinal = take_ordinal(storage, study_id)
                study.sampler = make_sampler(config.study.sampler, sampler_seed(config, ordinal))
                self.seeded = True
            # No heartbeat is written here: the trial's heartbeat thread writes its first one as it starts,
            # and the reaper starts the clock for a trial whose worker died before that.
            trial = study.ask()  # a queued trial first: a continuation, a retry, an [[enqueue]] config
            if isinstance(study.pruner, PbtPruner) and MEMBER_ATTR not in trial.user_attrs:  # a new member
                trial.set_user_attr(MEMBER_ATTR, members_started(study.get_trials(deepcopy=False)))
            if config.study.compute_budget:  # under the same lock that saw the budget not spent
                self.compute[trial._trial_id] = TrialCompute(storage, study_id, trial._trial_id, config.study)
                self.compute[trial._trial_id].claim_first()
            if config.study.max_hours:
                self.clocks[trial._trial_id] = WallClock(storage, study_id, trial._trial_id, config.study)
            return trial

    def _continue_paused(self, study: optuna.Study, config: StudyConfig) -> bool:
        """Queue what a scheduler resumes (call under the budget lock; the ask that follows takes it): ASHA's
        best promotable paused trial, or PBT's next generation once every member has reached its end."""
        if isinstance(study.pruner, AshaPruner):
            paused = promotable(study.get_trials(deepcopy=False), study.pruner, config.study.direction == "maximize")
            if paused is not None:
                promote(study, paused)
                _log.info("trial %d promoted (paused at epoch %d): it resumes from its checkpoint", paused.number,
                          paused.user_attrs[PAUSED_ATTR])
            return paused is not None
        if isinstance(study.pruner, PbtPruner):
            generation = next_generation(study.get_trials(deepcopy=False), config)
            if generation:
                queue_generation(study, generation, self.place)
                exploits = ", ".join(f"{s.member}<-{s.donor.user_attrs[MEMBER_ATTR]}" for s in generation if s.donor)
                _log.info("PBT generation at epoch %d queued (exploits: %s)",
                          generation[0].previous.user_attrs[PAUSED_ATTR], exploits or "none")
            return bool(generation)
        return False

    def _run_one(self, study: optuna.Study, trial: optuna.Trial, config: StudyConfig, objective: Callable) -> None:
        # The heartbeat runs until the result is stored, not just until training ends: telling can wait
        # (for the budget lock, a slow database, a busy machine), and a trial that stops heartbeating while
        # its worker is alive would be failed as stale by another worker's reaper and its result dropped.
        heartbeat = TrialHeartbeat(self.storage, trial._trial_id, config.worker.heartbeat_interval)
        heartbeat.start()
        try:
            self._train_and_tell(study, trial, objective, self.compute.pop(trial._trial_id, None))
        finally:
            heartbeat.stop()

    def _train_and_tell(self, study: optuna.Study, trial: optuna.Trial, objective: Callable,
                        compute: TrialCompute | None) -> None:
        started = time.monotonic()
        state, value, reason = TrialState.COMPLETE, None, ""

        clock = self.clocks.pop(trial._trial_id, None)

        def on_epoch(event) -> None:
            self.on_epoch(event)
            # max_hours first: a trial the clock stops claims no epoch of the compute budget it would not train
            if clock is not None:  # stops the trial once the study's time is up (TrialPruned)
                clock.after_epoch(event.epoch, event.epochs, event.pruned)
            if compute is not None:  # claims the next epoch, or stops the trial (TrialPruned)
                compute.after_epoch(event.epoch, event.epochs, event.pruned)

        try:
            value = objective(trial, self.signals.stop.is_set, on_epoch)
            if not all(math.isfinite(v) for v in _values(value)):
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
                if self.storage.get_trial(trial._trial_id).user_attrs.get("fail_reason") != reason:
                    self._lost(study, trial)  # a reaper failed it meanwhile (this worker was paused): its FAIL
                    return
            elif state == TrialState.PRUNED:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, _values(value))
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
            if isinstance(exc, ValueError) and "Cannot tell" not in str(exc):
                raise
            stored = self.storage.get_trial(trial._trial_id)
            # Our own tell may have committed just before the connection dropped, and been retried; a FAIL is
            # ours only with our reason (a reaper's FAIL of a paused worker's trial says "no heartbeat").
            if stored.state != state or (state == TrialState.COMPLETE and stored.values != _values(value)) or (
                    state == TrialState.FAIL and stored.user_attrs.get("fail_reason") != reason):
                self._lost(study, trial)
                return
        values = _values(value) if value is not None else []
        detail = reason or (" ".join(f"{v:.4g}" for v in values) if len(values) > 1 else "")
        self.on_trial(TrialEvent(study.study_name, trial.number, state.name, values[0] if values else None, detail))

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


def _done_now(storage: optuna.storages.RDBStorage, study_id: int, config: StudyConfig) -> str:
    """study_done as a worker starts; a stop condition it is the first to see is recorded, under the budget lock
    (taken only then: a worker's first lock is otherwise the one before its first trial)."""
    why = study_done(storage, study_id, config)
    if not why or not has_stops(config.study):
        return why
    with budget_lock(storage, study_id):
        return study_done(storage, study_id, config, record=True)


def _make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    if config.pruner.get("type") == "asha":  # a scheduler: pauses and promotes (tuner.fleet.asha)
        return make_asha_pruner(config)
    if config.pruner.get("type") == "pbt":  # a scheduler: pauses each segment, exploits and explores (tuner.fleet.pbt)
        return make_pbt_pruner(config)
    return make_pruner(config.pruner)


def _values(value: float | Sequence[float]) -> list[float]:
    """The objective's result as Optuna's list of values (a multi-objective study returns one per objective)."""
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


_WAIT = object()
