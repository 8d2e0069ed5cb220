"""Trials a warm start imported (tuner.fleet.warm_start): which they are, and the best and the Pareto front
without them.

An imported trial is COMPLETE in Optuna's schema, so the samplers and pruners learn from it, and Optuna's own
`best_trial` / `best_trials` would pick it. It was trained elsewhere and has no weights here, so unless the study
says `warm_start_counts_as_best = true` everything tuner calls "best" (best, status, progress, export, evaluate,
retention, the report) picks from the trials trained here, through this module.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.store.budget import WARM_START_ATTR

SUMMARY_ATTR = "tuner_warm_start"  # study user attribute: {"from": [labels], "imported": n, "counts_as_best": b}
SOURCE_TRIAL_ATTR = "tuner_warm_start_trial"  # trial user attribute: its number in the source study


def is_imported(trial: FrozenTrial) -> bool:
    return WARM_START_ATTR in trial.user_attrs


def no_weights_here(trial: FrozenTrial) -> str:
    """Why an imported trial cannot be exported or scored ("" for a trial trained here)."""
    if not is_imported(trial):
        return ""
    source = trial.user_attrs[WARM_START_ATTR]
    number = trial.user_attrs.get(SOURCE_TRIAL_ATTR)
    return (f"trial {trial.number} was imported by a warm start from {source} (its trial {number}) and has no "
            f"weights here: export it from that study (tuner export --study {source.split(' in ')[0]} --trial "
            f"{number})")


def excludes_imported(study_attrs: dict[str, Any]) -> bool:
    """Whether the study holds imported trials that must not be its best (no summary: nothing was imported)."""
    summary = study_attrs.get(SUMMARY_ATTR)
    return bool(summary and summary.get("imported") and not summary.get("counts_as_best"))


def candidates(study: optuna.Study) -> list[FrozenTrial]:
    """The COMPLETE trials that may be the study's best, by number."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if excludes_imported(study.user_attrs):
        complete = [t for t in complete if not is_imported(t)]
    return sorted(complete, key=lambda t: t.number)


def best_among(trials: list[FrozenTrial], maximize: bool) -> FrozenTrial:
    """The best feasible one, the earliest of equal bests (as tuner.fleet.study.best_of); ValueError if none."""
    feasible = [t for t in trials if all(c <= 0 for c in t.constraints.values())]
    if not feasible:
        raise ValueError("no feasible COMPLETE trial")
    sign = -1 if maximize else 1
    return min(feasible, key=lambda t: (sign * t.values[0], t.number))


def front_of(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front among the candidates: Optuna's own best_trials, computed on a copy in memory that
    holds only them (the i-th trial there is candidates[i])."""
    if not excludes_imported(study.user_attrs):
        return study.best_trials
    trials = candidates(study)
    memory = optuna.create_study(directions=study.directions)
    memory.add_trials([optuna.trial.create_trial(values=t.values, constraints=t.constraints or None)
                       for t in trials])
    return [trials[t.number] for t in memory.best_trials]
