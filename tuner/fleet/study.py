"""Studies in the database: launch (idempotent), read the config back, best trial, status."""

from __future__ import annotations

import warnings
import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from tuner.store.budget import budget_lock, connection, trial_counts
from tuner.fleet.asha import CONTINUES_ATTR, PAUSED_ATTR
from tuner.fleet.compute import budget_parts, spent, study_done
from tuner.fleet.imported import SUMMARY_ATTR, best_among, candidates, excludes_imported, front_of
from tuner.fleet.history import append_history, as_launched, history
from tuner.fleet.pbt import schedule
from tuner.fleet.stopping import stop_reason
from tuner.spec.config import StudyConfig, parse_config
from tuner.errors import TunerError
from tuner.store.urls import shown_url
from tuner.store.place import StudyPlace, identity_attrs, study_place
from tuner.spec.preflight import check_task_paths

CONFIG_ATTR = "tuner_config"  # study user attribute holding the validated study file


@dataclass(frozen=True)
class LaunchResult:
    name: str
    created: bool  # False: the study existed; its config is reused (or replaced, see `replaced`)
    replaced: str = ""  # the changes, when a study with no finished trial took a new config
    warm_start: str = ""  # what a new study took from [study] warm_start, and what it skipped (one line)


@dataclass(frozen=True)
class BestTrial:
    study: str
    number: int
    value: float
    params: dict[str, Any]  # sampled params, real values (categoricals decoded by Optuna)
    fixed: dict[str, Any]  # params the study file fixed
    param_count: int | None
    epochs_run: int | None
    test_accuracy: float | None = None  # tuner evaluate / the end of tuner run; never used for selection
    nonzero_params: int | None = None  # parameters not zero after training (fewer than param_count if pruned)
    values: tuple[float, ...] = ()  # every objective's value (value is the first)
    schedule: tuple[dict[str, Any], ...] = ()  # PBT: the params of each segment its weights trained through


@dataclass(frozen=True)
class StudyStatus:
    name: str
    n_trials: int
    counts: dict[str, int]
    best_value: float | None
    direction: str
    checkpoint_bytes: int | None = None  # None: this host has no folder for the study's checkpoints
    budget: str = ""  # what is spent of each budget, e.g. "12/20 trials, 40/100 epochs"
    front_size: int | None = None  # several objectives: how many trials are on the Pareto front
    best_trial: int | None = None
    imported: int = 0  # trials a warm start added (trained elsewhere; in no budget)
    warm_start_from: tuple[str, ...] = ()  # the studies it took them from
    ended: str = ""  # why the study is over ("" while it is not): the budget that was spent, or a stop condition
    stopped: str = ""  # a stop condition (target, patience, max_hours) that ended it (tuner.fleet.stopping)
    epochs_trained: int | None = None  # with a compute budget: epochs claimed so far (each counted once)
    device_hours: float | None = None

    def as_json(self) -> dict[str, Any]:
        """`tuner status --format json`: what the table shows, as numbers."""
        states = {k: v for k, v in self.counts.items() if k.isupper()}
        return {"study": self.name, "direction": self.direction, "states": states, "retries": self.retries,
                "paused": self.counts.get("paused", 0), "continued": self.counts.get("continued", 0),
                "best_value": self.best_value, "best_trial": self.best_trial, "front_size": self.front_size,
                "n_trials": self.n_trials, "budget": self.budget, "epochs_trained": self.epochs_trained,
                "device_hours": self.device_hours, "ended": self.ended or None, "stopped": self.stopped or None,
                "checkpoint_bytes": self.checkpoint_bytes, "imported": self.imported,
                "warm_start_from": list(self.warm_start_from)}

    @property
    def finished(self) -> int:
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)

    @property
    def retries(self) -> int:
        return self.counts.get("retries", 0)


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def label_for_dashboard(study: optuna.Study, config: StudyConfig) -> None:
    """What optuna-dashboard shows: the metric's name instead of "Objective 0", and the study file as the
    study's note (a TOML block; the raw JSON stays in the tuner_config user attribute, which tuner reads)."""
    from optuna_dashboard import save_note  # here, not at the top: it takes ~2 s to import, workers never need it

    from tuner.spec.toml_dump import dump_toml

    with warnings.catch_warnings():  # set_metric_names is "experimental" since Optuna 3.2; we want it anyway
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(config.study.objectives) or [config.study.metric])
    save_note(study, f"Study file, as launched:\n\n```toml\n{dump_toml(config.to_dict())}```\n")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """max_failures equal to n_trials is the default ("n_trials") and follows it: not a change of its own."""
    study = dict(config["study"])
    if study.get("max_failures") == study.get("n_trials"):
        study["max_failures"] = "n_trials"
    return {**config, "study": study}


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{key} ({a!r} -> {b!r})" for key, a, b in changes)


