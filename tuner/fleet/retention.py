"""Checkpoint retention: keep on disk only what a running trial, a pending retry or `tuner export` can need.

A lineage is a trial and its retries (they share the first trial's number and checkpoint folder). Its folder
goes when its latest trial is
  PRUNED (paused by ASHA: only once the study is over),
  FAIL with its retries exhausted (more than max_retries failures that count — interruptions do not, see
  tuner/fleet/recovery.py — so no retry can come any more), or
  COMPLETE but not among the best `keep_best` values (ties with the keep_best-th value are kept, so
  whichever of them Optuna reports as best can be exported).
A lineage with a RUNNING or WAITING trial is never touched (a running trial keeps its newest checkpoint and
the fallback, see tuner/store/checkpoint.py).

Every rule is about a final state: a PRUNED or exhausted lineage stays so, and a COMPLETE value never changes
while new ones only push it further down. So one SELECT is a safe basis for deleting, without the budget lock,
and several workers sweeping at once agree (at worst they delete the same folder twice).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass

import optuna
import sqlalchemy

from tuner.spec.config import StudyConfig, parse_config
from tuner.store.place import StudyPlace, remove_tree, study_place
from tuner.fleet.asha import LINEAGE_ATTR, PAUSED_ATTR
from tuner.fleet.compute import study_done
from tuner.fleet.imported import front_of
from tuner.store.budget import WARM_START_ATTR
from tuner.fleet.recovery import INTERRUPTED

_log = logging.getLogger(__name__)

_SNAPSHOT = sqlalchemy.text(
    "SELECT t.number, t.state, v.value, a.value_json, r.value_json, l.value_json, p.value_json FROM trials t "
    "LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
    "LEFT JOIN trial_system_attributes a ON a.trial_id = t.trial_id AND a.key = 'failed_trial' "
    "LEFT JOIN trial_user_attributes r ON r.trial_id = t.trial_id AND r.key = 'fail_reason' "
    f"LEFT JOIN trial_user_attributes l ON l.trial_id = t.trial_id AND l.key = '{LINEAGE_ATTR}' "
    f"LEFT JOIN trial_user_attributes p ON p.trial_id = t.trial_id AND p.key = '{PAUSED_ATTR}' "
    # a warm start's imported trials have no folder here, and must not push a trained one out of keep_best
    f"WHERE t.study_id = :sid AND NOT EXISTS (SELECT 1 FROM trial_user_attributes w "
    f"WHERE w.trial_id = t.trial_id AND w.key = '{WARM_START_ATTR}')")


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str  # TrialState name
    value: float | None
    lineage: int  # the first trial of its retry chain
    interrupted: bool = False  # a FAIL by a signal: it does not use up a retry
    paused: bool = False  # PRUNED by ASHA's pause: a worker may still promote it while the study runs


def _rows(storage: optuna.storages.RDBStorage, study_id: int) -> list[TrialRow]:
    with storage.engine.connect() as conn:
        rows = conn.execute(_SNAPSHOT, {"sid": study_id}).all()
    # Optuna stores the TrialState name; older SQLite files may hold the enum repr (as in tuner.store.budget).
    # the lineage: a promotion's `lineage` attribute (its retries copy it), else a retry's original, else itself
    return [TrialRow(n, str(state).split(".")[-1], value,
                     int(json.loads(lineage)) if lineage is not None else
                     n if original is None else int(json.loads(original)),
                     reason is not None and json.loads(reason) == INTERRUPTED, paused is not None)
            for n, state, value, original, reason, lineage, paused in rows]


def doomed_lineages(rows: list[TrialRow], *, keep_best: int, max_retries: int, maximize: bool,
                    front: set[int] | None = None, study_over: bool = False) -> set[int]:
    """The lineages whose checkpoints nothing can need any more (the rules in the module docstring). With several
    objectives, `front` holds the numbers of the Pareto front's trials: a COMPLETE trial off it goes (a trial
    another one beats on every objective stays beaten), whatever keep_best says. A paused lineage (ASHA) goes
    only once the study is over: until then a worker may promote it and resume its checkpoint."""
    chains: dict[int, list[TrialRow]] = defaultdict(list)
    for row in rows:
        chains[row.lineage].append(row)
    complete = sorted((r.value for r in rows if r.state == "COMPLETE" and r.value is not None), reverse=maximize)
    cutoff = complete[keep_best - 1] if len(complete) >= keep_best else None
    doomed = set()
    for lineage, chain in chains.items():
        if any(r.state in ("RUNNING", "WAITING") for r in chain):
            continue
        latest = max(chain, key=lambda r: r.number)
        if latest.state == "PRUNED" and (study_over or not latest.paused):
            doomed.add(lineage)
        elif latest.state == "FAIL" and sum(r.state == "FAIL" and not r.interrupted for r in chain) > max_retries:
            doomed.add(lineage)
        elif latest.state == "COMPLETE" and front is not None:
            if latest.number not in front:
                doomed.add(lineage)
        elif latest.state == "COMPLETE" and cutoff is not None and latest.value is not None:
            if (latest.value < cutoff) if maximize else (latest.value > cutoff):
                doomed.add(lineage)
    return doomed


def sweep_checkpoints(storage: optuna.storages.RDBStorage, study_id: int, name: str,
                      known: tuple[StudyPlace, StudyConfig] | None = None) -> int:
    """Delete the checkpoint folders of this study that nothing can need; returns the bytes freed.
    `known`: the study's place and config where the caller has them (a worker: they do not change while it
    serves the study), which saves reading them from the database before every trial.
    Best effort: a failure is logged and the worker goes on (the next sweep tries again)."""
    try:
        if known is None:
            attrs = storage.get_study_user_attrs(study_id)
            known = study_place(attrs, name), parse_config(attrs["tuner_config"], f"stored config of study {name!r}")
        place, config = known
        folders = place.lineages()
        if not folders:  # nothing on disk here: no query needed
            return 0
        front = None
        if config.study.multi_objective:
            front = {t.number for t in front_of(optuna.load_study(study_name=name, storage=storage))}
        rows = _rows(storage, study_id)
        over = any(r.paused for r in rows) and bool(study_done(storage, study_id, config))
        doomed = doomed_lineages(rows, keep_best=config.study.keep_best, max_retries=config.study.max_retries,
                                 maximize=config.study.direction == "maximize", front=front, study_over=over)
        freed = sum(remove_tree(folders[n], inside=place.path) for n in sorted(doomed & set(folders)))
        if freed:
            _log.debug("retention: freed %d bytes of checkpoints of study %r", freed, name)
        return freed
    except Exception as exc:  # retention must never stop training
        _log.warning("checkpoint retention of study %r skipped: %s: %s", name, type(exc).__name__, exc)
        return 0
