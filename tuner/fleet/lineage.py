"""Lineages: a trial and the trials that continue it (retries), which share its seed and its checkpoints."""

from __future__ import annotations

import warnings

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback


def lineage_number(trial: optuna.trial.BaseTrial | optuna.trial.FrozenTrial) -> int:
    """The number of the first trial in a retry chain: retries share its seed and checkpoints."""
    frozen = trial if isinstance(trial, optuna.trial.FrozenTrial) else trial.study._storage.get_trial(
        trial._trial_id)
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8; `tuner export` must not print it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        original = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return frozen.number if original is None else original
