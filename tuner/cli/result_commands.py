"""Commands that read what a study found: best, status, evaluate, export, report, dashboard."""

from __future__ import annotations

import json
from typing import Optional

import typer

from tuner.cli.common import StorageOpt, existing_storage, out, setup_logging
from tuner.errors import TunerError


def best(
    study: str = typer.Option(..., "--study", help="Study name."),
    storage: Optional[str] = StorageOpt,
    format: str = typer.Option("table", "--format", help="table | json"),
) -> None:
    """Print the best trial: number, value, params and parameter count (several objectives: the Pareto front)."""
    from tuner.cli import ui
    from tuner.fleet.study import best_trial, stored_config, front_trials

    if format not in ("table", "json"):
        raise TunerError(f"--format must be table or json, got {format!r}")
    st = existing_storage(storage)
    config = stored_config(st, study)
    if config.study.multi_objective:
        front = front_trials(st, study)
        if format == "json":
            out.print_json(json.dumps([{"number": t.number, "values": list(t.values), "params": t.params}
                                       for t in front]))
        else:
            ui.print_front(out, config, front)
        return
    b = best_trial(st, study)
    if format == "json":
        out.print_json(json.dumps({"study": b.study, "trial": b.number, "value": b.value, "params": b.params,
                                   "fixed": b.fixed, "param_count": b.param_count, "nonzero_params": b.nonzero_params,
                                   "epochs_run": b.epochs_run,
                                   "test_accuracy": b.test_accuracy,
                                   **({"schedule": list(b.schedule)} if b.schedule else {})}))
        return
    ui.print_best(out, b)


def status(
    study: Optional[str] = typer.Option(None, "--study", help="Study name. Default: all tuner studies."),
    storage: Optional[str] = StorageOpt,
    watch: bool = typer.Option(False, "--watch", help="Refresh the table until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between refreshes with --watch."),
    format: str = typer.Option("table", "--format", help="table | json (a list, one object per study)"),
) -> None:
    """Per study: trials by state, retries, best value so far, budget left, checkpoint disk use."""
    from tuner.cli import ui
    from tuner.fleet.study import study_status, tuner_studies

    if watch and not interval > 0:
        raise TunerError(f"--interval must be > 0 seconds, got {interval}")
    if format not in ("table", "json"):
        raise TunerError(f"--format must be table or json, got {format!r}")
    st = existing_storage(storage)
    if format == "json":
        names = [study] if study else tuner_studies(st)
        out.print_json(json.dumps([study_status(st, n).as_json() for n in names]))
        return

    def table(caption: str = ""):
        return ui.status_view([study_status(st, n) for n in ([study] if study else tuner_studies(st))], caption)

    if not watch:
        out.print(table())
        return
    try:
        ui.redraw(out, ui.tolerant(lambda: table(f"every {interval:g} s; Ctrl-C to stop"), lambda note: note),
                  interval)
    except KeyboardInterrupt:  # the way to leave --watch: not an error
        pass


def evaluate(
    study: str = typer.Option(..., "--study", help="Study name."),
    storage: Optional[str] = StorageOpt,
    top: int = typer.Option(1, "--top", min=1, help="Score this many of the best COMPLETE trials."),
    cpu: bool = typer.Option(False, "--cpu", help="Score on the CPU even if a GPU is present."),
) -> None:
    """Score the best trials' final models once on the held-out test split (test_accuracy: never selects)."""
    from tuner.engine.device import pick_device
    from tuner.engine.evaluate import score_on_test

    setup_logging()
    scores = score_on_test(existing_storage(storage), study, top=top, device=pick_device(None, cpu))
    for number, accuracy in scores:
        out.print(f"trial {number}: test_accuracy {accuracy:.4f}", markup=False, highlight=False)


def export(
    study: str = typer.Option(..., "--study", help="Study name."),
    out_file: str = typer.Option(..., "--out", help="File to write, e.g. model.pt."),
    trial: Optional[int] = typer.Option(None, "--trial", help="Export this COMPLETE trial instead of the best "
                                        "(a study with several objectives: one from `tuner best`'s front)."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Write the best trial's weights, params and config: tuner.export.load_exported(path).predict(images)."""
    from pathlib import Path

    from tuner.engine.export import export_best

    payload = export_best(existing_storage(storage), study, Path(out_file), trial)
    out.print(f"wrote {out_file}: trial #{payload['trial']}, value {payload['value']:.4f}, epoch {payload['epoch']}")


def dashboard(
    storage: Optional[str] = StorageOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. The dashboard has no login and can "
                             "delete studies: keep it on loopback unless behind an authenticating proxy."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port (0: any free port)."),
) -> None:
    """Serve optuna-dashboard for the storage."""
    from tuner.report.dashboard import open_dashboard

    with open_dashboard(existing_storage(storage), host, port) as server:  # a port in use fails here
        where = "loopback only" if host in ("127.0.0.1", "localhost", "::1") else "REACHABLE FROM OTHER HOSTS"
        out.print(f"optuna-dashboard on http://{host}:{server.server_port}/ ({where}; --host to change)")
        server.serve_forever()


def report(
    study: str = typer.Option(..., "--study", help="Study name."),
    out_file: str = typer.Option("report.html", "--out", help="HTML file to write: one self-contained page that "
                                 "opens from disk, offline."),
    png: Optional[str] = typer.Option(None, "--png", help="Also write one PNG per plot into this folder."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Write one HTML page (and PNGs) of what a study found and what pruning saved."""
    from pathlib import Path

    from tuner.report.build import build_report

    setup_logging()
    result = build_report(existing_storage(storage), study, Path(out_file), Path(png) if png else None)
    s = result.snapshot
    spent = ", ".join(text for _, text in s.budget())
    out.print(f"wrote {result.html}: study {study!r}, {len(s.finished)} trials finished (budget spent {spent})",
              markup=False)
    if png:
        out.print(f"wrote {len(result.pngs)} PNGs to {png}", markup=False)