def _replace_config(storage: optuna.storages.RDBStorage, config: StudyConfig,
                    changes: list[tuple[str, Any, Any]]) -> LaunchResult:
    """A study where no trial has finished or is running takes the new config. Queued retries and
    checkpoints were made under the old one: the retries are failed ("config replaced"), the checkpoints go."""
    name = config.study.name
    study_id = storage.get_study_id_from_name(name)
    with budget_lock(storage, study_id):  # no worker can start a trial meanwhile
        counts = trial_counts(storage, study_id)
        if counts.finished or counts["RUNNING"]:
            raise TunerError(f"study {name!r} already exists with a different config: {describe_changes(changes)}; "
                             f"{counts.finished} trials finished and {counts['RUNNING']} running under it: launch it "
                             f"under another name (--name) or delete it first (tuner delete --study {name})")
        for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
            storage.set_trial_user_attr(t._trial_id, "fail_reason", "config replaced")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        checkpoint_place(storage, name).remove()
        storage.set_study_user_attr(study_id, CONFIG_ATTR, config.to_dict())
        # failures before this point were the old config's: they do not count towards max_failures
        append_history(storage, study_id, "replace", changes=describe_changes(changes),
                       first_trial=sum(counts.by_state.values()))
        study = optuna.load_study(study_name=name, storage=storage)
        enqueue_from_file(study, config)  # the new file's, in place of the old one's (failed above)
    label_for_dashboard(study, config)  # the note shows it too
    return LaunchResult(name, created=False, replaced=describe_changes(changes))


def launch_study(storage: optuna.storages.RDBStorage, config: StudyConfig, *,
                 check_paths: bool = True) -> LaunchResult:
    """Create the study and store its config. The same config again reuses it; a study where no trial has
    finished takes a changed config; otherwise a different config is refused. A change of n_trials alone is
    `tuner extend`'s job. check_paths: first check here that the task's data and weights exist."""
    if check_paths:
        check_task_paths(config.task)
    name, wanted = config.study.name, config.to_dict()
    warm = None
    if config.study.warm_start and not _exists(storage, name):  # sources read and checked before anything is stored
        from tuner.fleet.warm_start import plan_warm_start  # it reads stored configs: imports this module's wing

        warm = plan_warm_start(storage, config)
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=list(config.study.all_directions))
    except optuna.exceptions.DuplicatedStudyError:
        stored = stored_config(storage, name)  # raises if the study is not one of ours
        changes = _differences(_comparable(stored.to_dict()), _comparable(wanted))
        if not changes:
            return LaunchResult(name, created=False)
        keys = [key for key, _, _ in changes]
        if set(keys) <= set(EXTENDABLE):  # only what `tuner extend` changes
            _check_extended(storage, name, changes)
            return LaunchResult(name, created=False)
        if {"study.direction", "study.directions"} & set(keys):  # Optuna fixes them when the study is created
            raise TunerError(f"study {name!r} already exists with a different config: {describe_changes(changes)}; "
                             "the direction of a study cannot change: launch it under another name (--name) or "
                             f"delete it first (tuner delete --study {name})") from None
        return _replace_config(storage, config, changes)
    for key, value in identity_attrs().items():  # before the config: a study with a config has an identity
        study.set_user_attr(key, value)
    study.set_user_attr(CONFIG_ATTR, wanted)
    label_for_dashboard(study, config)
    enqueue_from_file(study, config)
    if warm is not None:
        from tuner.fleet.warm_start import apply_warm_start

        apply_warm_start(study, warm)
    return LaunchResult(name, created=True, warm_start=warm.describe() if warm is not None else "")


