"""Stopping when done: `[study] target`, `patience` and `max_hours` end a study like a spent budget.

- target: some COMPLETE trial's value reached it (maximize: value >= target; minimize: value <= target).
- patience: this many finished (COMPLETE + PRUNED) trials in a row without a new best. Trials are taken in the
  order they finished (datetime_complete, then trial id); a trial sets a new best when it is COMPLETE and strictly
  better than every COMPLETE trial that finished before it (an equal value is no new best). The count is of the
  trials that finished after the last new best (all of them while none is COMPLETE), leaving out those that
  finished before the stop was last lifted.
- max_hours: wall-clock hours since the first trial started (the first started after the stop was last lifted):
  Optuna's datetime_start (naive UTC) against the database's own clock in UTC, so no host's time zone matters.

Workers check them under the budget lock before each trial (tuner.fleet.compute.study_done), and the first
worker to see one records it once in the study's history ("stopped"); from then on the study is stopped
for that reason, as recorded, until `tuner extend` lifts it (a late trial's new best does not restart it). Only
the study's own trials count: a warm start's imported ones reach no target and start no clock. Target and patience let running trials
finish (their epochs are paid for, and they may set a new best); max_hours also stops them at their next epoch
end (WallClock: PRUNED, `stop_reason` recorded), so the wall-clock promise holds. `tuner extend` lifts a stop
(tuner.fleet.lifecycle): it records "stop lifted", after which patience and max_hours count afresh (Leg).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from tuner.fleet.history import append_history, events
from tuner.spec.config import StudySection
from tuner.store.budget import WARM_START_ATTR, connection

STOPPED = "stopped"  # history event: a stop condition ended the study (with its reason)
LIFTED = "stop lifted"  # history event: `tuner extend` lifted it (with the leg's baselines)
STOP_ATTR = "stop_reason"  # user attribute of a trial that max_hours stopped mid-training

_ORDER = "ORDER BY t.datetime_complete, t.trial_id"
# A study stops on what it trained itself: a warm start's imported trials (trained elsewhere, never its best)
# reach no target, spend no patience and start no clock.
_OWN = ("NOT EXISTS (SELECT 1 FROM trial_user_attributes a WHERE a.trial_id = t.trial_id "
        f"AND a.key = '{WARM_START_ATTR}')")
_REACHED = {  # the first COMPLETE trial, in order of completion, that reached the target
    "maximize": sqlalchemy.text(
        "SELECT t.number, v.value FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
        f"WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND v.value >= :target AND {_OWN} {_ORDER} LIMIT 1"),
    "minimize": sqlalchemy.text(
        "SELECT t.number, v.value FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
        f"WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND v.value <= :target AND {_OWN} {_ORDER} LIMIT 1"),
}
_FINISHED = sqlalchemy.text(
    "SELECT t.number, t.state, v.value FROM trials t "
    "LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
    f"WHERE t.study_id = :sid AND t.state IN ('COMPLETE', 'PRUNED') AND {_OWN} {_ORDER}")
_FIRST_START = sqlalchemy.text(
    f"SELECT min(t.datetime_start) AS first FROM trials t WHERE t.study_id = :sid AND t.datetime_start >= :since "
    f"AND {_OWN}"
).bindparams(sqlalchemy.bindparam("since", type_=sqlalchemy.DateTime)).columns(first=sqlalchemy.DateTime)
# The database's clock as naive UTC, like Optuna's timestamps (clock_timestamp: now() is the transaction's start)
_NOW = {"postgresql": sqlalchemy.text("SELECT clock_timestamp() AT TIME ZONE 'UTC' AS now"),
        "sqlite": sqlalchemy.text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now') AS now")}


@dataclass(frozen=True)
class Leg:
    """What patience and max_hours count from: the study's start, or the last time `tuner extend` lifted a stop."""

    finished_before: int = 0  # finished trials before the lift: patience does not count them
    since: datetime.datetime = datetime.datetime.min  # the database's clock (naive UTC) at the lift


def current_leg(attrs: dict[str, Any]) -> Leg:
    lifts = [e for e in events(attrs) if e["event"] == LIFTED]
    if not lifts:
        return Leg()
    return Leg(lifts[-1]["finished_before"], datetime.datetime.fromisoformat(lifts[-1]["since"]))


def database_now(storage: optuna.storages.RDBStorage) -> datetime.datetime:
    backend = make_url(str(storage.url)).get_backend_name()
    with connection(storage) as conn:
        now = conn.execute(_NOW[backend]).scalar_one()
    return now if isinstance(now, datetime.datetime) else datetime.datetime.fromisoformat(now)


def _target(conn: sqlalchemy.Connection, study_id: int, study: StudySection) -> str:
    row = conn.execute(_REACHED[study.direction], {"sid": study_id, "target": study.target}).first()
    if row is None:
        return ""
    sign = ">=" if study.direction == "maximize" else "<="
    return f"target reached: trial {row.number} has {study.metric} {row.value:.4f} {sign} {study.target:g}"


