"""Warm starts: a new study learns from the COMPLETE trials of earlier ones (`[study] warm_start`).

At launch, before anything is stored, each source study is read and checked (it exists, tuner launched it, it
optimises the same objectives in the same directions) and each of its COMPLETE trials is fitted to the new
`[space]`: a searched parameter's value must lie inside the new range or choices, a parameter the new study fixes
must have that very value, and a parameter the source did not search takes the value the source fixed it at (its
constant, or tuner's default) — which is what that trial trained with. A parameter the new space lacks (a model
of one's own) is dropped. A trial that does not fit is skipped, with the reason counted.

Then either the fitting trials are added to the new study as finished trials (`study.add_trials`; Optuna keeps
them as COMPLETE with their values, intermediate values and the mark WARM_START_ATTR), so the sampler and the
pruner start informed and no device trains them again; or, with `warm_start_top = K`, the K best fitting configs
are queued to be re-trained here (a changed dataset), taking budget slots like `[[enqueue]]`.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import TunerError
from tuner.fleet.imported import SOURCE_TRIAL_ATTR, SUMMARY_ATTR, is_imported
from tuner.spec.checks import ENV_PREFIX
from tuner.spec.config import StudyConfig, parse_config
from tuner.spec.space import distribution_of
from tuner.store.budget import WARM_START_ATTR
from tuner.store.storage import make_storage
from tuner.store.urls import shown_url

# What an imported trial keeps of its source trial's user attributes besides the mark: what `tuner best` and the
# dashboard show of a trial. Never its budget records (epochs_trained, train_seconds: spent elsewhere), its
# checkpoint lineage or its test score (measured on the source's data).
KEPT_ATTRS = ("param_count", "trainable_params", "nonzero_params", "epochs_run", "curve")


@dataclass(frozen=True)
class Source:
    label: str  # the study's name, plus " in <storage>" (password hidden) when it lives in another database
    config: StudyConfig
    trials: list[FrozenTrial]  # every trial, by number


@dataclass
class WarmStart:
    """What a launch takes from its sources: trials to add, or configs to queue; and what it skipped, why."""

    labels: list[str]
    top: int  # warm_start_top (0: import)
    counts_as_best: bool
    trials: list[FrozenTrial] = field(default_factory=list)  # import: to add, marked
    queue: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # top: (params, where from)
    fitting: int = 0  # COMPLETE source trials that fit the new space
    taken: collections.Counter = field(default_factory=collections.Counter)  # label -> trials taken
    skipped: collections.Counter = field(default_factory=collections.Counter)  # reason -> COMPLETE trials skipped
    not_complete: int = 0  # PRUNED, FAIL, RUNNING, WAITING source trials: never considered

    def describe(self) -> str:
        """One line for `tuner launch-study`."""
        per = ", ".join(f"{label}: {n}" for label, n in self.taken.items() if n)
        if self.top:
            text = (f"warm start: queued the top {len(self.queue)} of {self.fitting} fitting configs to re-train "
                    f"({per or 'none'})")
        else:
            text = f"warm start: imported {len(self.trials)} finished trials ({per or 'none'})"
        if self.skipped:
            reasons = "; ".join(f"{why} ({n})" for why, n in self.skipped.most_common())
            text += f"; skipped {sum(self.skipped.values())}: {reasons}"
        if self.not_complete:
            text += f"; {self.not_complete} not COMPLETE (pruned, failed, unfinished) not considered"
        return text


def _open(storage: optuna.storages.RDBStorage, entry: dict[str, str], where: str
          ) -> tuple[optuna.storages.RDBStorage, str]:
    """The source's storage and its label; the launch's own storage when the entry names none."""
    url = entry["storage"]
    if not url:
        return storage, entry["study"]
    if url.startswith(ENV_PREFIX):
        var = url[len(ENV_PREFIX):]
        if not os.environ.get(var):
            raise TunerError(f"{where}.storage: ${var} is not set (it names the source study's storage)")
        url = os.environ[var]
    return make_storage(url, create=False), f"{entry['study']} in {shown_url(url)}"


def _objectives(config: StudyConfig) -> list[tuple[str, str]]:
    return list(zip(config.study.objectives or (config.study.metric,), config.study.all_directions))


def _read_source(storage: optuna.storages.RDBStorage, entry: dict[str, str], config: StudyConfig,
                 where: str) -> Source:
    """The source study, checked: it exists, tuner launched it, and it optimises what the new study does."""
    source, label = _open(storage, entry, where)
    if source is storage and entry["study"] == config.study.name:
        raise TunerError(f"{where}: a study cannot warm-start from itself, got {entry['study']!r}")
    try:
        study_id = source.get_study_id_from_name(entry["study"])
    except KeyError:
        raise TunerError(f"{where}: no study named {entry['study']!r} in {shown_url(str(source.url))}") from None
    stored = source.get_study_user_attrs(study_id).get("tuner_config")  # tuner.fleet.study.CONFIG_ATTR
    if stored is None:
        raise TunerError(f"{where}: study {label!r} was not launched by tuner (its fixed params and metric are "
                         "unknown)")
    src = parse_config(stored, f"stored config of study {label!r}")
    if _objectives(src) != _objectives(config):
        show = lambda c: ", ".join(f"{d} {o}" for o, d in _objectives(c))  # noqa: E731
        raise TunerError(f"{where}: study {label!r} optimises {show(src)}, this study {show(config)}: its "
                         f"trials cannot inform this one, got {entry['study']!r}")
    trials = sorted(source.get_all_trials(study_id, deepcopy=False), key=lambda t: t.number)
    return Source(label, src, trials)


def _value_in_source(trial: FrozenTrial, src: StudyConfig, name: str) -> tuple[bool, Any]:
    """The value `name` had when the trial trained: sampled, or fixed by the source's study file."""
    if name in trial.params:
        return True, trial.params[name]
    fixed = next((p for p in src.space if p.name == name), None)
    return (True, fixed.value) if fixed is not None and fixed.value is not None else (False, None)


