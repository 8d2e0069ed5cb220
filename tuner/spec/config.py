"""The study file: frozen dataclasses, and the one place where its values are checked.

Every error names the file, the field and the bad value, e.g.
``study file studies/x.toml: space.lr.low must be > 0 for a log scale, got 0.0``.
Code past this module trusts the config it is given.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import TunerError
from tuner.spec.plugins import is_plugin
from tuner.spec.search import check_sampler, pruner_options

AUGMENTATIONS = ("standard", "crop", "none")  # tuner/data/augment.py
PRECISIONS = ("auto", "bf16", "fp32")  # tuner/engine/device.py: auto is bf16 on a GPU that has it, else fp32
DATASETS = ("digits", "synthetic", "imagefolder", "cifar10", "cifar100")
BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "efficientnet_b0")  # torchvision's
MODELS = ("cnn",) + BACKBONES
OPTIMIZERS = ("adamw", "sgd")
# metric name -> the direction that makes sense for it
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}
# what a multi-objective study may also optimise: known before training, from the model alone
SIZE_OBJECTIVES = {"param_count": "minimize"}
DEFAULT_N_TRIALS = 20  # when the study file sets no budget at all
DEFAULT_MAX_FAILURES = 50  # max_failures of a study with no trial budget (only max_epochs / max_gpu_hours)

# The search space: parameter -> (python type, default when the study file leaves it out).
SPACE_PARAMS: dict[str, tuple[type, Any]] = {
    "lr": (float, 1e-3),  # peak learning rate (cosine-annealed to 0 over the epochs)
    "width": (int, 32),  # channels of the first conv block (doubled in each later block)
    "depth": (int, 2),  # number of conv blocks
    "dropout": (float, 0.0),  # dropout probability before the classifier
    "weight_decay": (float, 0.0),  # decoupled weight decay (AdamW / SGD), per step, independent of lr
    "optimizer": (str, "adamw"),  # adamw | sgd (momentum 0.9, nesterov)
    "freeze": (str, "none"),  # backbones: none | all | k (the last k stages train); a string or an int
    "distill_alpha": (float, 0.0),  # weight of the teacher's softened outputs in the loss (0: no distillation)
    "distill_temperature": (float, 4.0),  # softening of teacher and student logits for distillation
    "prune_amount": (float, 0.0),  # share of conv/linear weights zeroed (smallest first) before the last epochs
    # images per step; when [space] sets it (a range or one value), lr is per 256 images: the optimizer's rate is
    # lr * batch_size / 256, so lr and batch size are tuned independently. 0: task.batch_size, lr as given
    "batch_size": (int, 0),
    "label_smoothing": (float, 0.0),  # share of the target's probability spread over the other classes
    "momentum": (float, 0.9),  # SGD's momentum (Nesterov when > 0); AdamW ignores it
    "warmup_epochs": (int, 0),  # epochs of linear lr warm-up (from lr / (warmup_epochs + 1)) before the cosine
}


@dataclass(frozen=True)
class StudySection:
    name: str
    direction: str = "maximize"
    metric: str = "val_accuracy"
    # Budgets, whichever is reached first ends the study. n_trials: COMPLETE + PRUNED trials across all workers
    # (0: no trial budget; the default is DEFAULT_N_TRIALS when no other budget is set)
    n_trials: int = 0
    max_epochs: int = 0  # epochs trained across all trials and workers (a retry's resumed epochs count once); 0: none
    max_gpu_hours: float = 0.0  # hours of trial time on the workers' devices, summed; 0: none
    sampler: str = "tpe"  # tpe | random | gp | cmaes | qmc | nsga2
    seed: int = 0  # the same file, one worker, the same seed: the same trials (tuner.fleet.worker derives per-worker seeds)
    max_params: int = 0  # parameter budget: bigger models are infeasible and PRUNED before training; 0: none
    # two or more objectives instead of metric/direction, e.g. ["val_accuracy", "param_count"]
    objectives: tuple[str, ...] = ()
    directions: tuple[str, ...] = ()  # one per objective; default: each objective's natural direction
    max_retries: int = 2  # retries of a failed trial (same params) before it is given up
    max_failures: int = 0  # trials failed by the objective (not signals/dead workers) that stop the study; 0 = n_trials
    keep_best: int = 5  # COMPLETE trials whose final weights are kept on disk (the best ones); the rest are deleted

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def all_directions(self) -> tuple[str, ...]:
        return self.directions if self.multi_objective else (self.direction,)

    @property
    def compute_budget(self) -> bool:
        """Whether trials must claim each epoch under the budget lock (tuner.fleet.compute)."""
        return bool(self.max_epochs or self.max_gpu_hours)


@dataclass(frozen=True)
class TaskSection:
    dataset: str = "digits"
    model: str = "cnn"
    epochs: int = 10
    batch_size: int = 64
    val_fraction: float = 0.2  # share of the data held out for validation (stratified, fixed seed)
    test_fraction: float = 0.1  # share held out for the final test score, where the data has no test set of its own
    split_seed: int = 0
    weights: str = "none"  # backbones: none | imagenet | path/to/state_dict.pt
    teacher: str = ""  # distillation: a model file `tuner export` wrote (see space.distill_alpha)
    data_dir: str = ""  # imagefolder, cifar10, cifar100
    download: bool = False  # cifar: let torchvision download it into data_dir (needs internet)
    image_size: int = 32  # px; imagefolder images are resized to it, synthetic images have it
    num_classes: int = 10  # synthetic only
    num_samples: int = 2048  # synthetic only
    augment: str = ""  # standard (random crop + flip, on the device) | crop (no flip) | none; "": the dataset's
    resident_memory_gb: float = 0.0  # data kept on the device up to this size, else streamed; 0: automatic
    precision: str = "auto"  # bf16 (autocast) | fp32 | auto: bf16 on a GPU that supports it, fp32 on the CPU
    compile: bool = False  # torch.compile the model (slower first epoch, faster after; GPUs)


@dataclass(frozen=True)
class WorkerSection:
    heartbeat_interval: int = 10  # seconds between heartbeats of a running trial
    grace_period: int = 60  # seconds without heartbeat before a trial counts as dead
    reaper_period: int = 10  # seconds between checks for dead trials, in every worker


@dataclass(frozen=True)
class ParamSpec:
    """One search-space entry: a range, a set of choices, or a constant (low == high, no choices)."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    value: Any = None  # a constant, when the study fixes this parameter


