"""Changing a launched study: extend (or lower) its budget, delete it with its checkpoints, and the config as
running workers re-read it."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from typing import Any

import optuna

from tuner.store.budget import Counts, budget_lock, trial_counts
from tuner.fleet.compute import exhausted, spent
from tuner.fleet.stopping import LIFTED, database_now, holding_stop, recorded_stop
from tuner.spec.checker import Checker
from tuner.spec.checks import check_stopping
from tuner.spec.config import StudyConfig, StudySection, check_enqueued, parse_config
from tuner.errors import TunerError
from tuner.store.place import StudyPlace
from tuner.fleet.history import append_history
from tuner.fleet.study import CONFIG_ATTR, ENQUEUED_ATTR, checkpoint_place, label_for_dashboard, stored_config


@dataclass(frozen=True)
class DeletePlan:
    name: str
    trials: int
    running: int
    place: StudyPlace
    checkpoint_bytes: int  # 0 where this host has no folder for the study


@dataclass(frozen=True)
class ExtendResult:
    name: str
    old: int
    new: int
    finished: int
    changes: tuple[tuple[str, Any, Any], ...] = ()  # stop conditions set anew: (key, old, new)
    lifted: str = ""  # the stop condition that held and was lifted ("" if none held)


def plan_delete(storage: optuna.storages.RDBStorage, name: str) -> DeletePlan:
    """What `delete_study` would remove (for the confirmation); one line if there is no such tuner study."""
    stored_config(storage, name)  # a missing study, or one tuner did not launch, is refused here
    counts = trial_counts(storage, storage.get_study_id_from_name(name))
    place = checkpoint_place(storage, name)
    states = counts.states()
    return DeletePlan(name, sum(states.values()), states.get("RUNNING", 0), place, place.size() or 0)


def delete_study(storage: optuna.storages.RDBStorage, name: str) -> DeletePlan:
    """Remove the study from the database (optuna.delete_study), then its checkpoint folder.
    Returns what was removed (checkpoint_bytes: the bytes freed)."""
    plan = plan_delete(storage, name)
    plan.place.check_removable()  # before the rows go: a refused folder leaves the study whole, to be fixed
    optuna.delete_study(study_name=name, storage=storage)
    return dataclasses.replace(plan, checkpoint_bytes=plan.place.remove())


def _with_budget(config: StudyConfig, n_trials: int) -> StudyConfig:
    study = config.study
    # max_failures equal to n_trials is the default ("n_trials"): it follows the budget
    max_failures = n_trials if study.max_failures == study.n_trials else study.max_failures
    return dataclasses.replace(config, study=dataclasses.replace(study, n_trials=n_trials,
                                                                 max_failures=max_failures))


STOP_KEYS = ("target", "patience", "max_hours")  # what `tuner extend` may set besides n_trials


def _refuse_extend(storage: optuna.storages.RDBStorage, study_id: int, config: StudyConfig,
                   n_trials: int | None) -> None:
    """What no extension can change: a PBT population, a spent compute budget (fixed at launch)."""
    name = config.study.name
    if n_trials is not None and config.pruner.get("type") == "pbt":
        raise TunerError(f"study {name!r} is population-based training: its configurations are its population "
                         f"({config.pruner['population']}); launch a new study for a larger one")
    why = exhausted(config.study, spent(storage, study_id)) if config.study.compute_budget else ""
    if why:  # more trials would never start (and "workers take the new trials" would be untrue)
        raise TunerError(f"study {name!r} is complete ({why}): more trials would not run; its compute "
                         "budget is fixed at launch: launch a new study (--name) to train more")


def _check_lower(name: str, counts: Counts, n_trials: int) -> None:
    if n_trials < counts.committed:
        busy = counts.committed - counts.finished
        also = f" and {busy} running or queued for a retry" if busy else ""
        raise TunerError(f"study {name!r} has {counts.finished} finished trials{also}: --n-trials must be "
                         f">= {counts.committed}, got {n_trials}")


def _lift(storage: optuna.storages.RDBStorage, study_id: int, study: StudySection, stops: dict[str, Any],
          counts: Counts) -> tuple[StudySection, str]:
    """Lift the stop that ended the study (recorded in its history) or that holds with the new values: a reached
    target is cleared (one given anew must not be reached already); patience and max_hours count afresh from
    now (a "stop lifted" event: tuner.fleet.stopping.Leg)."""
    kind, why = holding_stop(storage, study_id, study)
    recorded = recorded_stop(storage.get_study_user_attrs(study_id))
    if not why and not recorded:
        return study, ""
    if kind == "target":
        if "target" in stops:
            raise TunerError(f"study {study.name!r}: --target {study.target:g} is reached already ({why}): give "
                             "one not reached yet, or none")
        study = dataclasses.replace(study, target=None)
    since = database_now(storage).isoformat()
    append_history(storage, study_id, LIFTED, reason=why or recorded, finished_before=counts.finished, since=since)
    return study, why or recorded


def extend_study(storage: optuna.storages.RDBStorage, name: str, n_trials: int | None = None,
                 stops: dict[str, Any] | None = None) -> ExtendResult:
    """Set the study's total budget to n_trials and/or its stop conditions (`stops`: target, patience,
    max_hours; None / 0: none), and lift a stop condition that holds; running workers pick it up before their
    next trial. Lowering n_trials is allowed down to what is finished, running or queued for a retry, never
    below: those trials will all end COMPLETE or PRUNED, and the budget must stay exact."""
    stops = dict(stops or {})
    if n_trials is not None and n_trials < 1:
        raise TunerError(f"--n-trials must be >= 1, got {n_trials}")
    stored_config(storage, name)  # one line if there is no such study
    study_id = storage.get_study_id_from_name(name)
    with budget_lock(storage, study_id):  # no trial starts meanwhile, and two extends do not interleave
        config = stored_config(storage, name)
        _refuse_extend(storage, study_id, config, n_trials)
        counts = trial_counts(storage, study_id)
        old = config.study.n_trials
        new = _with_budget(config, old if n_trials is None else n_trials)
        study = dataclasses.replace(new.study, **stops)
        check_stopping(Checker(f"tuner extend --study {name}"), study, stops, zero_is_none=True)
        if n_trials is not None:
            _check_lower(name, counts, n_trials)
        study, lifted = _lift(storage, study_id, study, stops, counts)
        new = dataclasses.replace(new, study=study)
        changes = tuple((k, getattr(config.study, k), getattr(study, k)) for k in STOP_KEYS
                        if getattr(config.study, k) != getattr(study, k))
        if new != config:
            storage.set_study_user_attr(study_id, CONFIG_ATTR, new.to_dict())
            append_history(storage, study_id, "extend", old=old, new=new.study.n_trials,
                           **({"stops": {k: [a, b] for k, a, b in changes}} if changes else {}))
    if new != config:  # outside the lock: the dashboard's note is for people, no worker reads it
        label_for_dashboard(optuna.load_study(study_name=name, storage=storage), new)
    return ExtendResult(name, old, new.study.n_trials, counts.finished, changes, lifted)


def current_config(storage: optuna.storages.RDBStorage, study_id: int, loaded: StudyConfig) -> StudyConfig:
    """The study's config as stored now, for a worker that loaded `loaded` when it started: `tuner extend`
    changes n_trials (and max_failures with it) and the stop conditions. Any other change means `launch-study` replaced the config,
    and this worker's objective (data, model) is stale."""
    try:
        attrs = storage.get_study_user_attrs(study_id)
    except KeyError:  # `tuner delete` (or optuna delete-study) while this worker ran
        raise TunerError(f"study {loaded.study.name!r} was deleted") from None
    stored = parse_config(attrs[CONFIG_ATTR], f"stored config of study {loaded.study.name!r}")
    extendable = {k: getattr(loaded.study, k) for k in STOP_KEYS}
    as_loaded = _with_budget(stored, loaded.study.n_trials)
    if dataclasses.replace(as_loaded, study=dataclasses.replace(as_loaded.study, **extendable)) != loaded:
        raise TunerError(f"the config of study {loaded.study.name!r} was replaced after this worker started; "
                         "start the worker again")
    return stored


