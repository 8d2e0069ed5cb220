"""The study file's sections as frozen dataclasses, and the names and defaults their values are checked against.

What a field means is said here, next to its default; tuner.spec.checks and tuner.spec.params check the values,
and tuner.spec.config reads a study file into these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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


def _param_to_dict(p: ParamSpec) -> Any:
    """One [space] entry as the study file writes it: a constant as itself, else its choices or its range."""
    if p.value is not None:
        return p.value
    if p.choices is not None:
        return {"choices": list(p.choices)}
    return {"low": p.low, "high": p.high, "log": p.log}


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
    # Warm start (tuner.fleet.warm_start): earlier studies whose COMPLETE trials that fit [space] are added at
    # launch as finished trials (the sampler and pruner learn from them; no budget, no best unless counted).
    # In the file: names (same storage) or {storage = URL or "env:VAR", study = NAME} tables; checked, it is a
    # tuple of {"study": name, "storage": "" (this one) or the URL as written}.
    warm_start: Any = None
    warm_start_top: int = 0  # > 0: re-train the top K fitting configs instead (queued, in the budget); no import
    warm_start_counts_as_best: bool = False  # imported trials may be the study's best (they have no weights here)
    # Stopping when done (tuner.fleet.stopping): each ends the study like a spent budget; `tuner extend` lifts it.
    target: float | None = None  # a COMPLETE trial reached this value (maximize: >=, minimize: <=); None: none
    patience: int = 0  # this many finished trials in a row (in order of completion) without a new best; 0: none
    max_hours: float = 0.0  # wall-clock hours since the first trial started; running trials stop too; 0: none

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
        for key in ("objectives", "directions", "warm_start"):  # TOML and JSON have lists, not tuples
            out["study"][key] = list(out["study"][key])
        # Stop conditions that are not set are left out, as a file leaves them out: `patience = 0` is a mistake in
        # a file, and TOML has no null (a target of 0 is a target)
        if out["study"]["target"] is None:
            del out["study"]["target"]
        for key in ("patience", "max_hours"):
            if not out["study"][key]:
                del out["study"][key]
        out["pruner"] = dict(self.pruner)
        out["space"] = {p.name: _param_to_dict(p) for p in self.space}
        if self.enqueue:
            out["enqueue"] = [dict(e) for e in self.enqueue]
        return out

    def searched(self) -> dict[str, ParamSpec]:
        """The parameters the sampler chooses (not fixed to one value), by name."""
        return {p.name: p for p in self.space if p.value is None}

    def fixed(self) -> dict[str, Any]:
        """The parameters the study fixes, with the value a trial trains with: batch_size's 0 ("not set")
        reads as task.batch_size."""
        return {p.name: self.task.batch_size if (p.name, p.value) == ("batch_size", 0) else p.value
                for p in self.space if p.value is not None}

    def param(self, name: str) -> ParamSpec:
        return next(p for p in self.space if p.name == name)
