"""Lineages: a trial and the trials that continue it (its retries, and with ASHA its promotions), which share
its seed and its checkpoint folder."""

from __future__ import annotations

import warnings

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback


LINEAGE_ATTR = "lineage"  # user attribute of a continuation (ASHA, PBT): the lineage whose checkpoints it resumes


def lineage_number(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> int:
    """The number of the lineage's first trial: a promotion names it (user attribute `lineage`, which its retries
    copy); a retry names the trial it retries (Optuna's `failed_trial`); else the trial is the first itself."""
    frozen = trial if isinstance(trial, optuna.trial.FrozenTrial) else trial.study._storage.get_trial(
        trial._trial_id)
    if LINEAGE_ATTR in frozen.user_attrs:
        return int(frozen.user_attrs[LINEAGE_ATTR])
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8; `tuner export` must not print it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        original = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return frozen.number if original is None else original
