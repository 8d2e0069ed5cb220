"""A study config back to TOML text, for people to read (the optuna-dashboard study note).

Python has a TOML reader (tomllib) but no writer, and our shape is small and fixed: top-level tables of
scalars, plus [space] whose values are scalars, lists or one-line tables, and [[enqueue]] arrays of tables. A few lines here instead of a
dependency (tomli_w) for that; anything outside that shape is a bug and raises.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    # JSON's escapes are all valid TOML escapes; TOML also forbids a raw DEL, which JSON leaves alone.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def _value(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-trip form: 0.0001, 1e-06, 3.0 are all TOML floats
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return ("{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }") if value else "{}"
    raise TypeError(f"no TOML form for {type(value).__name__}: {value!r}")


def dump_toml(data: dict[str, dict[str, Any]]) -> str:
    """`{"study": {"name": "x"}, "space": {"lr": {"low": 0.001}}}` -> '[study]\\nname = "x"\\n\\n[space]\\n...'."""
    sections = []
    for table, values in data.items():
        if isinstance(values, list) and all(isinstance(v, dict) for v in values):  # [[enqueue]]: one per entry
            for entry in values:
                lines = [f"[[{_key(table)}]]"] + [f"{_key(k)} = {_value(v)}" for k, v in entry.items()]
                sections.append("\n".join(lines) + "\n")
            continue
        if not isinstance(values, dict):
            raise TypeError(f"top-level {table!r} must be a table, got {values!r}")
        # None is "not set" (study.target): TOML has no null, a key left out says it
        lines = [f"[{_key(table)}]"] + [f"{_key(k)} = {_value(v)}" for k, v in values.items() if v is not None]
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)
