"""Commands that change a launched study: extend, enqueue, delete."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from tuner.cli.common import StorageOpt, existing_storage, out
from tuner.errors import TunerError


def extend(
    study: str = typer.Option(..., "--study", help="Study name."),
    n_trials: int = typer.Option(..., "--n-trials", min=1, help="The new total budget of COMPLETE + PRUNED trials."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Change a study's total budget; running workers pick it up before their next trial."""
    from tuner.fleet.lifecycle import extend_study

    r = extend_study(existing_storage(storage), study, n_trials)
    if r.new == r.old:
        out.print(f"study {r.name!r}: n_trials is already {r.new}")
        return
    out.print(f"study {r.name!r}: n_trials {r.old} -> {r.new} ({r.finished} finished)")
    if r.new > r.old:
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