def _exists(storage: optuna.storages.RDBStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
        return True
    except KeyError:
        return False


# what `tuner extend` changes in a stored config, with its option
EXTENDABLE = {"study.n_trials": "--n-trials", "study.target": "--target", "study.patience": "--patience",
              "study.max_hours": "--max-hours"}


def _check_extended(storage: optuna.storages.RDBStorage, name: str, changes: list[tuple[str, Any, Any]]) -> None:
    """A file that differs from the stored config only in what `tuner extend` changes is that study as launched
    (extend changed it since), or a change to make with `tuner extend`: one line saying how."""
    recorded = history(storage, storage.get_study_id_from_name(name), "extend")

    def unset(key: str, value: Any) -> Any:  # a file leaves out patience/max_hours; extend records their 0
        return None if key != "study.target" and not value else value

    if recorded and all(unset(k, new) == unset(k, as_launched(recorded, k.split(".")[1], old))
                        for k, old, new in changes):
        return
    def show(key: str, value: Any) -> Any:  # as the option takes it: no target is none, no patience is 0
        return ("none" if key == "study.target" else 0) if value is None else value

    stored = "; ".join(f"{k.split('.')[1]} = {show(k, old)}" for k, old, _ in changes)
    says = "; ".join(f"{k.split('.')[1]} = {show(k, new)}" for k, _, new in changes)
    options = " ".join(f"{EXTENDABLE[k]} {show(k, new)}" for k, _, new in changes)
    raise TunerError(f"study {name!r} has {stored} and the file says {says}: to change that run `tuner extend "
                     f"--study {name} {options}` (or put the stored values in the file)") from None


ENQUEUED_ATTR = "enqueued"  # trial user attribute: where its given params came from ("study file", "tuner enqueue")


def enqueue_from_file(study: optuna.Study, config: StudyConfig) -> None:
    """The study file's [[enqueue]] trials, queued once as the study gets its config (launch, or a replaced
    config): WAITING trials, which every worker's ask() takes first, each exactly once (a row lock in Optuna)."""
    for params in config.enqueue:
        study.enqueue_trial(dict(params), user_attrs={ENQUEUED_ATTR: "study file"})


def stored_config(storage: optuna.storages.RDBStorage, name: str) -> StudyConfig:
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


def checkpoint_place(storage: optuna.storages.RDBStorage, name: str) -> StudyPlace:
    """Where the study's checkpoints are (see tuner/store/place.py for the precedence)."""
    return study_place(storage.get_study_user_attrs(storage.get_study_id_from_name(name)), name)


def tuner_studies(storage: optuna.storages.RDBStorage) -> list[str]:
    """Names of the studies launched by tuner, oldest first."""
    studies = sorted(storage.get_all_studies(), key=lambda s: s._study_id)
    return [s.study_name for s in studies if CONFIG_ATTR in s.user_attrs]


def best_frozen_trial(storage: optuna.storages.RDBStorage, name: str) -> optuna.trial.FrozenTrial:
    """The best COMPLETE trial as Optuna stores it (feasible, with max_params); one clear error if there is none
    yet, or if the study has several objectives (it has a front of best trials, not one)."""
    study = optuna.load_study(study_name=name, storage=storage)
    if len(study.directions) > 1:
        raise TunerError(f"study {name!r} has several objectives: no single best trial; `tuner best --study {name}` "
                         "prints its Pareto front; `tuner export --trial N` exports one of them")
    try:
        return best_of(storage, name)
    except ValueError:
        raise TunerError(f"study {name!r} has no completed trial yet") from None


_EARLIEST_EQUAL = sqlalchemy.text(
    "SELECT min(t.number) FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
    "WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND v.objective = 0 AND v.value = :value")


def best_of(storage: optuna.storages.RDBStorage, name: str) -> optuna.trial.FrozenTrial:
    """A single-objective study's best feasible COMPLETE trial, the earliest of equal bests: what `tuner best`,
    `tuner status`, the report and the README's SQL all pick (Optuna's own best_trial takes any of the equal ones,
    in the database's order). One indexed query more than Optuna's; ValueError if there is none. Trials a warm
    start imported are left out unless the study counts them (tuner.fleet.imported)."""
    study = optuna.load_study(study_name=name, storage=storage)
    if excludes_imported(study.user_attrs):
        return best_among(candidates(study), maximize=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    best = study.best_trial
    study_id = storage.get_study_id_from_name(name)
    with connection(storage) as conn:
        number = conn.execute(_EARLIEST_EQUAL, {"sid": study_id, "value": best.value}).scalar()
    if number is None or number == best.number:
        return best
    earliest = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))
    return earliest if all(c <= 0 for c in earliest.constraints.values()) else best