@dataclass(frozen=True)
class StudyConfig:
    study: StudySection
    # `type` plus the Optuna pruner's keyword arguments, defaults filled in (tuner.spec.search); a multi-objective
    # study has {"type": "none"}
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    task: TaskSection = field(default_factory=TaskSection)
    worker: WorkerSection = field(default_factory=WorkerSection)
    space: tuple[ParamSpec, ...] = ()
    enqueue: tuple[dict[str, Any], ...] = ()  # [[enqueue]]: params of trials to run first, once each

    def to_dict(self) -> dict[str, Any]:
        """The config as the study file would write it (what is stored in the database)."""
        out: dict[str, Any] = {key: dataclasses.asdict(getattr(self, key)) for key in ("study", "task", "worker")}
        for key in ("objectives", "directions"):  # TOML and JSON have lists, not tuples
            out["study"][key] = list(out["study"][key])
        out["pruner"] = dict(self.pruner)
        out["space"] = {p.name: _param_to_dict(p) for p in self.space}
        if self.enqueue:
            out["enqueue"] = [dict(e) for e in self.enqueue]
        return out

    def searched(self) -> dict[str, ParamSpec]:
        """The parameters the sampler chooses (not fixed to one value), by name."""
        return {p.name: p for p in self.space if p.value is None}

    def param(self, name: str) -> ParamSpec:
        return next(p for p in self.space if p.name == name)


def _param_to_dict(p: ParamSpec) -> Any:
    if p.value is not None:
        return p.value
    if p.choices is not None:
        return {"choices": list(p.choices)}
    return {"low": p.low, "high": p.high, "log": p.log}


