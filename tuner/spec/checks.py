"""The [study], [pruner], [task] and [worker] sections' values, checked once their keys and types are read.

Each public check takes (checker, the section's raw table, the sections so far) and returns the section's value,
defaults resolved (tuner.spec.config walks them in order); the private ones check one concern each.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tuner.errors import TunerError
from tuner.spec.checker import Checker
from tuner.spec.plugins import is_plugin
from tuner.spec.search import pruner_options
from tuner.spec.sections import (AUGMENTATIONS, DATASETS, DEFAULT_MAX_FAILURES, DEFAULT_N_TRIALS, METRICS, MODELS,
                                 PRECISIONS, SIZE_OBJECTIVES, StudySection, TaskSection, WorkerSection)


def _check_objectives(c: Checker, study: StudySection, given: dict[str, Any]) -> StudySection:
    """metric/direction for one objective, or objectives/directions for several (a Pareto front)."""
    if not study.objectives:
        if study.directions:
            raise c.fail("study.directions", "needs study.objectives (for one objective: direction)", study.directions)
        c.one_of(study.direction, ("maximize", "minimize"), "study.direction")
        c.one_of(study.metric, tuple(METRICS), "study.metric")
        if METRICS[study.metric] != study.direction:
            raise c.fail("study.direction", f"must be {METRICS[study.metric]} for metric {study.metric}",
                         study.direction)
        return study
    natural = {**METRICS, **SIZE_OBJECTIVES}
    if len(study.objectives) < 2:
        raise c.fail("study.objectives", "needs two or more (for one objective: metric = ...)", list(study.objectives))
    for i, objective in enumerate(study.objectives):
        c.one_of(objective, tuple(natural), f"study.objectives[{i}]")
    if len(set(study.objectives)) != len(study.objectives):
        raise c.fail("study.objectives", "must not repeat a name", list(study.objectives))
    metrics = [o for o in study.objectives if o in METRICS]
    if not metrics:
        raise c.fail("study.objectives", f"needs a training metric among them ({', '.join(METRICS)})",
                     list(study.objectives))
    directions = study.directions or tuple(natural[o] for o in study.objectives)
    if len(directions) != len(study.objectives):
        raise c.fail("study.directions", f"needs one direction per objective ({len(study.objectives)})",
                     list(directions))
    for objective, direction in zip(study.objectives, directions):
        if direction != natural[objective]:
            raise c.fail("study.directions", f"must be {natural[objective]} for objective {objective}",
                         list(directions))
    # metric/direction go with one objective; here they are the first training metric's (reported each epoch),
    # which is what a stored config holds
    resolved = {"metric": metrics[0], "direction": METRICS[metrics[0]]}
    for key, value in resolved.items():
        if key in given and given[key] != value:
            raise c.fail(f"study.{key}", f"goes with one objective; with study.objectives it is {value!r} (the "
                         "first training metric among them, the one reported each epoch)", given[key])
    return dataclasses.replace(study, directions=directions, **resolved)


def _check_budgets(c: Checker, study: StudySection, given: dict[str, Any]) -> StudySection:
    # 0 is "no such budget" (what a stored config holds for the budgets the file did not set)
    for key in ("n_trials", "max_epochs", "max_params", "max_gpu_hours"):
        c.at_least(getattr(study, key), 0, f"study.{key}")
    if not (study.n_trials or study.compute_budget):
        if "n_trials" in given:
            raise c.fail("study.n_trials", "must be >= 1 (or set study.max_epochs / study.max_gpu_hours)", 0)
        study = dataclasses.replace(study, n_trials=DEFAULT_N_TRIALS)
    if study.max_failures == 0:
        study = dataclasses.replace(study, max_failures=study.n_trials or DEFAULT_MAX_FAILURES)
    return study


# --- warm start ([study] warm_start, warm_start_top, warm_start_counts_as_best): the shapes here; whether the
# source studies exist and match is checked at launch (tuner.fleet.warm_start), before anything is stored.

ENV_PREFIX = "env:"  # storage = "env:VAR": the URL is read from $VAR at launch (a password stays out of the file)


def _warm_source(c: Checker, entry: Any, where: str) -> dict[str, str]:
    """One source: a study name (this storage), or {study = NAME, storage = URL or "env:VAR"}."""
    if isinstance(entry, str):
        entry = {"study": entry}
    if not isinstance(entry, dict):
        raise c.fail(where, "must be a study name or a { storage = URL, study = NAME } table", entry)
    unknown = sorted(set(entry) - {"study", "storage"})
    if unknown:
        raise c.fail(f"{where}.{unknown[0]}", "is not a known key (known: study, storage)", entry[unknown[0]])
    name, storage = entry.get("study"), entry.get("storage", "")
    if not isinstance(name, str) or not name.strip():
        raise c.fail(f"{where}.study", "must be a study name", name)
    if not isinstance(storage, str):
        raise c.fail(f"{where}.storage", "must be a storage URL or \"env:VAR\"", storage)
    if "://" in storage:  # a study file is shared and stored in the database: never with a password in it
        from sqlalchemy.engine import make_url

        try:
            password = make_url(storage).password
        except Exception:  # not parseable: the launch says so, with the password hidden
            password = None
        if password:
            raise TunerError(f"{c.source}: {where}.storage holds a password: write storage = \"env:VAR\" and "
                             "put the URL in $VAR")
    return {"study": name, "storage": storage}


def _check_warm_start(c: Checker, study: StudySection) -> StudySection:
    raw = study.warm_start if study.warm_start is not None else []
    if not isinstance(raw, (list, tuple)):
        raise c.fail("study.warm_start", "must be a list of study names or { storage, study } tables", raw)
    sources = tuple(_warm_source(c, e, f"study.warm_start[{i}]") for i, e in enumerate(raw))
    if len({(s["storage"], s["study"]) for s in sources}) != len(sources):
        raise c.fail("study.warm_start", "must not name a study twice", [s["study"] for s in sources])
    c.at_least(study.warm_start_top, 0, "study.warm_start_top")
    if (study.warm_start_top or study.warm_start_counts_as_best) and not sources:
        key = "warm_start_top" if study.warm_start_top else "warm_start_counts_as_best"
        raise c.fail(f"study.{key}", "needs study.warm_start (the studies to start from)",
                     getattr(study, key))
    if study.warm_start_top and study.warm_start_counts_as_best:  # re-trained configs are this study's own trials
        raise c.fail("study.warm_start_counts_as_best", "applies to imported trials; warm_start_top re-trains "
                     "them instead", True)
    if study.n_trials and study.warm_start_top > study.n_trials:  # queued configs take budget slots
        raise c.fail("study.warm_start_top", f"must be <= study.n_trials ({study.n_trials})", study.warm_start_top)
    return dataclasses.replace(study, warm_start=sources)


# Stopping when done: study.target / patience / max_hours (tuner.fleet.stopping), a block of its own.
def check_stopping(c: Checker, study: StudySection, given: Any, *, zero_is_none: bool) -> None:
    """The stop conditions' values. `given`: the keys set (a file's [study] table, or extend's options);
    zero_is_none: 0 means "none" even where given (a stored config, `tuner extend --patience 0`), else a file
    that writes 0 is told to leave the key out."""
    if study.target is not None:
        if study.multi_objective:
            raise c.fail("study.target", "needs one objective (with study.objectives no single value reaches it)",
                         study.target)
        if study.metric == "val_accuracy" and not 0 <= study.target <= 1:
            raise c.fail("study.target", "must be between 0 and 1 for val_accuracy", study.target)
        if study.metric == "val_loss" and study.target < 0:
            raise c.fail("study.target", "must be >= 0 for val_loss", study.target)
    if study.patience and study.multi_objective:
        raise c.fail("study.patience", "needs one objective (a Pareto front has no single best to improve on)",
                     study.patience)
    strict = "patience" in given and not zero_is_none
    c.at_least(study.patience, 1 if strict else 0, "study.patience")
    if study.max_hours < 0 or (study.max_hours == 0 and "max_hours" in given and not zero_is_none):
        raise c.fail("study.max_hours", "must be > 0 (leave it out for no time limit)", study.max_hours)


def _check_task_data(c: Checker, task: TaskSection) -> None:
    """What the dataset and model need: weights a backbone can load, a data folder, sizes that can train."""
    if task.weights != "none" and task.model == "cnn":
        raise c.fail("task.weights", "needs a torchvision backbone model (the cnn has no pretrained weights)",
                     task.weights)
    if task.dataset in ("imagefolder", "cifar10", "cifar100") and not task.data_dir:
        raise TunerError(f"{c.source}: task.data_dir is required for dataset {task.dataset!r}")
    c.at_least(task.image_size, 8, "task.image_size")
    c.at_least(task.num_classes, 2, "task.num_classes")
    c.at_least(task.num_samples, 10 * task.num_classes, "task.num_samples")


def check_study(c: Checker, raw: Any, sections: dict[str, Any]) -> StudySection:
    """[study]: a name, one objective or several, the budgets; `raw` tells what the file set (not a default)."""
    study = sections["study"]
    if not study.name.strip():
        raise c.fail("study.name", "must not be empty", study.name)
    # A name can become a folder name (checkpoints of studies from before their uuid): never a path. Checked for
    # new studies; one stored before this check stays readable (so that `tuner delete` can remove it).
    stored = c.source.startswith("stored config")
    path_like = "/" in study.name or "\\" in study.name or study.name in (".", "..") or "\0" in study.name
    if path_like and not stored:
        raise c.fail("study.name", "must not contain / or \\ or be . or .. (it can name a folder)", study.name)
    study = _check_objectives(c, study, raw)
    study = _check_budgets(c, study, raw)
    c.at_least(study.max_retries, 0, "study.max_retries")
    c.at_least(study.max_failures, 0, "study.max_failures")
    c.at_least(study.keep_best, 1, "study.keep_best")
    study = _check_warm_start(c, study)
    check_stopping(c, study, raw, zero_is_none=stored)
    return study


def check_pruner(c: Checker, raw: Any, sections: dict[str, Any]) -> dict[str, Any]:
    """[pruner]: `type` plus the Optuna pruner's keyword arguments, defaults filled in (tuner.spec.search)."""
    study, task = sections["study"], sections["task"]
    # The pruner's default warm-up is a share of task.epochs, so the epochs are checked before it.
    c.at_least(task.epochs, 1, "task.epochs")
    if not isinstance(raw, dict):
        raise c.fail("pruner", "must be a table", raw)
    if study.multi_objective:
        if raw.get("type", "none") != "none":  # what is stored for such a study is {type = "none"}
            raise c.fail("pruner", "cannot be used with several objectives (Optuna prunes single-objective "
                         "trials only): remove the [pruner] section", raw)
        return {"type": "none"}
    return pruner_options(raw, task.epochs, c.fail)