def _misfit(spec, value: Any) -> str:
    """Why `value` is not a value of the new [space] entry `spec` ("" if it is)."""
    if spec.value is not None:
        same = value == spec.value and isinstance(value, bool) == isinstance(spec.value, bool)
        return "" if same else f"{spec.name} is not the new constant {spec.value!r}"
    if spec.choices is not None:
        ok = value in spec.choices and isinstance(value, bool) == isinstance(spec.choices[0], bool)
        return "" if ok else f"{spec.name} not among {list(spec.choices)}"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and spec.low <= value <= spec.high
    if ok and isinstance(spec.low, int) and isinstance(spec.high, int) and value != int(value):
        ok = False
    return "" if ok else f"{spec.name} outside [{spec.low:g}, {spec.high:g}]"


def fit(trial: FrozenTrial, src: StudyConfig, config: StudyConfig) -> tuple[dict[str, Any] | None, str]:
    """The trial's params in the new space (searched ones only, as a trial stores them), or why it does not
    fit."""
    if is_imported(trial):  # trained in a study the source itself warm-started from: take it from there
        return None, "imported into the source by its own warm start"
    params = {}
    for spec in config.space:
        known, value = _value_in_source(trial, src, spec.name)
        if not known:
            return None, f"{spec.name}: no value in the source"
        why = _misfit(spec, value)
        if why:
            return None, why
        if spec.value is None:
            params[spec.name] = int(value) if isinstance(distribution_of(spec),
                                                         optuna.distributions.IntDistribution) else value
    if config.study.max_params and trial.user_attrs.get("param_count") is None:
        return None, "param_count unknown (study.max_params)"
    return params, ""


def _imported(trial: FrozenTrial, params: dict[str, Any], label: str, config: StudyConfig) -> FrozenTrial:
    """The source trial as a finished trial of the new study: its values and curve, the new distributions."""
    searched = config.searched()
    attrs = {k: trial.user_attrs[k] for k in KEPT_ATTRS if k in trial.user_attrs}
    attrs.update({WARM_START_ATTR: label, SOURCE_TRIAL_ATTR: trial.number})
    constraints = None
    if config.study.max_params:  # feasibility as the new study judges it (tuner.engine.objective)
        constraints = {"max_params": float(trial.user_attrs["param_count"] - config.study.max_params)}
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=list(trial.values), params=params,
        distributions={name: distribution_of(searched[name]) for name in params}, user_attrs=attrs,
        intermediate_values=dict(trial.intermediate_values), constraints=constraints)


def _choose_top(plan: WarmStart, fitting: list[tuple[FrozenTrial, dict[str, Any], str]], config: StudyConfig
                ) -> None:
    """The best `top` fitting configs by the (first) objective, each config once, to be re-trained here."""
    sign = -1 if config.study.all_directions[0] == "maximize" else 1
    seen = set()
    for trial, params, label in sorted(fitting, key=lambda f: sign * f[0].values[0]):
        key = tuple(sorted(params.items()))
        if key in seen:
            continue
        seen.add(key)
        plan.queue.append((params, f"warm start from {label} (trial {trial.number})"))
        plan.taken[label] += 1
        if len(plan.queue) == plan.top:
            return


def plan_warm_start(storage: optuna.storages.RDBStorage, config: StudyConfig) -> WarmStart:
    """Read and check every source, fit their trials: what the launch will add or queue. Stores nothing, so a
    refused launch (one line) leaves the database as it was."""
    study = config.study
    sources = [_read_source(storage, entry, config, f"study.warm_start[{i}]")
               for i, entry in enumerate(study.warm_start)]
    plan = WarmStart([s.label for s in sources], study.warm_start_top, study.warm_start_counts_as_best)
    fitting = []
    for source in sources:
        plan.taken[source.label] = 0
        for trial in source.trials:
            if trial.state != TrialState.COMPLETE:
                plan.not_complete += 1
                continue
            params, why = fit(trial, source.config, config)
            if params is None:
                plan.skipped[why] += 1
                continue
            fitting.append((trial, params, source.label))
    plan.fitting = len(fitting)
    if plan.top:
        _choose_top(plan, fitting, config)
        return plan
    for trial, params, label in fitting:
        plan.trials.append(_imported(trial, params, label, config))
        plan.taken[label] += 1
    return plan


def apply_warm_start(study: optuna.Study, plan: WarmStart) -> None:
    """Add the planned trials (or queue the planned configs) to the study just created, and record the summary
    that `tuner status` and the choice of the best read (tuner.fleet.imported)."""
    if plan.top:
        for params, where in plan.queue:  # tuner.fleet.study.ENQUEUED_ATTR
            study.enqueue_trial(params, user_attrs={"enqueued": where}, skip_if_exists=True)
    else:
        study.add_trials(plan.trials)
    study.set_user_attr(SUMMARY_ATTR, {"from": plan.labels, "imported": len(plan.trials),
                                       "queued": len(plan.queue), "counts_as_best": plan.counts_as_best})
