"""`tuner report`: one self-contained HTML page (and optionally PNGs) of what a study found and what pruning saved.

Composes optuna.visualization (plotly) and optuna.visualization.matplotlib for the standard plots, with tuner's
own learning curves, metric against model size (Pareto front) and pruning savings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna

from tuner.errors import TunerError
from tuner.report.data import ReportSnapshot, take_snapshot
from tuner.report.plan import param_importances, plan_plots


@dataclass(frozen=True)
class ReportResult:
    html: Path
    pngs: list[Path]
    snapshot: ReportSnapshot


def build_report(storage: optuna.storages.BaseStorage, name: str, out: Path,
                 png_dir: Path | None = None) -> ReportResult:
    """Write the study's report to `out` (and one PNG per plot to `png_dir`); a TunerError if there is no study."""
    from tuner.report.figures import plotly_figure
    from tuner.report.page import render_page

    from tuner.fleet.study import stored_config

    if stored_config(storage, name).study.multi_objective:
        raise TunerError(f"study {name!r} has several objectives; the report covers single-objective studies "
                         f"for now: `tuner best --study {name}` prints the Pareto front, the dashboard plots it")
    snapshot = take_snapshot(storage, name)
    importances = param_importances(snapshot)
    plots = plan_plots(snapshot, importances)
    figures = [(p, None if p.missing else plotly_figure(p.key, snapshot, importances)) for p in plots]
    page = render_page(snapshot, figures)
    pngs: list[Path] = []
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
        if png_dir is not None:
            from tuner.report.png import write_pngs  # matplotlib only when PNGs are asked for

            pngs = write_pngs(snapshot, plots, importances, png_dir)
    except OSError as exc:
        raise TunerError(f"cannot write the report: {exc.filename}: {exc.strerror}") from None
    return ReportResult(html=out, pngs=pngs, snapshot=snapshot)