class _Checker:
    """Collects the context (file name) so that every error message has the same shape."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str, value: Any) -> TunerError:
        return TunerError(f"{self.source}: {where} {message}, got {value!r}")

    def section(self, data: dict[str, Any], cls: type, where: str) -> Any:
        if not isinstance(data, dict):
            raise self.fail(where, "must be a table", data)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in fields:
                raise self.fail(f"{where}.{key}", f"is not a known key (known: {', '.join(fields)})", data[key])
        values = {}
        for name, f in fields.items():
            if name not in data:
                if f.default is dataclasses.MISSING:
                    raise TunerError(f"{self.source}: {where}.{name} is required")
                continue
            values[name] = self.typed(data[name], type(f.default) if f.default is not dataclasses.MISSING else str,
                                      f"{where}.{name}")
        return cls(**values)

    def typed(self, value: Any, kind: type, where: str) -> Any:
        # bool is an int in Python; a study file that says `epochs = true` is a mistake.
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise self.fail(where, "must be an integer", value)
        if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise self.fail(where, "must be a number", value)
        if kind is float and not math.isfinite(value):
            raise self.fail(where, "must be finite", value)
        if kind is str and not isinstance(value, str):
            raise self.fail(where, "must be a string", value)
        if kind is bool and not isinstance(value, bool):
            raise self.fail(where, "must be true or false", value)
        if kind is tuple:  # a list of names
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise self.fail(where, "must be a list of strings", value)
            return tuple(value)
        return float(value) if kind is float else value

    def one_of(self, value: Any, allowed: tuple[str, ...], where: str) -> None:
        if value not in allowed:
            raise self.fail(where, f"must be one of {', '.join(allowed)}", value)

    def at_least(self, value: float, low: float, where: str) -> None:
        if value < low:
            raise self.fail(where, f"must be >= {low}", value)


def _own_kind(raw: Any) -> type:
    """The type of a parameter of the user's own model, from its values: int only if every bound is an int."""
    values = raw.get("choices", [raw.get("low"), raw.get("high")]) if isinstance(raw, dict) else [raw]
    values = [v for v in values if v is not None]
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return int
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return float
    return type(values[0]) if values and isinstance(values[0], (str, bool)) else float


class _ConstantChecker(_Checker):
    """For a constant: `space.x.low must be >= 0` becomes `space.x must be >= 0`."""

    def __init__(self, source: str, where: str):
        super().__init__(source)
        self.where = where

    def fail(self, where: str, message: str, value: Any) -> TunerError:
        return super().fail(self.where, message, value)


def _check_param(c: _Checker, name: str, raw: Any, own_model: bool = False) -> ParamSpec:
    where = f"space.{name}"
    if name not in SPACE_PARAMS and not own_model:
        raise c.fail(where, f"is not a searchable parameter (known: {', '.join(SPACE_PARAMS)}; a model of your "
                     "own takes names of its own)", raw)
    kind = SPACE_PARAMS[name][0] if name in SPACE_PARAMS else _own_kind(raw)
    if name == "freeze":
        return _check_freeze(c, raw)
    if not isinstance(raw, dict):  # a constant
        value = c.typed(raw, kind, where)
        if name == "optimizer":
            c.one_of(value, OPTIMIZERS, where)
        if kind in (int, float) and name in SPACE_PARAMS:
            _check_param_bounds(c, name, value, value, constant=True)
        return ParamSpec(name, value=value)
    unknown = set(raw) - {"low", "high", "log", "choices"}
    if unknown:
        key = sorted(unknown)[0]
        raise c.fail(f"{where}.{key}", "is not a known key (known: low, high, log, choices)", raw[key])
    if "choices" in raw:
        if set(raw) != {"choices"}:
            raise c.fail(where, "takes either choices or low/high, not both", raw)
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise c.fail(f"{where}.choices", "must be a non-empty list", choices)
        checked = tuple(c.typed(v, kind, f"{where}.choices") for v in choices)
        if name == "optimizer":
            for v in checked:
                c.one_of(v, OPTIMIZERS, f"{where}.choices")
        return ParamSpec(name, choices=checked)
    if kind is str:
        raise c.fail(where, "takes choices = [...] or a single value", raw)
    for key in ("low", "high"):
        if key not in raw:
            raise TunerError(f"{c.source}: {where}.{key} is required")
    low = c.typed(raw["low"], kind, f"{where}.low")
    high = c.typed(raw["high"], kind, f"{where}.high")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise c.fail(f"{where}.log", "must be true or false", log)
    if low >= high:
        raise c.fail(f"{where}.low", f"must be < high ({high})", low)
    if log and low <= 0:
        raise c.fail(f"{where}.low", "must be > 0 for a log scale", low)
    _check_param_bounds(c, name, low, high)
    return ParamSpec(name, low=low, high=high, log=log)