def check_task(c: Checker, raw: Any, sections: dict[str, Any]) -> TaskSection:
    """[task]: the data and the model by name (or a plug-in's "module:callable"), the split, the training."""
    task = sections["task"]
    if not is_plugin(task.dataset):
        c.one_of(task.dataset, DATASETS + ("module:callable of your own",), "task.dataset")
    if not is_plugin(task.model):
        c.one_of(task.model, MODELS + ("module:callable of your own",), "task.model")
    c.at_least(task.batch_size, 1, "task.batch_size")
    if not 0 < task.val_fraction < 1:
        raise c.fail("task.val_fraction", "must be between 0 and 1", task.val_fraction)
    if not 0 <= task.test_fraction < 1 - task.val_fraction:
        raise c.fail("task.test_fraction", f"must be >= 0 and < 1 - val_fraction ({1 - task.val_fraction:g})",
                     task.test_fraction)
    if not task.augment:  # the dataset's default, stored resolved: a mirrored digit is another digit
        task = dataclasses.replace(task, augment="crop" if task.dataset == "digits" else "standard")
    c.one_of(task.augment, AUGMENTATIONS, "task.augment")
    c.at_least(task.resident_memory_gb, 0, "task.resident_memory_gb")
    c.one_of(task.precision, PRECISIONS, "task.precision")
    _check_task_data(c, task)
    return task


