"""The one shape of every study-file error: ``<source>: <where> <what is wrong>, got <value>``.

tuner.spec.config, tuner.spec.checks and tuner.spec.params raise only through a Checker, so a message names the
file (or the command), the field and the bad value the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from tuner.errors import TunerError


class Checker:
    """Collects the context (file name) so that every error message has the same shape."""

    def __init__(self, source: str) -> None:
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
            if f.default is None and data[name] is None:  # an optional value, stored as null (TOML has none)
                continue
            values[name] = self.typed(data[name], _kind(f), f"{where}.{name}")
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


class ConstantChecker(Checker):
    """For a constant: `space.x.low must be >= 0` becomes `space.x must be >= 0`."""

    def __init__(self, source: str, where: str) -> None:
        super().__init__(source)
        self.where = where

    def fail(self, where: str, message: str, value: Any) -> TunerError:
        return super().fail(self.where, message, value)


def _kind(f: dataclasses.Field) -> type:
    """What a key's value must be: its default's type; no default: a string (study.name); a default of None: a
    number where the field is `float | None` (study.target), else anything, left to the section's own check
    (study.warm_start's names and tables)."""
    if f.default is dataclasses.MISSING:
        return str
    if f.default is None:
        return float if str(f.type).startswith("float") else object
    return type(f.default)
