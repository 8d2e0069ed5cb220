"""Commands that change a launched study: extend, enqueue, delete; copy one to another database."""

from __future__ import annotations

import math
import sys
from typing import Optional

import typer

from tuner.cli.common import StorageOpt, existing_storage, out
from tuner.errors import TunerError


def _target(text: str | None) -> dict:
    """--target: a number, or none (removes it); the study's own checks follow in extend_study."""
    if text is None:
        return {}
    if text.strip().lower() == "none":
        return {"target": None}
    try:
        value = float(text)
    except ValueError:
        raise TunerError(f"--target must be a number or none, got {text!r}") from None
    if not math.isfinite(value):
        raise TunerError(f"--target must be finite, got {text!r}")
    return {"target": value}


def extend(
    study: str = typer.Option(..., "--study", help="Study name."),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", min=1,
                                           help="The new total budget of COMPLETE + PRUNED trials."),
    target: Optional[str] = typer.Option(None, "--target", help="A new study.target, or none."),
    patience: Optional[int] = typer.Option(None, "--patience", min=0, help="A new study.patience (0: none)."),
    max_hours: Optional[float] = typer.Option(None, "--max-hours", min=0, help="A new study.max_hours (0: none)."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Change a study's budget or stop conditions, and lift a stop (target, patience, max_hours) that ended it;
    running workers pick it up before their next trial."""
    from tuner.fleet.lifecycle import extend_study

    stops = {**_target(target), **({"patience": patience} if patience is not None else {}),
             **({"max_hours": max_hours} if max_hours is not None else {})}
    r = extend_study(existing_storage(storage), study, n_trials, stops)
    if n_trials is not None:
        out.print(f"study {r.name!r}: n_trials {r.old} -> {r.new} ({r.finished} finished)" if r.new != r.old
                  else f"study {r.name!r}: n_trials is already {r.new}", markup=False, highlight=False)
    for key, old, new in r.changes:
        # none: no target (None), no patience or time limit (0); a target of 0 is a target
        shown = ["none" if v is None or (key != "target" and not v) else f"{v:g}" for v in (old, new)]
        out.print(f"study {r.name!r}: {key} {shown[0]} -> {shown[1]}", markup=False, highlight=False)
    if r.lifted:
        out.print(f"study {r.name!r}: stop lifted ({r.lifted}); patience and max_hours count from now",
                  markup=False, highlight=False, soft_wrap=True)
    if not (n_trials is not None or r.changes or r.lifted):
        out.print(f"study {r.name!r}: nothing to change (no stop condition holds; give --n-trials, --target, "
                  "--patience or --max-hours)", markup=False, highlight=False, soft_wrap=True)
    if r.new > r.old or r.lifted:
        out.print(f"workers still running take the new trials; a worker that had exited does not come back: "
                  f"tuner worker --study {r.name}", markup=False, soft_wrap=True)


def enqueue(
    params: list[str] = typer.Argument(..., help="The trial's params as name=value (the rest are sampled)."),
    study: str = typer.Option(..., "--study", help="Study name."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Queue a known-good config: the next worker to ask runs it, once. It takes a slot of the trial budget."""
    from tuner.fleet.lifecycle import enqueue_params

    number = enqueue_params(existing_storage(storage), study, params)
    out.print(f"study {study!r}: queued trial #{number} with {' '.join(params)}", markup=False, highlight=False,
              soft_wrap=True)


def delete(
    study: str = typer.Option(..., "--study", help="Study name."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Delete a study from the database, with all its trials and checkpoints."""
    from tuner.fleet.lifecycle import delete_study, plan_delete
    from tuner.store.place import human_bytes

    st = existing_storage(storage)
    plan = plan_delete(st, study)
    if not yes:
        if not sys.stdin.isatty():
            raise TunerError(f"tuner delete asks for confirmation on a terminal; pass --yes to delete study "
                             f"{study!r} without asking")
        running = f", {plan.running} of them RUNNING (stop their workers first)" if plan.running else ""
        if not typer.confirm(f"delete study {study!r}: {plan.trials} trials{running} and "
                             f"{human_bytes(plan.checkpoint_bytes)} of checkpoints in {plan.place.path}?"):
            out.print("nothing deleted")
            raise typer.Exit(1)
    done = delete_study(st, study)
    out.print(f"deleted study {study!r}: {done.trials} trials, {human_bytes(done.checkpoint_bytes)} of "
              f"checkpoints freed ({done.place.path})", markup=False, highlight=False, soft_wrap=True)


def copy(
    study: str = typer.Option(..., "--study", help="Name of the study to copy."),
    from_url: Optional[str] = typer.Option(None, "--from", show_default=False,
                                           help="Database the study is in. Default: the storage as every command "
                                                "finds it ($TUNER_STORAGE, $TUNER_STORAGE_FILE, sqlite:///tuner.db)."),
    to_url: Optional[str] = typer.Option(None, "--to", show_default=False,
                                         help="Database to copy it into (a SQLite file is created). Default: the "
                                              "storage as every command finds it, so a password can stay in the "
                                              "environment on either side."),
    as_name: Optional[str] = typer.Option(None, "--as", help="Name of the copy. Default: the same name."),
    force: bool = typer.Option(False, "--force",
                               help="Copy a study whose workers are still running: their RUNNING trials become FAIL "
                                    "in the copy (fail_reason 'copied while running')."),
) -> None:
    """Copy a study to another database (SQLite <-> PostgreSQL) or beside itself (--as): every trial with its
    params, values, curve and attributes, tuner's config, note and history. The copy gets a checkpoint folder of
    its own, hard links to the original's files (none where that folder is on another host: it says what to
    copy there), so deleting either study never removes the other's checkpoints. Refused with one line, nothing
    written: a name that exists there, the same database and name, or RUNNING trials (unless --force)."""
    from tuner.fleet.copy import copy_study, link_command
    from tuner.store.place import human_bytes
    from tuner.store.urls import resolve_storage_url

    r = copy_study(existing_storage(from_url), resolve_storage_url(to_url), study, as_name, force=force)
    states = ", ".join(f"{n} {s}" for s, n in r.states.items())
    named = f" as {r.name!r}" if r.name != r.source else ""
    out.print(f"copied study {r.source!r} to {r.to_url}{named}: {r.trials} trials ({states or 'none'}), "
              f"{r.study_attrs} study attributes (config, note, history, metric names)",
              markup=False, highlight=False, soft_wrap=True)
    if r.failed_running:
        out.print(f"{r.failed_running} trials RUNNING in the original are FAIL in the copy (fail_reason "
                  f"'copied while running')", markup=False, highlight=False, soft_wrap=True)
    if r.linked is None:
        out.print(f"checkpoints: {r.source_place.path} is not on this host; the copy's are to be in "
                  f"{r.place.path}: on the host that has them run `{link_command(r)}`",
                  markup=False, highlight=False, soft_wrap=True)
    else:
        files, size, links = r.linked
        how = "hard-linked" if links else "copied (this filesystem has no hard links)"
        out.print(f"checkpoints: {files} files ({human_bytes(size)}) {how} from {r.source_place.path} into the "
                  f"copy's own folder {r.place.path}: deleting either study leaves the other's",
                  markup=False, highlight=False, soft_wrap=True)
