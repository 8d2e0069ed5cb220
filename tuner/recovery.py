"""Keeping trials honest when workers die: heartbeats that survive DB errors, a reaper on a timer,
and bounded retries with the same params.

Optuna writes heartbeats only inside study.optimize(), its heartbeat thread ends on the first DB error,
and it fails stale trials only when some worker starts a trial. tuner runs ask/tell, so it owns these.
"""

from __future__ import annotations

import copy
import logging
import threading

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials

from tuner.budget import budget_lock

# user attributes that describe one run of a trial, not its params: a retry starts without them
RUN_ATTRS = ("fail_reason", "wall_time_s", "pruned_at_epoch")

_log = logging.getLogger(__name__)


class RetryFailedTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry (a WAITING copy with the same params, at most max_retry times), minus run-only attrs."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        clean = copy.deepcopy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in RUN_ATTRS}
        super().__call__(study, clean)


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
        self.storage.record_heartbeat(self.trial_id)


class Reaper(_Ticker):
    """Fails (and retries) the study's stale trials on a timer, so a dead worker's trial is recovered
    within interval + grace + reaper period even while every other worker is busy."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.RDBStorage, period: float):
        super().__init__(f"reaper[{study.study_name}]", period)
        self.study, self.storage = study, storage

    def tick(self) -> None:
        storage = self.storage
        _start_clock_for_silent_trials(storage, self.study._study_id)
        # Under the budget lock: between FAIL and its WAITING retry the count dips by one, and another
        # worker must not take that slot for a new trial.
        with budget_lock(storage, self.study._study_id):
            fail_stale_trials(self.study)


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