def _check_freeze(c: _Checker, raw: Any) -> ParamSpec:
    def one(value: Any, where: str) -> Any:
        ok = value in ("none", "all") or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
        if not ok:
            raise c.fail(where, 'must be "none", "all" or a number of last stages >= 0', value)
        return value

    if not isinstance(raw, dict):
        return ParamSpec("freeze", value=one(raw, "space.freeze"))
    if set(raw) != {"choices"} or not isinstance(raw["choices"], list) or not raw["choices"]:
        raise c.fail("space.freeze", "takes a single value or choices = [...]", raw)
    return ParamSpec("freeze", choices=tuple(one(v, "space.freeze.choices") for v in raw["choices"]))


def _check_param_bounds(c: _Checker, name: str, low: float, high: float, constant: bool = False) -> None:
    """Values that can never train: a negative rate, dropout of 1, no conv block, a temperature of 0."""
    where = f"space.{name}"
    if constant:  # one value: the messages name the parameter itself, not its .low/.high
        c = _ConstantChecker(c.source, where)
    if name in ("lr",) and low <= 0:
        raise c.fail(f"{where}.low", "must be > 0", low)
    if name in ("weight_decay", "dropout") and low < 0:
        raise c.fail(f"{where}.low", "must be >= 0", low)
    if name == "dropout" and high >= 1:
        raise c.fail(f"{where}.high", "must be < 1", high)
    if name in ("distill_alpha", "prune_amount") and low < 0:
        raise c.fail(f"{where}.low", "must be >= 0", low)
    if name == "distill_alpha" and high > 1:
        raise c.fail(f"{where}.high", "must be <= 1", high)
    if name == "prune_amount" and high >= 1:
        raise c.fail(f"{where}.high", "must be < 1", high)
    if name == "distill_temperature" and low <= 0:
        raise c.fail(f"{where}.low", "must be > 0", low)
    if name == "width" and low < 1:
        raise c.fail(f"{where}.low", "must be >= 1", low)
    if name == "depth" and low < 0:
        raise c.fail(f"{where}.low", "must be >= 0", low)
    if name == "batch_size" and low < 1 and not (constant and low == 0):  # 0: not searched (task.batch_size)
        raise c.fail(f"{where}.low", "must be >= 1", low)
    if name in ("label_smoothing", "momentum", "warmup_epochs") and low < 0:
        raise c.fail(f"{where}.low", "must be >= 0", low)
    if name in ("label_smoothing", "momentum") and high >= 1:
        raise c.fail(f"{where}.high", "must be < 1", high)


def _check_task(c: _Checker, task: TaskSection) -> None:
    if task.weights != "none" and task.model == "cnn":
        raise c.fail("task.weights", "needs a torchvision backbone model (the cnn has no pretrained weights)",
                     task.weights)
    if task.dataset in ("imagefolder", "cifar10", "cifar100") and not task.data_dir:
        raise TunerError(f"{c.source}: task.data_dir is required for dataset {task.dataset!r}")
    c.at_least(task.image_size, 8, "task.image_size")
    c.at_least(task.num_classes, 2, "task.num_classes")
    c.at_least(task.num_samples, 10 * task.num_classes, "task.num_samples")


