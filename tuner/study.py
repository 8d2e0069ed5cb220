"""Studies in the database: launch (idempotent), read the config back, best trial, status."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import optuna

from tuner.budget import trial_counts
from tuner.config import StudyConfig, parse_config
from tuner.errors import TunerError
from tuner.storage import shown_url

CONFIG_ATTR = "tuner_config"  # study user attribute holding the validated study file


@dataclass(frozen=True)
class LaunchResult:
    name: str
    created: bool  # False: the same config was already launched, and is reused


@dataclass(frozen=True)
class BestTrial:
    study: str
    number: int
    value: float
    params: dict[str, Any]  # sampled params, real values (categoricals decoded by Optuna)
    fixed: dict[str, Any]  # params the study file fixed
    param_count: int | None
    epochs_run: int | None


@dataclass(frozen=True)
class StudyStatus:
    name: str
    n_trials: int
    counts: dict[str, int]
    best_value: float | None
    direction: str

    @property
    def finished(self) -> int:
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)

    @property
    def budget_left(self) -> int:
        return max(0, self.n_trials - self.finished)

    @property
    def retries(self) -> int:
        return self.counts.get("retries", 0)


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return out


def label_for_dashboard(study: optuna.Study, config: StudyConfig) -> None:
    """What optuna-dashboard shows: the metric's name instead of "Objective 0", and the study file as the
    study's note (a TOML block; the raw JSON stays in the tuner_config user attribute, which tuner reads)."""
    from optuna_dashboard import save_note  # here, not at the top: it takes ~2 s to import, workers never need it

    from tuner.toml_dump import dump_toml

    with warnings.catch_warnings():  # set_metric_names is "experimental" since Optuna 3.2; we want it anyway
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([config.study.metric])
    save_note(study, f"Study file, as launched:\n\n```toml\n{dump_toml(config.to_dict())}```\n")


def launch_study(storage: optuna.storages.RDBStorage, config: StudyConfig) -> LaunchResult:
    """Create the study and store its config; the same config again reuses it, a different one is refused."""
    name, wanted = config.study.name, config.to_dict()
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=config.study.direction)
    except optuna.exceptions.DuplicatedStudyError:
        stored = load_config(storage, name)  # raises if the study is not one of ours
        changed = _differences(stored.to_dict(), wanted)
        if changed:
            raise TunerError(f"study {name!r} already exists with a different config: {', '.join(changed)}; "
                             "launch it under another name (--name) or delete it first") from None
        return LaunchResult(name, created=False)
    study.set_user_attr(CONFIG_ATTR, wanted)
    label_for_dashboard(study, config)
    return LaunchResult(name, created=True)


def load_config(storage: optuna.storages.RDBStorage, name: str) -> StudyConfig:
    """The study's config as launched; workers need nothing else."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        known = [s.study_name for s in storage.get_all_studies()]
        hint = f"studies here: {', '.join(known)}" if known else "it has no studies"
        raise TunerError(f"no study named {name!r} in {shown_url(storage.url)} ({hint})") from None
    stored = storage.get_study_user_attrs(study_id).get(CONFIG_ATTR)
    if stored is None:
        raise TunerError(f"study {name!r} was not launched by tuner (it has no {CONFIG_ATTR} attribute)")
    return parse_config(stored, f"stored config of study {name!r}")


def tuner_studies(storage: optuna.storages.RDBStorage) -> list[str]:
    """Names of the studies launched by tuner, oldest first."""
    studies = sorted(storage.get_all_studies(), key=lambda s: s._study_id)
    return [s.study_name for s in studies if CONFIG_ATTR in s.user_attrs]


def best_frozen_trial(storage: optuna.storages.RDBStorage, name: str) -> optuna.trial.FrozenTrial:
    """The best COMPLETE trial as Optuna stores it; one clear error if there is none yet."""
    try:
        return optuna.load_study(study_name=name, storage=storage).best_trial
    except ValueError:
        raise TunerError(f"study {name!r} has no completed trial yet") from None


def best_trial(storage: optuna.storages.RDBStorage, name: str) -> BestTrial:
    config = load_config(storage, name)
    best = best_frozen_trial(storage, name)
    fixed = {p.name: p.value for p in config.space if p.value is not None}
    return BestTrial(study=name, number=best.number, value=best.value, params=dict(best.params), fixed=fixed,
                     param_count=best.user_attrs.get("param_count"), epochs_run=best.user_attrs.get("epochs_run"))


def study_status(storage: optuna.storages.RDBStorage, name: str) -> StudyStatus:
    config = load_config(storage, name)
    study_id = storage.get_study_id_from_name(name)
    counts = dict(trial_counts(storage, study_id).by_state)
    retries = storage.get_all_trials(study_id, deepcopy=False)
    counts["retries"] = sum(1 for t in retries if "failed_trial" in t.system_attrs)
    best = None
    if counts.get("COMPLETE"):
        best = optuna.load_study(study_name=name, storage=storage).best_value
    return StudyStatus(name=name, n_trials=config.study.n_trials, counts=counts, best_value=best,
                       direction=config.study.direction)
