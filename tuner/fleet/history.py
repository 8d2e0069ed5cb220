"""A study's history: the changes made to it after launch, oldest first, in the study user attribute
`tuner_history` (a list of {at, event, ...}: extend, replace, stopped, stop lifted), for people and for the code
that must know what happened since (recovery: a replaced config; stopping: a lifted stop)."""

from __future__ import annotations

import datetime
from typing import Any

import optuna

HISTORY_ATTR = "tuner_history"  # study user attribute: list of {at, event, ...}


def events(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    """Every recorded event, oldest first, from the study's user attributes."""
    return list(attrs.get(HISTORY_ATTR, []))


def append_history(storage: optuna.storages.RDBStorage, study_id: int, event: str, **fields: Any) -> None:
    """Record a change of the stored study (call under the budget lock: read-modify-write)."""
    recorded = events(storage.get_study_user_attrs(study_id))
    at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    storage.set_study_user_attr(study_id, HISTORY_ATTR, recorded + [{"at": at, "event": event, **fields}])


def history(storage: optuna.storages.RDBStorage, study_id: int, event: str) -> list[dict[str, Any]]:
    """The recorded changes of one kind ("extend", "replace", ...), oldest first."""
    return [e for e in events(storage.get_study_user_attrs(study_id)) if e["event"] == event]


def as_launched(extends: list[dict[str, Any]], key: str, now: Any) -> Any:
    """The value a [study] key had at launch, from the "extend" events (which record what they changed; n_trials
    as old/new, the stop conditions as stops: {key: [old, new]}); `now` if no extension changed it."""
    for event in extends:
        if key == "n_trials":
            return event["old"]
        if key in event.get("stops", {}):
            return event["stops"][key][0]
    return now