def _check_space_fits_model(c: _Checker, task: TaskSection, space: tuple[ParamSpec, ...]) -> None:
    """The cnn needs at least one conv block and has no backbone to freeze."""
    if task.model != "cnn":
        return
    depth = next(p for p in space if p.name == "depth")
    low = depth.value if depth.value is not None else (min(depth.choices) if depth.choices else depth.low)
    if low < 1:
        raise c.fail("space.depth", "must be >= 1 for model cnn (depth 0 is a linear head, for backbones)", low)
    freeze = next(p for p in space if p.name == "freeze")
    if freeze.value != "none":
        raise c.fail("space.freeze", "applies to torchvision backbones, not model cnn",
                     freeze.value if freeze.value is not None else list(freeze.choices))


def _highest(spec: ParamSpec) -> Any:
    return spec.value if spec.value is not None else (max(spec.choices) if spec.choices else spec.high)


def _check_distillation(c: _Checker, task: TaskSection, space: tuple[ParamSpec, ...]) -> None:
    alpha = next(p for p in space if p.name == "distill_alpha")
    if _highest(alpha) > 0 and not task.teacher:
        raise c.fail("space.distill_alpha", "needs a teacher: task.teacher = a model file `tuner export` wrote",
                     _highest(alpha))


def _check_objectives(c: _Checker, study: StudySection, given: dict[str, Any]) -> StudySection:
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


def _check_budgets(c: _Checker, study: StudySection, given: dict[str, Any]) -> StudySection:
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


def _check_pruner(c: _Checker, data: dict[str, Any], study: StudySection, task: TaskSection) -> dict[str, Any]:
    raw = data.get("pruner", {})
    if not isinstance(raw, dict):
        raise c.fail("pruner", "must be a table", raw)
    if study.multi_objective:
        if raw.get("type", "none") != "none":  # what is stored for such a study is {type = "none"}
            raise c.fail("pruner", "cannot be used with several objectives (Optuna prunes single-objective "
                         "trials only): remove the [pruner] section", raw)
        return {"type": "none"}
    return pruner_options(raw, task.epochs, c.fail)


def _check_enqueue(c: _Checker, data: dict[str, Any], config: StudyConfig) -> tuple[dict[str, Any], ...]:
    """[[enqueue]] tables: known-good params to run first. Each key a searched parameter, each value in its range."""
    raw = data.get("enqueue", [])
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise c.fail("enqueue", "must be [[enqueue]] tables of parameter = value", raw)
    if config.study.n_trials and len(raw) > config.study.n_trials:
        raise c.fail("enqueue", f"has more trials than study.n_trials ({config.study.n_trials})", len(raw))
    return tuple(check_enqueued(c.source, entry, config, f"enqueue[{i}]") for i, entry in enumerate(raw))


def check_enqueued(source: str, params: dict[str, Any], config: StudyConfig, where: str) -> dict[str, Any]:
    """One trial's given params (the rest are sampled), each checked against its [space] entry; errors start
    with `source` (the study file, or the command)."""
    c = _Checker(source)
    searched = config.searched()
    if not params:
        raise c.fail(where, "names no parameter", params)
    out = {}
    for name, value in params.items():
        at = f"{where}.{name}" if where else name
        if name not in searched:
            fixed = next((p for p in config.space if p.name == name), None)
            chosen = fixed is not None and (name, fixed.value) != ("batch_size", 0)  # 0: not set
            why = (f"is fixed to {fixed.value!r} by the study file" if chosen
                   else f"is not a searched parameter (searched: {', '.join(searched) or 'none'})")
            raise c.fail(at, why, value)
        spec = searched[name]
        if spec.choices is not None:
            if value not in spec.choices or isinstance(value, bool) != isinstance(spec.choices[0], bool):
                raise c.fail(at, f"must be one of space.{name}.choices {list(spec.choices)}", value)
        else:
            kind = int if isinstance(spec.low, int) and isinstance(spec.high, int) else float
            value = c.typed(value, kind, at)
            if not spec.low <= value <= spec.high:
                raise c.fail(at, f"must be within space.{name} [{spec.low}, {spec.high}]", value)
        out[name] = value
    return out


