"""A study's progress as one snapshot read from the database: what `tuner run` shows live.

The database is the only source: the workers are separate processes (maybe on other hosts) and report
nothing to whoever watches, so the snapshot is rebuilt from trial states and intermediate values on every
poll. The ETA is measured, not modelled: finished trials per second since this watcher started, which
already accounts for the number of workers, pruning and retries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from tuner.store.budget import trial_counts
from tuner.fleet.compute import budget_parts, spent
from tuner.fleet.stopping import stop_reason
from tuner.fleet.study import best_of, stored_config


@dataclass(frozen=True)
class RunningTrial:
    number: int
    epoch: int  # the last epoch it reported (0: still setting up or in its first epoch)


@dataclass(frozen=True)
class ProgressSnapshot:
    study: str
    metric: str
    n_trials: int  # the budget of COMPLETE + PRUNED trials (0: none, the study has a compute budget)
    epochs: int  # per trial
    complete: int
    pruned: int
    failed: int  # FAIL trials; they do not use the budget (their retries do)
    waiting: int  # retries queued for a worker
    running: tuple[RunningTrial, ...]
    best_value: float | None
    best_trial: int | None
    elapsed_s: float  # since this watcher started
    eta_s: float | None  # None until a trial has finished while watching
    spent: float = 0.0  # share of the budget spent (of whichever budget is nearest its end), 0..1
    budget: str = ""  # e.g. "12/20 trials, 40/100 epochs"
    stopped: str = ""  # a stop condition (target, patience, max_hours) ended the study before its budget

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @property
    def done(self) -> bool:
        return self.spent >= 1 or bool(self.stopped)


def complete_message(study: str, why: str) -> str:
    """What a worker or `tuner run` says when the budget is already spent (written once, said by both)."""
    return f"study {study!r} is complete ({why}); nothing to do"


class ProgressWatch:
    """Snapshots of one study; elapsed time and the finished-trial rate count from this object's creation.

    Measuring from here rather than from trial timestamps keeps a resumed study's ETA honest (hours of a
    stopped study would otherwise dilute the rate), and sidesteps Optuna's timestamps being the naive local
    time of whichever host wrote them.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, name: str):
        self.storage, self.name = storage, name
        self.config = stored_config(storage, name)
        self.study_id = storage.get_study_id_from_name(name)
        self._started = time.monotonic()
        self._spent_at_start: float | None = None  # set by the first snapshot

    def snapshot(self) -> ProgressSnapshot:
        """The study now: a few small queries, cheap enough to poll every second."""
        tally = trial_counts(self.storage, self.study_id)
        counts = tally.states()  # every trial, promotions too; the budget counts configurations (tally.finished)
        running = self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.RUNNING,))
        best_value = best_trial = None
        if (counts.get("COMPLETE") or tally.imported) and not self.config.study.multi_objective:  # several objectives: no single best
            try:
                found = best_of(self.storage, self.name)
                best_value, best_trial = found.value, found.number
            except ValueError:  # with max_params: no feasible trial has completed yet
                pass
        elapsed = time.monotonic() - self._started
        study = self.config.study
        used = spent(self.storage, self.study_id) if study.compute_budget else None
        parts = budget_parts(study, tally.finished, used)
        share = min(1.0, max(p for p, _ in parts))
        if self._spent_at_start is None:
            self._spent_at_start = share
        n_trials = self.config.study.n_trials
        return ProgressSnapshot(
            study=self.name, metric=self.config.study.metric, n_trials=n_trials, epochs=self.config.task.epochs,
            complete=counts.get("COMPLETE", 0), pruned=counts.get("PRUNED", 0), failed=counts.get("FAIL", 0),
            waiting=counts.get("WAITING", 0),
            running=tuple(RunningTrial(t.number, max(t.intermediate_values, default=0))
                          for t in sorted(running, key=lambda t: t.number)),
            best_value=best_value, best_trial=best_trial, elapsed_s=elapsed,
            eta_s=_eta(share - self._spent_at_start, 1 - share, elapsed),
            spent=share, budget=", ".join(text for _, text in parts),
            stopped=stop_reason(self.storage, self.study_id, study),  # no query for a study without stops
        )


def _eta(spent_here: float, left: float, elapsed: float) -> float | None:
    """From the share of the budget spent while watching: a trial budget moves as trials finish, an epoch
    budget as epochs are trained."""
    if left <= 0:
        return 0.0
    if spent_here <= 0 or elapsed <= 0:
        return None  # no rate measured yet: better no ETA than a made-up one
    return left * elapsed / spent_here