def check_worker(c: Checker, raw: Any, sections: dict[str, Any]) -> WorkerSection:
    """[worker]: the heartbeat timings, each >= 1 s; a trial is dead only after more than one heartbeat interval."""
    worker = sections["worker"]
    for key in ("heartbeat_interval", "grace_period", "reaper_period"):
        c.at_least(getattr(worker, key), 1, f"worker.{key}")
    if worker.grace_period <= worker.heartbeat_interval:
        raise c.fail("worker.grace_period", f"must be > heartbeat_interval ({worker.heartbeat_interval})",
                     worker.grace_period)
    return worker


def check_population(c: Checker, sections: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """PBT, once the space is known: `perturb` names searched hyperparameters (by default all those that can
    change mid-training), and the configurations are the population (n_trials, when given, must say so)."""
    pruner, study = dict(sections["pruner"]), sections["study"]
    searched = {p.name for p in sections["space"] if p.value is None}
    given = raw["pruner"].get("perturb")
    if given is None:
        pruner["perturb"] = [name for name in pruner["perturb"] if name in searched]
    for name in pruner["perturb"]:
        if name not in searched:
            raise c.fail("pruner.perturb", "can only name hyperparameters searched in [space]", name)
    if study.warm_start and not study.warm_start_top:  # a member is a lineage trained here, with checkpoints
        raise c.fail("study.warm_start", "cannot import trials into a pbt population (warm_start_top = K "
                     "re-trains the best K as members instead)", [s["study"] for s in study.warm_start])
    if len(sections["enqueue"]) > pruner["population"]:  # queued configs start the first members
        raise c.fail("enqueue", f"holds more configs than pruner.population ({pruner['population']})",
                     len(sections["enqueue"]))
    n_trials = raw["study"].get("n_trials")
    if n_trials is not None and n_trials != pruner["population"]:
        raise c.fail("study.n_trials", f"must equal pruner.population ({pruner['population']}) with pbt, or be "
                     "left out: the population is the configurations", n_trials)
    study = dataclasses.replace(study, n_trials=pruner["population"],
                                max_failures=study.max_failures if "max_failures" in raw["study"]
                                else pruner["population"])
    return {**sections, "pruner": pruner, "study": study}