def _patience(conn: sqlalchemy.Connection, study_id: int, study: StudySection, leg: Leg) -> str:
    rows = conn.execute(_FINISHED, {"sid": study_id}).all()
    better = (lambda a, b: a > b) if study.direction == "maximize" else (lambda a, b: a < b)
    best = best_number = None
    since_best = 0  # finished trials after the last new best, of this leg
    for i, row in enumerate(rows):
        new_best = str(row.state).endswith("COMPLETE") and row.value is not None and (
            best is None or better(row.value, best))
        if new_best:
            best, best_number, since_best = row.value, row.number, 0
        elif i >= leg.finished_before:
            since_best += 1
    if since_best < study.patience:
        return ""
    of = f" (best: trial {best_number}, {study.metric} {best:.4f})" if best is not None else " (none COMPLETE)"
    return f"patience spent: {since_best} finished trials without a new best{of}, patience = {study.patience}"


def hours_spent(storage: optuna.storages.RDBStorage, study_id: int, study: StudySection, leg: Leg) -> str:
    """Why no epoch may start any more under max_hours ("" while there is time left)."""
    with connection(storage) as conn:
        first = conn.execute(_FIRST_START, {"sid": study_id, "since": leg.since}).scalar_one()
    if first is None:  # no trial has started (since the lift): the clock has not started
        return ""
    hours = (database_now(storage) - first).total_seconds() / 3600
    if hours < study.max_hours:
        return ""
    # 3 significant digits, as the budgets are shown: a limit of seconds is not "0.000 of 0.0005"
    return f"max_hours reached ({hours:.3g} of {study.max_hours:g} wall hours since the first trial started)"


def has_stops(study: StudySection) -> bool:
    return study.target is not None or bool(study.patience) or bool(study.max_hours)


def holding_stop(storage: optuna.storages.RDBStorage, study_id: int, study: StudySection,
                 leg: Leg | None = None) -> tuple[str, str]:
    """(which condition, why) of the first stop condition that holds, or ("", "")."""
    if not has_stops(study):
        return "", ""  # no query at all for a study without stop conditions
    if leg is None:
        leg = current_leg(storage.get_study_user_attrs(study_id))
    with connection(storage) as conn:
        if study.target is not None and (why := _target(conn, study_id, study)):
            return "target", why
        if study.patience and (why := _patience(conn, study_id, study, leg)):
            return "patience", why
    if study.max_hours and (why := hours_spent(storage, study_id, study, leg)):
        return "max_hours", why
    return "", ""


def recorded_stop(attrs: dict[str, Any]) -> str:
    """The reason of the stop the study's history holds, if no lift (or replaced config) came after it."""
    for event in reversed(events(attrs)):
        if event["event"] == STOPPED:
            return event["reason"]
        if event["event"] in (LIFTED, "replace"):
            return ""
    return ""


def stop_reason(storage: optuna.storages.RDBStorage, study_id: int, study: StudySection, *,
                record: bool = False) -> str:
    """Why a stop condition ended the study ("" while none holds). A recorded stop is final until `tuner extend`
    lifts it, and reads as it was recorded: a running trial that ends later with a new best does not restart
    the study, and status does not recount the reason. record: the caller holds the budget lock; the first
    worker to see the stop records it in the study's history, once per stop."""
    if not has_stops(study):
        return ""  # no query for a study without stop conditions (`tuner extend` lifts any it had)
    recorded = recorded_stop(storage.get_study_user_attrs(study_id))
    if recorded:
        return recorded
    _, why = holding_stop(storage, study_id, study)
    if why and record:
        append_history(storage, study_id, STOPPED, reason=why)
    return why


class WallClock:
    """max_hours for one running trial: after each epoch, stop it (PRUNED) once the study's time is up."""

    def __init__(self, storage: optuna.storages.RDBStorage, study_id: int, trial_id: int, study: StudySection):
        self.storage, self.study_id, self.trial_id, self.study = storage, study_id, trial_id, study

    def after_epoch(self, epoch: int, epochs: int, stopping: bool) -> None:
        if stopping or epoch >= epochs:  # no next epoch to stop
            return
        # the leg is read each time: a `tuner extend` that lifted the stop meanwhile restarts the clock
        why = hours_spent(self.storage, self.study_id, self.study,
                          current_leg(self.storage.get_study_user_attrs(self.study_id)))
        if why:
            self.storage.set_trial_user_attr(self.trial_id, "pruned_at_epoch", epoch)
            self.storage.set_trial_user_attr(self.trial_id, STOP_ATTR, why)
            raise optuna.TrialPruned(f"stopped after epoch {epoch}: {why}")
