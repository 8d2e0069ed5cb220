"""Copying a study between databases (`tuner copy`): SQLite -> PostgreSQL and back, or beside itself under
another name.

The rows are Optuna's: the same steps as `optuna.copy_study` (create the study with its directions, its system
and user attributes, then every trial through `create_new_trial(template_trial=...)`, which keeps numbers,
states, datetimes, params, values, intermediate values and trial attributes). They are taken here rather than
by calling it because of the order: copy_study writes the user attributes first, so a worker serving every
study of the target database (`tuner worker` without --study) could start on a half-copied study. Here, as at
launch, the config (what makes a study tuner's) is written last, after the trials and the checkpoints.

Checkpoints: the copy is a study of its own, with a new uuid, so `tuner delete` of either never removes the
other's checkpoints and both may go on running without writing into one folder. Its folder holds hard links to
the original's files (no extra disk; every checkpoint write is a new file renamed into place, so a link is never
written through), or copies where the filesystem has no links; where the original's folder is not on this host,
the result says what to copy on the host that has it.
"""

from __future__ import annotations

import copy
import datetime
import uuid
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import TunerError
from tuner.fleet.history import append_history
from tuner.fleet.study import CONFIG_ATTR, label_for_dashboard, stored_config
from tuner.spec.config import parse_config
from tuner.store.place import ROOT_ATTR, UUID_ATTR, StudyPlace, link_tree, study_place
from tuner.store.storage import make_storage
from tuner.store.urls import normalise_url, shown_url

COPIED_RUNNING = "copied while running"  # fail_reason of a trial that was RUNNING in the original (--force)


@dataclass(frozen=True)
class CopyResult:
    name: str  # the copy's name
    source: str  # the original's name
    to_url: str  # the target storage, as shown (no password)
    states: dict[str, int]  # the copy's trials by state
    study_attrs: int  # study attributes copied (user + system: tuner's config, note, history, metric names...)
    failed_running: int  # trials RUNNING in the original, copied as FAIL (--force)
    source_place: StudyPlace  # the original's checkpoint folder, as this host sees it
    place: StudyPlace  # the copy's
    linked: tuple[int, int, bool] | None  # (files, bytes, all hard links), or None: no source folder here

    @property
    def trials(self) -> int:
        return sum(self.states.values())


def _refuse_same(source: optuna.storages.RDBStorage, to_url: str, name: str, new: str) -> None:
    # shown_url: a SQLite path made absolute, a server URL without its password
    if new == name and shown_url(source.url) == shown_url(normalise_url(to_url)):
        raise TunerError(f"--from and --to are the same database and the copy would be named {name!r} too: "
                         "nothing to copy; --as NEW makes a copy beside it")


def _create(target: optuna.storages.RDBStorage, new: str, directions: list) -> int:
    """The copy's study (its id); a name that exists there is refused, and nothing is written."""
    exists = (f"study {new!r} already exists in {shown_url(target.url)}: nothing copied; name the copy with --as "
              f"NEW, or delete that one first (`tuner delete --study {new} --storage` with that --to database, "
              "not the original's)")
    try:
        return target.create_new_study(directions, study_name=new)
    except optuna.exceptions.DuplicatedStudyError:  # never undone below: it is someone else's study
        raise TunerError(exists) from None


def _templates(trials: list[FrozenTrial], name: str, force: bool) -> tuple[list[FrozenTrial], int]:
    """The trials as the copy gets them. A RUNNING trial's worker goes on reporting to the original, never to the
    copy, where it would stay RUNNING for ever (it has no heartbeat there) and hold a slot of the budget: refused,
    or with --force copied as FAIL with its params and curve so far. WAITING trials (queued retries and enqueued
    configs) stay queued: the copy's workers take them."""
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running and not force:
        numbers = ", ".join(f"#{t.number}" for t in running)
        raise TunerError(f"study {name!r} has {len(running)} RUNNING trials ({numbers}): a copy now would miss "
                         "what their workers report next; stop its workers first, or --force to copy them as FAIL")
    now = datetime.datetime.now()  # naive, as Optuna's own datetimes
    out = []
    for t in trials:
        if t.state == TrialState.RUNNING:
            t = copy.deepcopy(t)
            t.state, t.datetime_complete = TrialState.FAIL, now
            t.set_user_attr("fail_reason", COPIED_RUNNING)
        out.append(t)
    return out, len(running)


