"""The compute budget: `[study] max_epochs` and `max_gpu_hours`, exact across workers like the trial budget.

A trial budget counts a trial pruned at epoch 2 like one trained to the end, so pruning saves compute but never
buys more search. Here every epoch is claimed before it is trained: under the study's budget lock a trial adds
one to its `epochs_trained` user attribute only while the study's total is below max_epochs. The first epoch is
claimed when the trial is asked for (tuner.fleet.worker), each next one after the epoch before it (unless that epoch
pruned the trial). A retry claims only the epochs it trains after its checkpoint, so resumed epochs count once.
A trial that cannot claim its next epoch stops as PRUNED ("compute budget spent").

Device time is measured, not claimed: `train_seconds` (the trial's time so far) is written after each epoch,
and a trial stops once the study's sum reaches max_gpu_hours; running trials may each finish the epoch they are
in, so the figure can pass the budget by at most one epoch per running trial.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import optuna
import sqlalchemy

from tuner.fleet.asha import promotion_pending
from tuner.fleet.pbt import pending as pbt_pending
from tuner.fleet.stopping import stop_reason
from tuner.store.budget import Counts, budget_lock, connection, trial_counts
from tuner.spec.config import StudySection
from tuner.store.storage import call_with_retry

EPOCHS_ATTR = "epochs_trained"  # epochs this trial claimed (trained, or training now); resumed ones excluded
SECONDS_ATTR = "train_seconds"  # this trial's time on its device so far (from its start to its last epoch's end)

_SPENT = sqlalchemy.text(
    "SELECT a.key, a.value_json FROM trial_user_attributes a JOIN trials t ON t.trial_id = a.trial_id "
    "WHERE t.study_id = :sid AND a.key IN ('epochs_trained', 'train_seconds')")


@dataclass(frozen=True)
class Spent:
    epochs: int
    seconds: float

    @property
    def hours(self) -> float:
        return self.seconds / 3600


def spent(storage: optuna.storages.RDBStorage, study_id: int) -> Spent:
    """What the study's trials have used so far (every state: failed trials used their device too)."""
    with connection(storage) as conn:  # inside the budget lock: the lock's own transaction
        rows = conn.execute(_SPENT, {"sid": study_id}).all()
    epochs = sum(int(json.loads(v)) for k, v in rows if k == EPOCHS_ATTR)
    seconds = sum(float(json.loads(v)) for k, v in rows if k == SECONDS_ATTR)
    return Spent(epochs, seconds)


def exhausted(study: StudySection, used: Spent) -> str:
    """Why no epoch may start any more ("" while the compute budget lasts)."""
    if study.max_epochs and used.epochs >= study.max_epochs:
        return f"max_epochs reached ({used.epochs} of {study.max_epochs} epochs trained)"
    if study.max_gpu_hours and used.hours >= study.max_gpu_hours:
        # 3 significant digits, as `tuner status` shows them: a budget of minutes is not "0.000 of 0.0002"
        return f"max_gpu_hours reached ({used.hours:.3g} of {study.max_gpu_hours:g} device hours)"
    return ""


def study_done(storage: optuna.storages.RDBStorage, study_id: int, config, counts: Counts | None = None, *,
               record: bool = False) -> str:
    """Why the study is over ("" while it is not): a stop condition holds (tuner.fleet.stopping: target, patience,
    max_hours), or its trial budget, or its compute budget, is spent. record: the caller holds the budget lock,
    and a stop condition is recorded in the study's history (once)."""
    why = stop_reason(storage, study_id, config.study, record=record)
    if why:
        return why
    counts = counts or trial_counts(storage, study_id)
    if config.study.n_trials and counts.finished >= config.study.n_trials and not _promotions_left(
            storage, study_id, config, counts):
        return f"{counts.finished} of {config.study.n_trials} trials"
    if config.study.compute_budget:
        return exhausted(config.study, spent(storage, study_id))
    return ""


def _promotions_left(storage: optuna.storages.RDBStorage, study_id: int, config, counts: Counts) -> bool:
    """ASHA and PBT: n_trials counts configurations, and the study goes on while a trial runs or waits (it may
    make a paused one promotable) or a paused trial can be continued now (PBT: a member has epochs left)."""
    kind = config.pruner.get("type")
    if kind not in ("asha", "pbt"):
        return False
    if counts.active > 0:
        return True
    if kind == "pbt":
        return pbt_pending(storage.get_all_trials(study_id, deepcopy=False), config)
    return promotion_pending(storage, study_id, config)


def budget_parts(study: StudySection, finished: int, used: Spent | None) -> list[tuple[float, str]]:
    """Each budget the study has: (share spent, "12/20 trials"); `used` is None for a study without a compute
    budget."""
    parts = []
    if study.n_trials:
        parts.append((finished / study.n_trials, f"{finished}/{study.n_trials} trials"))
    if used is not None and study.max_epochs:
        parts.append((used.epochs / study.max_epochs, f"{used.epochs}/{study.max_epochs} epochs"))
    if used is not None and study.max_gpu_hours:
        parts.append((used.hours / study.max_gpu_hours, f"{used.hours:.3g}/{study.max_gpu_hours:g} device h"))
    return parts


class TrialCompute:
    """One trial's side of the compute budget: call claim_first() under the budget lock as it is asked for,
    then after_epoch() at the end of each epoch; the latter raises TrialPruned when the budget is spent."""

    def __init__(self, storage: optuna.storages.RDBStorage, study_id: int, trial_id: int, study: StudySection):
        self.storage, self.study_id, self.trial_id, self.study = storage, study_id, trial_id, study
        self.claimed = 0
        self.started = time.monotonic()

    def claim_first(self) -> None:
        """The trial's first epoch (the caller holds the budget lock and has checked the budget)."""
        self.claimed = 1
        self.storage.set_trial_user_attr(self.trial_id, EPOCHS_ATTR, 1)

    def _claim_next(self) -> str:
        """One more epoch for this trial, or why not (a section of its own: retried as a whole)."""
        with budget_lock(self.storage, self.study_id):
            why = exhausted(self.study, spent(self.storage, self.study_id))
            if not why:
                self.storage.set_trial_user_attr(self.trial_id, EPOCHS_ATTR, self.claimed + 1)
        if not why:
            self.claimed += 1  # only once it is stored
        return why

    def after_epoch(self, epoch: int, epochs: int, stopping: bool) -> None:
        self.storage.set_trial_user_attr(self.trial_id, SECONDS_ATTR, round(time.monotonic() - self.started, 3))
        if stopping or epoch >= epochs:  # no next epoch to claim
            return
        why = call_with_retry(self._claim_next, url=str(self.storage.url),
                              retry_seconds=getattr(self.storage, "retry_seconds", 0), what="claim an epoch")
        if why:
            self.storage.set_trial_user_attr(self.trial_id, "pruned_at_epoch", epoch)
            raise optuna.TrialPruned(f"compute budget spent after epoch {epoch}: {why}")
