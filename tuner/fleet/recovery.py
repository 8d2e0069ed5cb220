"""Keeping trials honest when workers die: heartbeats that survive DB errors, a reaper on a timer,
and bounded retries with the same params.

Optuna writes heartbeats only inside study.optimize(), its heartbeat thread ends on the first DB error,
and it fails stale trials only when some worker starts a trial. tuner runs ask/tell, so it owns these.
"""

from __future__ import annotations

import copy
import logging
import threading
import time

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tuner.store.budget import budget_lock
from tuner.store.lease import ReaperLease
from tuner.fleet.history import history

# user attributes that describe one run of a trial, not its params: a retry starts without them
# (epochs_trained / train_seconds: what this run used of the compute budget, tuner/fleet/compute.py; a retry claims anew)
RUN_ATTRS = ("fail_reason", "wall_time_s", "pruned_at_epoch", "paused_at_epoch", "worker", "epochs_trained",
             "train_seconds")
COUNTED_FAILURES = "tuner_counted_failures"  # system attr of a retry: its lineage's failures that use up retries

# fail_reason of trials that failed for the infrastructure, not the objective: they are retried and do not
# count towards study.max_failures.
INTERRUPTED = "interrupted"  # the worker got SIGTERM/SIGINT
STALE = "no heartbeat for {seconds} s (its worker died or froze)"  # failed by a reaper

_log = logging.getLogger(__name__)


class RetryFailedTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry (a WAITING copy with the same params and its `failed_trial` / `retry_history` system
    attributes), minus run-only attrs, at most max_retry times — where an interruption (a signal: the user's or
    the scheduler's doing, not the trial's) never uses up a retry."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
        system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
        counted = system_attrs.get(COUNTED_FAILURES, len(system_attrs["retry_history"]) - 1)
        counted += trial.user_attrs.get("fail_reason") != INTERRUPTED
        if self._max_retry is not None and counted > self._max_retry:
            return
        system_attrs[COUNTED_FAILURES] = counted
        study.add_trial(optuna.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if k not in RUN_ATTRS},
            system_attrs=system_attrs))


class _Ticker(threading.Thread):
    """Runs tick() every `period` seconds until stopped; an exception is logged once per outage, not fatal."""

    def __init__(self, name: str, period: float):
        super().__init__(name=name, daemon=True)
        self.period = period
        self._stop_event = threading.Event()
        self._failing = False

    def tick(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while True:
            try:
                self.tick()
                if self._failing:
                    _log.info("%s: database reachable again", self.name)
                self._failing = False
            except Exception as exc:  # a DB outage must not end the heartbeat: log it and go on
                if not self._failing:
                    _log.warning("%s: %s (will keep retrying every %ss)", self.name,
                                 type(exc).__name__, self.period)
                self._failing = True
            if self._stop_event.wait(self.period):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class TrialHeartbeat(_Ticker):
    """Records the running trial's heartbeat every heartbeat_interval seconds."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: float):
        super().__init__(f"heartbeat[{trial_id}]", interval)
        self.storage, self.trial_id = storage, trial_id

    def tick(self) -> None:
        # Not through ResilientRDBStorage's backoff (up to 10 s between tries, more than a short grace period):
        # this thread tries again on its own interval, so a heartbeat is written within one interval of the
        # database coming back.
        optuna.storages.RDBStorage.record_heartbeat(self.storage, self.trial_id)


class Reaper(_Ticker):
    """Fails (and retries) the study's stale trials on a timer, so a dead worker's trial is recovered
    within interval + grace + reaper period (+ a lease take-over, below) even while every other worker is busy.

    Every worker runs one, but only the holder of the study's lease (tuner.store.lease) reaps: one reaper per study,
    not one per worker; when the holder dies, another takes over within LEASE_PERIODS periods."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, period: float):
        super().__init__(f"reaper[{study.study_name}]", period)
        self.study, self.storage = study, storage
        self.lease = ReaperLease(storage.engine, study._study_id, period)
        self._last_reached: float | None = None
        self._judge_after = 0.0

    def stop(self) -> None:
        super().stop()
        try:
            self.lease.release()
        except Exception:  # best effort: the lease runs out by itself
            _log.debug("reaper lease not released", exc_info=True)

    def tick(self) -> None:
        storage = self.storage
        if not self.lease.held():
            self._last_reached = None  # a reaper that takes the lease over starts with a full grace period
            return
        # The database answers now. If it did not at this reaper's last tick (an outage: nobody could write a
        # heartbeat meanwhile), or this reaper only now holds the lease, or this process was frozen, an old
        # heartbeat says nothing about its worker: every worker gets a full grace period to write one again
        # before any trial is judged.
        now, grace = time.monotonic(), storage.grace_period or 2 * storage.heartbeat_interval
        if self._failing or self._last_reached is None or now - self._last_reached > grace:
            self._judge_after = now + grace
        self._last_reached = now
        if now < self._judge_after:
            return
        _start_clock_for_silent_trials(storage, self.study._study_id)
        # Under the budget lock: between FAIL and its WAITING retry the count dips by one, and another
        # worker must not take that slot for a new trial.
        with budget_lock(storage, self.study._study_id):
            fail_stale_trials(self.study, storage)


def fail_stale_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> list[int]:
    """Optuna's fail_stale_trials, plus the reason: each stale trial gets a fail_reason before it is failed,
    so `tuner status` and the dashboard say why. Returns the failed trial ids."""
    reason = STALE.format(seconds=storage.grace_period or 2 * storage.heartbeat_interval)  # Optuna's default
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            # The reason first: a FAIL trial cannot take attributes any more. If its owner wakes up and finishes
            # it in between, the owner's result stands (set_trial_state_values below raises) and the stray
            # reason on that finished trial is harmless.
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker (or the owner) finished it first
    callback = storage.get_heartbeat_stale_trial_callback()
    for trial_id in failed:
        _log.warning("trial %d failed: %s", storage.get_trial(trial_id).number, reason)
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))
    return failed


def objective_failures(storage: optuna.storages.RDBStorage, study_id: int) -> int:
    """FAIL trials the objective caused (exception, NaN, OOM). Infrastructure failures do not count:
    a signal (INTERRUPTED) or a dead/frozen worker (STALE) is retried instead."""
    stale_prefix = STALE.split("{", 1)[0]
    failed = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.FAIL,))
    # Trials failed under a config that `launch-study` has since replaced do not count (tuner.fleet.study).
    replaced = history(storage, study_id, "replace")
    since = replaced[-1]["first_trial"] if replaced else 0
    reasons = [t.user_attrs.get("fail_reason", INTERRUPTED) for t in failed if t.number >= since]
    return sum(1 for r in reasons if r != INTERRUPTED and not r.startswith(stale_prefix))


def _start_clock_for_silent_trials(storage: optuna.storages.RDBStorage, study_id: int) -> None:
    """A RUNNING trial with no heartbeat row is never stale to Optuna (its worker died between ask and
    the first heartbeat). Writing one heartbeat for it starts the grace clock; a live worker overwrites it."""
    query = sqlalchemy.text(
        "SELECT t.trial_id FROM trials t WHERE t.study_id = :sid AND t.state = 'RUNNING' "
        "AND NOT EXISTS (SELECT 1 FROM trial_heartbeats h WHERE h.trial_id = t.trial_id)")
    with storage.engine.connect() as conn:
        silent = [row[0] for row in conn.execute(query, {"sid": study_id})]
    for trial_id in silent:
        storage.record_heartbeat(trial_id)
