"""The search space: the only caller of trial.suggest_*."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from tuner.config import SPACE_PARAMS, ParamSpec


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


def _suggest(trial: optuna.Trial, p: ParamSpec) -> Any:
    kind, _ = SPACE_PARAMS[p.name]
    if p.choices is not None:
        return trial.suggest_categorical(p.name, list(p.choices))
    if kind is int:
        return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(p.name, p.low, p.high, log=p.log)


def suggest_hparams(trial: optuna.Trial, space: tuple[ParamSpec, ...]) -> HParams:
    """Sample every searched parameter; constants are taken as they are and not stored as params."""
    values = {p.name: p.value if p.value is not None else _suggest(trial, p) for p in space}
    return HParams(**values)


def hparams_from_params(space: tuple[ParamSpec, ...], params: dict[str, Any]) -> HParams:
    """Rebuild a finished trial's HParams from its stored params plus the study's constants."""
    return HParams(**{p.name: p.value if p.value is not None else params[p.name] for p in space})


def describe_params(params: dict[str, Any]) -> str:
    """One line for logs, e.g. `lr=0.00312 width=24 dropout=0.12`; floats to 3 significant digits
    (`tuner best` has the exact values)."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
