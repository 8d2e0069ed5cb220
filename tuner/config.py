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
from tuner.plugins import is_plugin

AUGMENTATIONS = ("standard", "crop", "none")  # tuner/data/augment.py
PRECISIONS = ("auto", "bf16", "fp32")  # tuner/device.py: auto is bf16 on a GPU that has it, else fp32
DATASETS = ("digits", "synthetic", "imagefolder", "cifar10", "cifar100")
BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "efficientnet_b0")  # torchvision's
MODELS = ("cnn",) + BACKBONES
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
OPTIMIZERS = ("adamw", "sgd")
# metric name -> the direction that makes sense for it
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}

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
}


@dataclass(frozen=True)
class StudySection:
    name: str
    direction: str = "maximize"
    metric: str = "val_accuracy"
    n_trials: int = 20  # total budget of COMPLETE + PRUNED trials, across all workers
    sampler: str = "tpe"
    seed: int = 0
    max_retries: int = 2  # retries of a failed trial (same params) before it is given up
    max_failures: int = 0  # trials failed by the objective (not signals/dead workers) that stop the study; 0 = n_trials
    keep_best: int = 5  # COMPLETE trials whose final weights are kept on disk (the best ones); the rest are deleted


@dataclass(frozen=True)
class PrunerSection:
    type: str = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 2  # epochs before a trial can be pruned


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
    pruner: PrunerSection = field(default_factory=PrunerSection)
    task: TaskSection = field(default_factory=TaskSection)
    worker: WorkerSection = field(default_factory=WorkerSection)
    space: tuple[ParamSpec, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The config as the study file would write it (what is stored in the database)."""
        out: dict[str, Any] = {
            key: dataclasses.asdict(getattr(self, key)) for key in ("study", "pruner", "task", "worker")
        }
        out["space"] = {p.name: _param_to_dict(p) for p in self.space}
        return out

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


def parse_config(data: dict[str, Any], source: str, name: str | None = None) -> StudyConfig:
    """Validate a study-file dict (from TOML, or stored in the DB) into a StudyConfig."""
    c = _Checker(source)
    known = ("study", "pruner", "task", "worker", "space")
    for key in data:
        if key not in known:
            raise c.fail(key, f"is not a known section (known: {', '.join(known)})", data[key])
    if "study" not in data:
        raise TunerError(f"{source}: section [study] is required")
    study_data = dict(data["study"]) if isinstance(data["study"], dict) else data["study"]
    if name is not None and isinstance(study_data, dict):
        study_data["name"] = name
    study = c.section(study_data, StudySection, "study")
    pruner = c.section(data.get("pruner", {}), PrunerSection, "pruner")
    task = c.section(data.get("task", {}), TaskSection, "task")
    worker = c.section(data.get("worker", {}), WorkerSection, "worker")

    if not study.name.strip():
        raise c.fail("study.name", "must not be empty", study.name)
    c.one_of(study.direction, ("maximize", "minimize"), "study.direction")
    c.one_of(study.metric, tuple(METRICS), "study.metric")
    if METRICS[study.metric] != study.direction:
        raise c.fail("study.direction", f"must be {METRICS[study.metric]} for metric {study.metric}",
                     study.direction)
    c.at_least(study.n_trials, 1, "study.n_trials")
    c.one_of(study.sampler, SAMPLERS, "study.sampler")
    c.at_least(study.max_retries, 0, "study.max_retries")
    c.at_least(study.max_failures, 0, "study.max_failures")
    c.at_least(study.keep_best, 1, "study.keep_best")
    c.one_of(pruner.type, PRUNERS, "pruner.type")
    c.at_least(pruner.n_startup_trials, 0, "pruner.n_startup_trials")
    c.at_least(pruner.n_warmup_steps, 0, "pruner.n_warmup_steps")
    if not is_plugin(task.dataset):
        c.one_of(task.dataset, DATASETS + ("module:callable of your own",), "task.dataset")
    if not is_plugin(task.model):
        c.one_of(task.model, MODELS + ("module:callable of your own",), "task.model")
    c.at_least(task.epochs, 1, "task.epochs")
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
    if study.max_failures == 0:
        study = dataclasses.replace(study, max_failures=study.n_trials)
    return StudyConfig(study=study, pruner=pruner, task=task, worker=worker, space=space)


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