def parse_config(data: dict[str, Any], source: str, name: str | None = None) -> StudyConfig:
    """Validate a study-file dict (from TOML, or stored in the DB) into a StudyConfig."""
    c = _Checker(source)
    known = ("study", "pruner", "task", "worker", "space", "enqueue")
    for key in data:
        if key not in known:
            raise c.fail(key, f"is not a known section (known: {', '.join(known)})", data[key])
    if "study" not in data:
        raise TunerError(f"{source}: section [study] is required")
    study_data = dict(data["study"]) if isinstance(data["study"], dict) else data["study"]
    if name is not None and isinstance(study_data, dict):
        study_data["name"] = name
    study = c.section(study_data, StudySection, "study")
    task = c.section(data.get("task", {}), TaskSection, "task")
    worker = c.section(data.get("worker", {}), WorkerSection, "worker")

    if not study.name.strip():
        raise c.fail("study.name", "must not be empty", study.name)
    given = study_data if isinstance(study_data, dict) else {}
    study = _check_objectives(c, study, given)
    study = _check_budgets(c, study, given)
    c.at_least(study.max_retries, 0, "study.max_retries")
    c.at_least(study.max_failures, 0, "study.max_failures")
    c.at_least(study.keep_best, 1, "study.keep_best")
    c.at_least(task.epochs, 1, "task.epochs")
    pruner = _check_pruner(c, data, study, task)
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
    _check_task(c, task)
    for key in ("heartbeat_interval", "grace_period", "reaper_period"):
        c.at_least(getattr(worker, key), 1, f"worker.{key}")
    if worker.grace_period <= worker.heartbeat_interval:
        raise c.fail("worker.grace_period", f"must be > heartbeat_interval ({worker.heartbeat_interval})",
                     worker.grace_period)

    raw_space = data.get("space", {})
    if not isinstance(raw_space, dict):
        raise c.fail("space", "must be a table", raw_space)
    given = {name: _check_param(c, name, raw, is_plugin(task.model)) for name, raw in raw_space.items()}
    # Parameters the file leaves out are fixed at their defaults, so every trial has all of them.
    space = tuple(given.get(n, ParamSpec(n, value=default)) for n, (_, default) in SPACE_PARAMS.items())
    space += tuple(spec for name, spec in given.items() if name not in SPACE_PARAMS)  # the user's own
    _check_space_fits_model(c, task, space)
    _check_distillation(c, task, space)
    warmup = next(p for p in space if p.name == "warmup_epochs")
    if _highest(warmup) >= task.epochs:
        raise c.fail("space.warmup_epochs", f"must be < task.epochs ({task.epochs})", _highest(warmup))
    config = StudyConfig(study=study, pruner=pruner, task=task, worker=worker, space=space)
    check_sampler(study.sampler, config.searched(), len(study.all_directions), c.fail)
    return dataclasses.replace(config, enqueue=_check_enqueue(c, data, config))


def load_config(path: str | Path, name: str | None = None) -> StudyConfig:
    """Read and validate a study file; ``name`` overrides ``[study] name``."""
    path = Path(path)
    source = f"study file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TunerError(f"{source}: no such file") from None
    except OSError as exc:
        raise TunerError(f"{source}: cannot be read ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TunerError(f"{source}: not valid TOML: {exc}") from None
    return _absolute_paths(parse_config(data, source, name=name))


def _absolute_paths(config: StudyConfig) -> StudyConfig:
    """A relative task.data_dir / task.weights file is where the user is now (like any command-line path),
    stored absolute: workers, `tuner export` and `tuner evaluate` then find it from any directory."""
    task = config.task
    data_dir = str(Path(task.data_dir).absolute()) if task.data_dir else ""
    weights = task.weights if task.weights in ("none", "imagenet") else str(Path(task.weights).absolute())
    teacher = str(Path(task.teacher).absolute()) if task.teacher else ""
    return dataclasses.replace(config, task=dataclasses.replace(task, data_dir=data_dir, weights=weights,
                                                                teacher=teacher))
