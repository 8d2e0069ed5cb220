"""Commands that change a launched study: extend, enqueue, delete."""

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
