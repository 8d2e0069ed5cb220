"""The study file: read into frozen dataclasses (tuner.spec.sections), every value checked on the way in.

Every error names the file, the field and the bad value, e.g.
``study file studies/x.toml: space.lr.low must be > 0 for a log scale, got 0.0``.
Code past this module trusts the config it is given.

The study file is a table of sections, each with its own check (tuner.spec.checks, tuner.spec.params); this
module walks them and re-exports what callers import from here (the dataclasses, SPACE_PARAMS, check_enqueued).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import TunerError
from tuner.spec.checker import Checker
from tuner.spec.checks import check_population, check_pruner, check_study, check_task, check_worker
from tuner.spec.params import check_enqueue, check_enqueued, check_space
from tuner.spec.sections import (AUGMENTATIONS, BACKBONES, DATASETS, DEFAULT_MAX_FAILURES, DEFAULT_N_TRIALS, METRICS,
                                 MODELS, OPTIMIZERS, PRECISIONS, SIZE_OBJECTIVES, SPACE_PARAMS, ParamSpec, StudyConfig,
                                 StudySection, TaskSection, WorkerSection)

__all__ = ["AUGMENTATIONS", "BACKBONES", "DATASETS", "DEFAULT_MAX_FAILURES", "DEFAULT_N_TRIALS", "METRICS", "MODELS",
           "OPTIMIZERS", "PRECISIONS", "SIZE_OBJECTIVES", "SPACE_PARAMS", "ParamSpec", "StudyConfig", "StudySection",
           "TaskSection", "WorkerSection", "check_enqueued", "load_config", "parse_config"]


@dataclass(frozen=True)
class _Section:
    # (checker, the section's raw value, the sections so far) -> the section's checked value
    check: Callable[[Checker, Any, dict[str, Any]], Any]
    fields: type | None = None  # the dataclass a table's keys and types are read into before any value is checked
    absent: Callable[[], Any] = dict  # what a section the file leaves out reads as


# The study file's sections, in the order of the "known:" error message and of the checks: each check sees the
# sections checked before it, and the read (not yet checked) tables of the rest. The pruner comes before the
# task's checks and checks task.epochs itself (its default warm-up is a share of them); the space sees the checked
# task, and [[enqueue]] every other section.
_SECTIONS: dict[str, _Section] = {
    "study": _Section(check_study, fields=StudySection),
    "pruner": _Section(check_pruner),
    "task": _Section(check_task, fields=TaskSection),
    "worker": _Section(check_worker, fields=WorkerSection),
    "space": _Section(check_space),
    "enqueue": _Section(check_enqueue, absent=list),
}


def _absolute_paths(config: StudyConfig) -> StudyConfig:
    """A relative task.data_dir / task.weights file is where the user is now (like any command-line path),
    stored absolute: workers, `tuner export` and `tuner evaluate` then find it from any directory."""
    task = config.task
    data_dir = str(Path(task.data_dir).absolute()) if task.data_dir else ""
    weights = task.weights if task.weights in ("none", "imagenet") else str(Path(task.weights).absolute())
    teacher = str(Path(task.teacher).absolute()) if task.teacher else ""
    return dataclasses.replace(config, task=dataclasses.replace(task, data_dir=data_dir, weights=weights,
                                                                teacher=teacher))


def parse_config(data: dict[str, Any], source: str, name: str | None = None) -> StudyConfig:
    """Validate a study-file dict (from TOML, or stored in the DB) into a StudyConfig."""
    c = Checker(source)
    for key in data:
        if key not in _SECTIONS:
            raise c.fail(key, f"is not a known section (known: {', '.join(_SECTIONS)})", data[key])
    if "study" not in data:
        raise TunerError(f"{source}: section [study] is required")
    raw = {key: data.get(key, section.absent()) for key, section in _SECTIONS.items()}
    if name is not None and isinstance(raw["study"], dict):  # a copy: the caller's dict stays as it was
        raw["study"] = {**raw["study"], "name": name}
    # Every table's keys and types first, so a misspelt key anywhere is reported before any value is checked.
    sections = {key: c.section(raw[key], section.fields, key) for key, section in _SECTIONS.items() if section.fields}
    for key, section in _SECTIONS.items():
        sections[key] = section.check(c, raw[key], sections)
    if sections["pruner"].get("type") == "pbt":
        sections = check_population(c, sections, raw)
    return StudyConfig(**sections)


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
