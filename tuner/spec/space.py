"""The search space: the only caller of trial.suggest_*."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from tuner.spec.sections import SPACE_PARAMS, ParamSpec


@dataclass(frozen=True)
class HParams:
    """One trial's hyperparameters, in the units the study file documents."""

    lr: float
    width: int
    depth: int
    dropout: float
    weight_decay: float
    optimizer: str
    freeze: str | int = "none"
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0
    prune_amount: float = 0.0
    batch_size: int = 0  # 0: the task's, lr as given; else lr is per 256 images (tuner.engine.objective scales it)
    label_smoothing: float = 0.0
    momentum: float = 0.9
    warmup_epochs: int = 0
    own: Mapping[str, Any] = field(default_factory=dict)  # the [space] entries of a model of the user's own

    def as_mapping(self) -> dict[str, Any]:
        """Every value by name, the user's own among them: what a plug-in model's build() receives."""
        values = {k: v for k, v in asdict(self).items() if k != "own"}
        return {**values, **self.own}


def _split(values: dict[str, Any]) -> HParams:
    own = {k: v for k, v in values.items() if k not in SPACE_PARAMS}
    return HParams(**{k: v for k, v in values.items() if k in SPACE_PARAMS}, own=own)


def _suggest(trial: optuna.Trial, p: ParamSpec) -> Any:
    own_int = isinstance(p.low, int) and isinstance(p.high, int)  # the config keeps ints of the user's own as ints
    kind = SPACE_PARAMS[p.name][0] if p.name in SPACE_PARAMS else (int if own_int else float)
    if p.choices is not None:
        return trial.suggest_categorical(p.name, list(p.choices))
    if kind is int:
        return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.name, p.low, p.high, log=p.log)


def distribution_of(p: ParamSpec) -> optuna.distributions.BaseDistribution:
    """The distribution _suggest records for a searched entry: what a trial made elsewhere (a warm start's
    imported one) must carry to be one of this study's, so that the samplers' search space takes it in."""
    own_int = isinstance(p.low, int) and isinstance(p.high, int)
    kind = SPACE_PARAMS[p.name][0] if p.name in SPACE_PARAMS else (int if own_int else float)
    if p.choices is not None:
        return optuna.distributions.CategoricalDistribution(list(p.choices))
    if kind is int:
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log)
    return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)


def suggest_hparams(trial: optuna.Trial, space: tuple[ParamSpec, ...]) -> HParams:
    """Sample every searched parameter; constants are taken as they are and not stored as params."""
    return _split({p.name: p.value if p.value is not None else _suggest(trial, p) for p in space})


def hparams_from_params(space: tuple[ParamSpec, ...], params: dict[str, Any]) -> HParams:
    """Rebuild a finished trial's HParams from its stored params plus the study's constants."""
    return _split({p.name: p.value if p.value is not None else params[p.name] for p in space})


def describe_params(params: dict[str, Any]) -> str:
    """One line for logs, e.g. `lr=0.00312 width=24 dropout=0.12`; floats to 3 significant digits
    (`tuner best` has the exact values)."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
