"""Pruners and samplers by name: the study file's `[pruner]` table and `[study] sampler`, checked and built.

Each pruner is Optuna's own class; a `[pruner]` table is `type` plus that class's keyword arguments, checked
here against a table of their kinds (tests/test_search.py keeps the table equal to Optuna's signatures), then
by constructing the pruner once, so Optuna's own checks answer at launch, not in the middle of a study.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import optuna


# What "auto" in a pruner key means: Optuna's successive halving / hyperband work it out from finished trials.
AUTO = "auto"

# pruner type -> (Optuna class, {key: kind}); a kind is int, float, str, or a tuple of allowed kinds.
PRUNERS: dict[str, tuple[type[optuna.pruners.BasePruner], dict[str, Any]]] = {
    "median": (optuna.pruners.MedianPruner,
               {"n_startup_trials": int, "n_warmup_steps": int, "interval_steps": int, "n_min_trials": int}),
    "percentile": (optuna.pruners.PercentilePruner,
                   {"percentile": float, "n_startup_trials": int, "n_warmup_steps": int, "interval_steps": int,
                    "n_min_trials": int}),
    "successive_halving": (optuna.pruners.SuccessiveHalvingPruner,
                           {"min_resource": (int, AUTO), "reduction_factor": int, "min_early_stopping_rate": int,
                            "bootstrap_count": int}),
    "hyperband": (optuna.pruners.HyperbandPruner,
                  {"min_resource": int, "max_resource": (int, AUTO), "reduction_factor": int,
                   "bootstrap_count": int}),
    "wilcoxon": (optuna.pruners.WilcoxonPruner, {"p_threshold": float, "n_startup_steps": int}),
    # `wraps`: the pruner asked once a trial has stopped improving (Optuna's wrapped_pruner); its own keys
    # sit in the same table
    "patient": (optuna.pruners.PatientPruner, {"patience": int, "min_delta": float, "wraps": str}),
    "threshold": (optuna.pruners.ThresholdPruner,
                  {"lower": float, "upper": float, "n_warmup_steps": int, "interval_steps": int}),
    "none": (optuna.pruners.NopPruner, {}),
}
# tuner's own schedulers, which pause trials and resume them later rather than stopping them (built by the fleet,
# tuner.fleet.asha, tuner.fleet.pbt): type -> {key: kind}.
SCHEDULERS: dict[str, dict[str, Any]] = {
    "asha": {"min_resource": int, "reduction_factor": int},
    "pbt": {"population": int, "interval": int, "quantile": float, "perturb": list, "resample_probability": float},
}
# The hyperparameters PBT may change mid-training (each takes effect at the next segment: the optimizer's lr,
# weight decay and momentum are set anew, dropout is a module setting, the losses read theirs per step).
PERTURBABLE = ("lr", "weight_decay", "dropout", "momentum", "label_smoothing", "distill_alpha")
SCHEDULER_DEFAULTS: dict[str, dict[str, Any]] = {
    # ASHA: Li et al.'s and Syne Tune's first rung at 1 epoch, factor 3. Measured at an equal epoch budget
    # (docs/benchmarks.md): 20% / factor 2 was equal or better on 5 real digits seeds and on replayed curves,
    # worse on one CIFAR-10 seed; within noise either way, so the literature's setting stays.
    "asha": {"min_resource": 1, "reduction_factor": 3},
    # Ray Tune's PBT defaults: the bottom quarter exploits the top quarter, resampling a quarter of the time
    "pbt": {"population": 8, "quantile": 0.25, "perturb": list(PERTURBABLE), "resample_probability": 0.25},
}

# Keys Optuna requires (no default), and the ranges it accepts, checked here so the error names the key.
REQUIRED = {"percentile": ("percentile",), "patient": ("patience",)}
RANGES = {"percentile": (0.0, 100.0), "p_threshold": (0.0, 1.0), "interval_steps": (1, None), "n_min_trials": (1, None),
          "reduction_factor": (2, None), "min_resource": (1, None), "max_resource": (1, None),
          "population": (2, None), "interval": (1, None), "quantile": (0.0, 0.5), "resample_probability": (0.0, 1.0)}
WRAPPABLE = ("median", "percentile", "successive_halving", "hyperband", "wilcoxon", "threshold", "none")

# The default warm-up of median/percentile pruning, as a share of task.epochs: no trial is pruned before
# epoch ceil(WARMUP_FRACTION * epochs). bench/pruning.py (docs/benchmarks.md, "Pruning"): at 15 epochs a warm-up
# of 3 was the shortest that lost no accuracy in any seed and pruned no more eventual winners than 5 or 7 did,
# while training 80% of no pruning's epochs (5: 84%, 7: 89%); 0-2 saved more but pruned up to 11 of the best.
WARMUP_FRACTION = 0.2
DEFAULT_STARTUP_TRIALS = 5

SAMPLERS = ("tpe", "random", "gp", "cmaes", "qmc", "nsga2")
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "gp", "qmc", "nsga2")  # cmaes is single-objective only


def default_warmup(epochs: int) -> int:
    return max(1, math.ceil(WARMUP_FRACTION * epochs))


def pruner_options(raw: Mapping[str, Any], epochs: int, fail) -> dict[str, Any]:
    """The `[pruner]` table, checked and completed with tuner's defaults; `fail(key, message, value)` makes
    the one-line error. Returns {"type": ..., key: value, ...} as stored."""
    kind = raw.get("type", "median")
    if kind not in PRUNERS and kind not in SCHEDULERS:
        raise fail("pruner.type", f"must be one of {', '.join([*PRUNERS, *SCHEDULERS])}", kind)
    options = {k: v for k, v in raw.items() if k != "type"}
    if kind == "none":  # configs stored before the [pruner] table took each pruner's own keys carry these two
        options = {k: v for k, v in options.items() if k not in ("n_startup_trials", "n_warmup_steps")}
    keys = dict(PRUNERS[kind][1] if kind in PRUNERS else SCHEDULERS[kind])
    wraps = options.get("wraps", "median") if kind == "patient" else None
    if wraps is not None:
        if wraps not in WRAPPABLE:
            raise fail("pruner.wraps", f"must be one of {', '.join(WRAPPABLE)}", wraps)
        keys.update({k: v for k, v in PRUNERS[wraps][1].items() if k not in keys})
    for key, value in options.items():
        if key not in keys:
            known = ", ".join(keys) or "none"
            raise fail(f"pruner.{key}", f"is not a key of the {kind} pruner (its keys: {known})", value)
        _check_kind(key, value, keys[key], fail)
        _check_range(key, value, fail)
    for key in REQUIRED.get(kind, ()) + REQUIRED.get(wraps or "", ()):
        if key not in options:
            raise fail(f"pruner.{key}", f"is required by the {kind} pruner", dict(raw))
    if kind == "threshold" and "lower" not in options and "upper" not in options:
        raise fail("pruner.lower", "or pruner.upper is required by the threshold pruner", dict(raw))
    completed = {"type": kind, **_defaults(wraps or kind, epochs), **options}
    if kind == "patient":
        completed.setdefault("wraps", "median")
    if kind == "asha":
        _check_rungs(completed, epochs, fail)
    elif kind == "pbt":
        _check_population(completed, epochs, fail)
    else:
        _check_by_building(completed, fail)
    return completed


def _check_population(options: dict[str, Any], epochs: int, fail) -> None:
    """PBT: segments shorter than the training, a bottom quantile to exploit, and only what can change mid-run."""
    options.setdefault("interval", max(1, epochs // 4))  # four generations by default
    if options["interval"] >= epochs:
        raise fail("pruner.interval", f"must be below task.epochs ({epochs}): members are compared every "
                   "interval epochs", options["interval"])
    if options["quantile"] <= 0:
        raise fail("pruner.quantile", "must be above 0 and at most 0.5 (the bottom and top shares)",
                   options["quantile"])
    for name in options["perturb"]:
        if name not in PERTURBABLE:
            raise fail("pruner.perturb", f"can only name hyperparameters that can change mid-training "
                       f"({', '.join(PERTURBABLE)}); {name} is fixed per member", name)


def _check_rungs(options: Mapping[str, Any], epochs: int, fail) -> None:
    """ASHA needs at least one rung below task.epochs, or it would pause nothing."""
    if options["min_resource"] >= epochs:
        raise fail("pruner.min_resource", f"must be below task.epochs ({epochs}): the first rung is where "
                   "trials are compared", options["min_resource"])


def _defaults(kind: str, epochs: int) -> dict[str, Any]:
    """tuner's defaults where they differ from Optuna's: median/percentile wait for DEFAULT_STARTUP_TRIALS
    finished trials and a warm-up of a share of the epochs (Optuna's default warm-up is 0)."""
    if kind in ("median", "percentile"):
        return {"n_startup_trials": DEFAULT_STARTUP_TRIALS, "n_warmup_steps": default_warmup(epochs)}
    return dict(SCHEDULER_DEFAULTS.get(kind, {}))


def _check_kind(key: str, value: Any, kind: Any, fail) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value in kinds:  # a literal such as "auto"
        return
    if int in kinds and isinstance(value, int) and not isinstance(value, bool):
        return
    if list in kinds and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return
    if float in kinds and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return
    if str in kinds and isinstance(value, str):
        return
    words = {int: "an integer", float: "a number", str: "a string", list: "a list of names"}
    described = " or ".join(words.get(k, repr(k)) for k in kinds)
    raise fail(f"pruner.{key}", f"must be {described}", value)


def _check_range(key: str, value: Any, fail) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or key in ("lower", "upper"):  # any sign
        return
    low, high = RANGES.get(key, (0, None))  # counts, steps and deltas are >= 0
    if value < low or (high is not None and value > high):
        raise fail(f"pruner.{key}", f"must be >= {low}" if high is None else f"must be between {low} and {high}",
                   value)


def _check_by_building(options: Mapping[str, Any], fail) -> None:
    """Optuna's own constructor checks (what _check_range does not cover, e.g. lower > upper)."""
    kind = options["type"]
    try:
        make_pruner(options)
    except (ValueError, TypeError) as exc:
        raise fail("pruner", f"is not valid for Optuna's {PRUNERS[kind][0].__name__}: {exc}",
                   {k: v for k, v in options.items() if k != "type"}) from None


def make_pruner(options: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """The Optuna pruner of a checked `[pruner]` table (a scheduler's is built by the fleet: tuner.fleet.asha)."""
    kind = options["type"]
    if kind in SCHEDULERS:
        raise ValueError(f"pruner type {kind!r} is a scheduler: build it with tuner.fleet.asha")
    cls, keys = PRUNERS[kind]
    own = {k: v for k, v in options.items() if k in keys and k != "wraps"}
    with warnings.catch_warnings():  # PatientPruner and WilcoxonPruner are "experimental"; we mean to use them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "patient":
            wraps = options.get("wraps", "median")
            wrapped = {k: v for k, v in options.items() if k in PRUNERS[wraps][1] and k not in keys}
            inner = None if wraps == "none" else make_pruner({"type": wraps, **wrapped})
            return cls(inner, **own)
        return cls(**own)


def check_sampler(sampler: str, searched: Mapping[str, Any], n_objectives: int, fail) -> None:
    """What a sampler cannot do, said at launch: `searched` maps each searched parameter to its spec."""
    if sampler not in SAMPLERS:
        raise fail("study.sampler", f"must be one of {', '.join(SAMPLERS)}", sampler)
    if n_objectives > 1 and sampler not in MULTI_OBJECTIVE_SAMPLERS:
        raise fail("study.sampler", "is single-objective only (Optuna's CmaEsSampler); with several objectives "
                   f"use one of {', '.join(MULTI_OBJECTIVE_SAMPLERS)}", sampler)
    if sampler == "cmaes":
        categorical = [name for name, spec in searched.items() if spec.choices is not None]
        if categorical:
            raise fail("study.sampler", "cannot search categorical parameters (CMA-ES samples only numbers; Optuna "
                       f"would draw them at random): space.{', space.'.join(categorical)} has choices; fix them "
                       "to one value or use tpe/gp", sampler)


def make_sampler(sampler: str, seed: int) -> optuna.samplers.BaseSampler:
    """A sampler seeded with `seed` (tuner.fleet.worker derives it from the study seed and the worker's ordinal)."""
    with warnings.catch_warnings():  # QMCSampler is "experimental" since Optuna 3.0; we mean to use it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed)
        if sampler == "qmc":
            # scrambled, so the seed matters; every worker shares the study's sequence (see tuner.fleet.worker)
            return optuna.samplers.QMCSampler(scramble=True, seed=seed)
        if sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed)