def _write_copy(target: optuna.storages.RDBStorage, study_id: int, user: dict, system: dict,
                trials: list[FrozenTrial]) -> None:
    """Optuna's copy_study in tuner's order (module docstring), the config left for last."""
    for key, value in system.items():  # metric names, the dashboard's note, the workers' ordinal counter
        target.set_study_system_attr(study_id, key, value)
    for key, value in user.items():
        if key != CONFIG_ATTR:
            target.set_study_user_attr(study_id, key, value)
    for trial in trials:  # in number order: create_new_trial numbers them 0, 1, ... again
        target.create_new_trial(study_id, template_trial=trial)


def copy_study(source: optuna.storages.RDBStorage, to_url: str, name: str, new_name: str | None = None, *,
               force: bool = False) -> CopyResult:
    """Copy study `name` from `source` to the database at `to_url` (as `new_name`): trials, params, intermediate
    values, user and system attributes, tuner's config, note and history (with a "copy" entry); the checkpoints
    as links in a folder of the copy's own. Refused with one line, nothing written (the target is opened only
    once the original passed, so a refusal creates no SQLite file): a missing study, an existing target name,
    the same database and name, RUNNING trials (unless force: copied as FAIL)."""
    new = name if new_name is None else new_name
    _refuse_same(source, to_url, name, new)
    config = stored_config(source, name)  # a missing study, or one tuner did not launch, is one line here
    if new != name:  # checked like a study file's name; the stored config and the note carry the new one
        config = parse_config(config.to_dict(), "tuner copy --as", name=new)
    source_id = source.get_study_id_from_name(name)
    user, system = source.get_study_user_attrs(source_id), source.get_study_system_attrs(source_id)
    trials, failed = _templates(source.get_all_trials(source_id), name, force)  # one snapshot, checked and copied
    source_place = study_place(user, name)
    place = StudyPlace(source_place.root, uuid.uuid4().hex)
    identity = {UUID_ATTR: place.key, ROOT_ATTR: user.get(ROOT_ATTR) or str(source_place.root)}
    target = make_storage(to_url)
    study_id = _create(target, new, source.get_study_directions(source_id))
    try:
        _write_copy(target, study_id, {**user, **identity}, system, trials)
        linked = link_tree(source_place.path, place.path) if source_place.path.is_dir() else None
        append_history(target, study_id, "copy", from_study=name, from_storage=shown_url(source.url),
                       from_uuid=source_place.key, trials=len(trials), failed_running=failed)
        target.set_study_user_attr(study_id, CONFIG_ATTR, config.to_dict())  # last: now workers may serve it
    except BaseException:  # a half copy is worse than none: the next try would be refused as "already exists"
        _undo(target, new, place)
        raise
    if new != name:
        label_for_dashboard(optuna.load_study(study_name=new, storage=target), config)
    target.engine.dispose()
    states = {s: n for s in ("COMPLETE", "PRUNED", "FAIL", "WAITING")
              if (n := sum(t.state.name == s for t in trials))}
    return CopyResult(new, name, shown_url(target.url), states, len(user) + len(system), failed, source_place,
                      place, linked)


def _undo(target: optuna.storages.RDBStorage, new: str, place: StudyPlace) -> None:
    try:
        optuna.delete_study(study_name=new, storage=target)
    except KeyError:  # it was never created
        pass
    if place.path.exists():
        place.remove()


def link_command(result: CopyResult) -> str:
    """What to run, on a host that has the original's checkpoint folder, to give the copy its checkpoints."""
    return f"cp -al {result.source_place.path} {result.place.path}"