def _value(text: str) -> Any:
    """A command-line value as TOML reads it (0.01, 32, true, "adamw"), or the bare word as a string (adamw)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def enqueue_params(storage: optuna.storages.RDBStorage, name: str, pairs: list[str]) -> int:
    """`tuner enqueue`: queue one trial with these params (checked against the study's space) to run next, in a
    slot of the trial budget (refused when the budget has none left). Returns the queued trial's number."""
    config = stored_config(storage, name)
    raw = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise TunerError(f"tuner enqueue: expected name=value, got {pair!r}")
        if key.strip() in raw:
            raise TunerError(f"tuner enqueue: {key.strip()} is given twice")
        raw[key.strip()] = _value(text.strip())
    params = check_enqueued(f"tuner enqueue --study {name}", raw, config, "")
    study_id = storage.get_study_id_from_name(name)
    with budget_lock(storage, study_id):  # no worker takes the last slot meanwhile
        config = current_config(storage, study_id, config)
        counts = trial_counts(storage, study_id)
        n_trials = config.study.n_trials
        if n_trials and counts.committed >= n_trials and config.pruner.get("type") == "pbt":  # extend refuses it
            raise TunerError(f"study {name!r} has started every member of its population ({n_trials}): a queued "
                             "config only starts a member (population-based training); launch a new study for more")
        if n_trials and counts.committed >= n_trials:
            raise TunerError(f"study {name!r} has no trial left in its budget ({counts.finished} finished, "
                             f"{counts['RUNNING']} running, {counts['WAITING']} queued of n_trials = {n_trials}): "
                             f"`tuner extend --study {name} --n-trials {n_trials + 1}` first")
        why = exhausted(config.study, spent(storage, study_id)) if config.study.compute_budget else ""
        if why:
            raise TunerError(f"study {name!r} is complete ({why}): nothing would run it")
        study = optuna.load_study(study_name=name, storage=storage)
        study.enqueue_trial(params, user_attrs={ENQUEUED_ATTR: "tuner enqueue"})
        return max(t.number for t in storage.get_all_trials(study_id, deepcopy=False))