def complete_trial(storage: optuna.storages.RDBStorage, name: str, number: int) -> optuna.trial.FrozenTrial:
    """Trial `number` of the study, which must be COMPLETE (one line otherwise)."""
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    trial = next((t for t in trials if t.number == number), None)
    if trial is None or trial.state != TrialState.COMPLETE:
        state = "no such trial" if trial is None else f"it is {trial.state.name}"
        raise TunerError(f"study {name!r}: trial {number} cannot be used ({state}; a COMPLETE trial is needed)")
    return trial


def _best(name: str, config: StudyConfig, trial: optuna.trial.FrozenTrial) -> BestTrial:
    # batch_size 0 is "not searched: task.batch_size", not a value anyone chose
    fixed = {p.name: p.value for p in config.space
             if p.value is not None and (p.name, p.value) != ("batch_size", 0)}
    return BestTrial(study=name, number=trial.number, value=trial.values[0], params=dict(trial.params),
                     fixed=fixed, param_count=trial.user_attrs.get("param_count"),
                     epochs_run=trial.user_attrs.get("epochs_run"), test_accuracy=trial.user_attrs.get("test_accuracy"),
                     nonzero_params=trial.user_attrs.get("nonzero_params"), values=tuple(trial.values))


def best_trial(storage: optuna.storages.RDBStorage, name: str) -> BestTrial:
    config, trial = stored_config(storage, name), best_frozen_trial(storage, name)
    best = _best(name, config, trial)
    if config.pruner.get("type") == "pbt":
        trials = storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
        best = dataclasses.replace(best, schedule=tuple(schedule(trial, trials)))
    return best


def front_trials(storage: optuna.storages.RDBStorage, name: str) -> list[BestTrial]:
    """The trials no other COMPLETE trial beats on every objective (Optuna's best_trials), by trial number."""
    config = stored_config(storage, name)
    front = front_of(optuna.load_study(study_name=name, storage=storage))
    if not front:
        raise TunerError(f"study {name!r} has no completed trial yet")
    return [_best(name, config, t) for t in sorted(front, key=lambda t: t.number)]


def _asha_counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """ASHA and PBT: trials paused now (PRUNED at a rung or segment end, not yet continued), and continuations
    (trials that resumed a paused one: promotions, PBT segments)."""
    promoted = [t.user_attrs[CONTINUES_ATTR] for t in trials if CONTINUES_ATTR in t.user_attrs]
    paused = sum(1 for t in trials if PAUSED_ATTR in t.user_attrs and t.state == TrialState.PRUNED
                 and t.number not in set(promoted))
    return {"paused": paused, "continued": len(promoted)} if paused or promoted else {}


def study_status(storage: optuna.storages.RDBStorage, name: str) -> StudyStatus:
    config = stored_config(storage, name)
    study_id = storage.get_study_id_from_name(name)
    tally = trial_counts(storage, study_id)
    counts = tally.states()
    trials = storage.get_all_trials(study_id, deepcopy=False)
    counts["retries"] = sum(1 for t in trials if "failed_trial" in t.system_attrs)
    counts.update(_asha_counts(trials))
    best = front = best_number = None
    if counts.get("COMPLETE") or tally.imported:  # imported trials may be the best (warm_start_counts_as_best)
        if config.study.multi_objective:
            front = len(front_of(optuna.load_study(study_name=name, storage=storage))) or None
        else:
            try:
                found = best_of(storage, name)
                best, best_number = found.value, found.number
            except ValueError:  # with max_params: no feasible trial has completed yet
                pass
    used = spent(storage, study_id) if config.study.compute_budget else None
    budget = ", ".join(text for _, text in budget_parts(config.study, tally.finished, used))
    warm = storage.get_study_user_attrs(study_id).get(SUMMARY_ATTR) or {}
    stopped = stop_reason(storage, study_id, config.study)
    return StudyStatus(name=name, n_trials=config.study.n_trials, counts=counts, best_value=best,
                       direction=config.study.direction, checkpoint_bytes=checkpoint_place(storage, name).size(),
                       budget=budget, front_size=front, best_trial=best_number,
                       ended=stopped or study_done(storage, study_id, config, tally), stopped=stopped,
                       epochs_trained=used.epochs if used else None,
                       device_hours=round(used.hours, 6) if used else None, imported=tally.imported,
                       warm_start_from=tuple(warm.get("from", ())) if tally.imported else ())
