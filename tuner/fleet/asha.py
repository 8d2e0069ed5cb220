"""Asynchronous successive halving with promotion (ASHA: Li et al., MLSys 2020): pause a trial, don't stop it.

Rungs sit at min_resource * reduction_factor**k epochs, below task.epochs. A trial that reaches a rung trains on
if its value there ranks in the top 1/reduction_factor of every lineage that has reached that rung so far; if not,
it is *paused*: it ends PRUNED with the user attribute `paused_at_epoch`, and its checkpoint stays. A worker
asking for work first promotes the best paused trial that now ranks in its rung's top 1/reduction_factor (from
the highest rung down): a new trial with the same params and the user attributes `lineage` (whose checkpoints it
resumes, tuner.fleet.lineage) and `continues` (the paused trial's number). It replays the earlier curve and
trains on from the paused epoch + 1 to the next rung, where the same rule decides again.

In Optuna's schema a lineage is therefore one trial per segment: every segment but the last is PRUNED with
`paused_at_epoch` (or FAIL, retried as usual), the last is COMPLETE (it trained to task.epochs) or still paused.
`n_trials` counts configurations (trials without `continues`); a study with n_trials ends once that many
configurations have started and nothing is running, queued or promotable (tuner.store.budget, compute).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.fleet.lineage import LINEAGE_ATTR, lineage_number
from tuner.spec.config import StudyConfig
from tuner.store.budget import CONTINUATION_ATTR

PAUSED_ATTR = "paused_at_epoch"  # user attribute of a paused trial: the rung it reached
CONTINUES_ATTR = CONTINUATION_ATTR  # user attribute of a promotion: the number of the paused trial it continues
CONTINUED_AT_ATTR = "continued_at_epoch"  # user attribute of a promotion: the epoch it resumes after


def rungs(min_resource: int, reduction_factor: int, epochs: int) -> list[int]:
    """The epochs at which trials are compared, below task.epochs (which ends every lineage that gets there)."""
    out, rung = [], min_resource
    while rung < epochs:
        out.append(rung)
        rung *= reduction_factor
    return out


def rung_values(trials: list[FrozenTrial], rung: int) -> dict[int, float]:
    """lineage -> its value at `rung`, for every lineage that reported that epoch (a promotion replays its
    lineage's earlier curve, so each lineage counts once)."""
    values = {}
    for t in trials:
        if rung in t.intermediate_values and t.state != TrialState.FAIL:
            values.setdefault(lineage_number(t), t.intermediate_values[rung])
    return values


def top_lineages(values: dict[int, float], reduction_factor: int, maximize: bool) -> list[int]:
    """The lineages in the top 1/reduction_factor, best first (none until reduction_factor have reached it)."""
    ranked = sorted(values, key=lambda lineage: values[lineage], reverse=maximize)
    return ranked[: len(values) // reduction_factor]


class AshaPruner(optuna.pruners.BasePruner):
    """The pause rule, asked by trial.should_prune() after each epoch: True pauses the trial at this rung."""

    pauses = True  # what it stops is paused, not pruned (tuner.engine.objective records paused_at_epoch)

    def __init__(self, min_resource: int, reduction_factor: int, epochs: int):
        self.reduction_factor = reduction_factor
        self.rungs = rungs(min_resource, reduction_factor, epochs)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step not in self.rungs:
            return False
        values = rung_values(study.get_trials(deepcopy=False), step)
        values[lineage_number(trial)] = trial.intermediate_values[step]
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        return lineage_number(trial) not in top_lineages(values, self.reduction_factor, maximize)


def promotable(trials: list[FrozenTrial], pruner: AshaPruner, maximize: bool) -> FrozenTrial | None:
    """The paused trial to promote now: the best-ranked one in the top 1/reduction_factor of its rung, from the
    highest rung down; None if no paused trial ranks there."""
    promoted = {t.user_attrs.get(CONTINUES_ATTR) for t in trials}
    paused = {lineage_number(t): t for t in trials
              if t.state == TrialState.PRUNED and PAUSED_ATTR in t.user_attrs and t.number not in promoted}
    for rung in reversed(pruner.rungs):
        for lineage in top_lineages(rung_values(trials, rung), pruner.reduction_factor, maximize):
            t = paused.get(lineage)
            if t is not None and t.user_attrs[PAUSED_ATTR] == rung:
                return t
    return None


def promote(study: optuna.Study, paused: FrozenTrial) -> None:
    """Queue the paused trial's continuation (call under the budget lock, then ask: it takes the queued trial)."""
    study.enqueue_trial(paused.params, user_attrs={LINEAGE_ATTR: lineage_number(paused),
                                                   CONTINUES_ATTR: paused.number,
                                                   CONTINUED_AT_ATTR: paused.user_attrs[PAUSED_ATTR]})


def make_asha_pruner(config: StudyConfig) -> AshaPruner:
    return AshaPruner(config.pruner["min_resource"], config.pruner["reduction_factor"], config.task.epochs)


def promotion_pending(storage: optuna.storages.BaseStorage, study_id: int, config: StudyConfig) -> bool:
    """Whether a paused trial of this ASHA study ranks high enough to be promoted now."""
    trials = storage.get_all_trials(study_id, deepcopy=False)
    return promotable(trials, make_asha_pruner(config), config.study.direction == "maximize") is not None
