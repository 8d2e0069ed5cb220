"""The [space] entries and the [[enqueue]] trials: each parameter's range, choices or constant, checked.

A [space] entry is a range (low/high, optionally log), choices = [...], or one value (a constant). Parameters
the file leaves out are fixed at their defaults (SPACE_PARAMS), so every trial has all of them; a model of the
user's own adds names of its own. An [[enqueue]] trial names searched parameters, each within its entry.
"""

from __future__ import annotations

from typing import Any

from tuner.errors import TunerError
from tuner.spec.checker import Checker, ConstantChecker
from tuner.spec.plugins import is_plugin
from tuner.spec.search import check_sampler
from tuner.spec.sections import OPTIMIZERS, SPACE_PARAMS, ParamSpec, StudyConfig, TaskSection


def _own_kind(raw: Any) -> type:
    """The type of a parameter of the user's own model, from its values: int only if every bound is an int."""
    values = raw.get("choices", [raw.get("low"), raw.get("high")]) if isinstance(raw, dict) else [raw]
    values = [v for v in values if v is not None]
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return int
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return float
    return type(values[0]) if values and isinstance(values[0], (str, bool)) else float


def _check_freeze(c: Checker, raw: Any) -> ParamSpec:
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


def _check_param_bounds(c: Checker, name: str, low: float, high: float, constant: bool = False) -> None:
    """Values that can never train: a negative rate, dropout of 1, no conv block, a temperature of 0."""
    where = f"space.{name}"
    if constant:  # one value: the messages name the parameter itself, not its .low/.high
        c = ConstantChecker(c.source, where)
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


def _check_param(c: Checker, name: str, raw: Any, own_model: bool = False) -> ParamSpec:
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


def _check_space_fits_model(c: Checker, task: TaskSection, space: tuple[ParamSpec, ...]) -> None:
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


def _check_distillation(c: Checker, task: TaskSection, space: tuple[ParamSpec, ...]) -> None:
    alpha = next(p for p in space if p.name == "distill_alpha")
    if _highest(alpha) > 0 and not task.teacher:
        raise c.fail("space.distill_alpha", "needs a teacher: task.teacher = a model file `tuner export` wrote",
                     _highest(alpha))


def check_space(c: Checker, raw: Any, sections: dict[str, Any]) -> tuple[ParamSpec, ...]:
    """The [space] table into one ParamSpec per parameter, defaults filled in; then the sampler, which must be able
    to search what the space leaves to it."""
    study, task = sections["study"], sections["task"]
    if not isinstance(raw, dict):
        raise c.fail("space", "must be a table", raw)
    given = {name: _check_param(c, name, entry, is_plugin(task.model)) for name, entry in raw.items()}
    # Parameters the file leaves out are fixed at their defaults, so every trial has all of them.
    space = tuple(given.get(n, ParamSpec(n, value=default)) for n, (_, default) in SPACE_PARAMS.items())
    space += tuple(spec for name, spec in given.items() if name not in SPACE_PARAMS)  # the user's own
    _check_space_fits_model(c, task, space)
    _check_distillation(c, task, space)
    warmup = next(p for p in space if p.name == "warmup_epochs")
    if _highest(warmup) >= task.epochs:
        raise c.fail("space.warmup_epochs", f"must be < task.epochs ({task.epochs})", _highest(warmup))
    searched = {p.name: p for p in space if p.value is None}  # what StudyConfig.searched() will say
    check_sampler(study.sampler, searched, len(study.all_directions), c.fail)
    return space


def check_enqueued(source: str, params: dict[str, Any], config: StudyConfig, where: str) -> dict[str, Any]:
    """One trial's given params (the rest are sampled), each checked against its [space] entry; errors start
    with `source` (the study file, or the command)."""
    c = Checker(source)
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


def check_enqueue(c: Checker, raw: Any, sections: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """[[enqueue]] tables: known-good params to run first. Each key a searched parameter, each value in its range."""
    config = StudyConfig(**sections)  # every other section is checked by now
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise c.fail("enqueue", "must be [[enqueue]] tables of parameter = value", raw)
    if config.study.n_trials and len(raw) > config.study.n_trials:
        raise c.fail("enqueue", f"has more trials than study.n_trials ({config.study.n_trials})", len(raw))
    return tuple(check_enqueued(c.source, entry, config, f"enqueue[{i}]") for i, entry in enumerate(raw))
