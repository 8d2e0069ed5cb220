"""The report's plots as PNG files through matplotlib (Agg: no display, browser or kaleido needed)."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import optuna.visualization.matplotlib as om  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tuner.report.data import ReportSnapshot, family_tree, learning_curves, size_front, pruning_savings  # noqa: E402
from tuner.report.figures import (BEST_COLOR, COMPLETE_COLOR, PRUNED_COLOR, RUNNING_COLOR,  # noqa: E402
                                  WITH_PRUNING_COLOR, WITHOUT_PRUNING_COLOR)
from tuner.report.plan import KnownImportances, Plot  # noqa: E402

SIZE = (9, 5.5)  # inches
DPI = 110
OWN_PLOTS = ("learning_curves", "size", "pruning")


def _figure_of(axes) -> Figure:
    """optuna.visualization.matplotlib returns one Axes, or an array of them (slices)."""
    return np.ravel(axes)[0].figure


def learning_curves_png(snapshot: ReportSnapshot) -> Figure:
    curves = learning_curves(snapshot.trials)
    fig, ax = plt.subplots(figsize=SIZE)
    styles = {"COMPLETE": (COMPLETE_COLOR, "solid"), "RUNNING": (RUNNING_COLOR, "dotted"),
              "FAIL": (RUNNING_COLOR, "dotted"), "PRUNED": (PRUNED_COLOR, "dashed")}
    for state, (color, style) in styles.items():
        chosen = [c for c in curves if c.state == state]
        if chosen:
            # one LineCollection per state: fast for thousands of trials
            segments = [np.column_stack([c.steps, c.values]) for c in chosen]
            ax.add_collection(LineCollection(segments, colors=color, linestyles=style, linewidths=1, alpha=0.6,
                                             label=f"{state.lower()} ({len(chosen)})"))
    pruned = [c.pruned_at for c in curves if c.pruned_at]
    if pruned:
        ax.scatter(*zip(*pruned), marker="x", color="#d62728", zorder=3, label="pruned here")
    best = snapshot.best
    c = next((c for c in curves if best is not None and c.number == best.number), None)
    if c is not None:
        ax.plot(c.steps, c.values, color=BEST_COLOR, linewidth=2.5, marker="o", label=f"best (trial #{c.number})")
    ax.autoscale()
    ax.set(xlabel="epoch", ylabel=snapshot.config.study.metric)
    ax.legend()
    return fig


def size_png(snapshot: ReportSnapshot) -> Figure:
    complete = [t for t in snapshot.complete if t.user_attrs.get("param_count") is not None]
    front = size_front(complete, snapshot.maximize)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.scatter([t.user_attrs["param_count"] for t in complete], [t.value for t in complete], color=COMPLETE_COLOR,
               alpha=0.5, label=f"COMPLETE trials ({len(complete)})")
    ax.step([p.param_count for p in front], [p.value for p in front], where="post", color=BEST_COLOR,
            marker="o", linewidth=2, label=f"Pareto front ({len(front)})")
    ax.set_xscale("log")
    ax.set(xlabel="parameters", ylabel=snapshot.config.study.metric)
    ax.legend()
    return fig


def pruning_png(snapshot: ReportSnapshot) -> Figure:
    s = pruning_savings(snapshot.trials, snapshot.config.task.epochs)
    hours = s.seconds_trained is not None
    fig, axes = plt.subplots(1, 2 if hours else 1, figsize=SIZE, squeeze=False)
    labels, colors = ["with pruning", "without pruning"], [WITH_PRUNING_COLOR, WITHOUT_PRUNING_COLOR]
    panels = [("epochs", [s.epochs_trained, s.epochs_without_pruning])]
    if hours:
        panels.append(("device hours (estimated)", [s.seconds_trained / 3600, s.seconds_without_pruning / 3600]))
    for ax, (title, values) in zip(axes[0], panels):
        bars = ax.bar(labels, values, color=colors)
        ax.bar_label(bars, labels=[f"{v:,.3g}" if isinstance(v, float) else f"{v:,}" for v in values])
        ax.set_title(title)
    return fig


def family_tree_png(snapshot: ReportSnapshot) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    segments = family_tree(snapshot.trials)
    values = [s.value for s in segments if s.value is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    for s in segments:
        share = 0.5 if high == low or s.value is None else (s.value - low) / (high - low)
        ax.plot([s.start, s.end], [s.member, s.member], color=plt.cm.viridis(share), linewidth=3, marker="o")
        if s.exploited_member is not None:
            ax.annotate("", xy=(s.start, s.member), xytext=(s.start, s.exploited_member),
                        arrowprops=dict(arrowstyle="->", color="#888", linestyle=":"))
    ax.set_xlabel("epoch")
    ax.set_ylabel("member")
    ax.set_yticks(sorted({s.member for s in segments}))
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def _figure(key: str, snapshot: ReportSnapshot, importances: dict[str, float] | None) -> Figure:
    study, params = snapshot.study, snapshot.searched_params
    if key == "history":
        return _figure_of(om.plot_optimization_history(study))
    if key == "learning_curves":
        return learning_curves_png(snapshot)
    if key == "importances":
        return _figure_of(om.plot_param_importances(study, evaluator=KnownImportances(importances or {})))
    if key == "parallel_coordinates":
        return _figure_of(om.plot_parallel_coordinate(study, params=params))
    if key == "slices":
        return _figure_of(om.plot_slice(study, params=params))
    if key == "size":
        return size_png(snapshot)
    if key == "pruning":
        return pruning_png(snapshot)
    if key == "family_tree":
        return family_tree_png(snapshot)
    raise ValueError(f"unknown plot {key!r}")


def write_pngs(snapshot: ReportSnapshot, plots: list[Plot], importances: dict[str, float] | None,
               out_dir: Path) -> list[Path]:
    """One PNG per plot that has something to draw, named after its key; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with warnings.catch_warnings():
        # optuna.visualization.matplotlib is marked experimental; choosing it is deliberate
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for plot in plots:
            if plot.missing is not None:
                continue
            fig = _figure(plot.key, snapshot, importances)
            try:
                if plot.key in OWN_PLOTS:  # optuna's plots carry their own title
                    fig.suptitle(plot.title)
                path = out_dir / f"{plot.key}.png"
                fig.savefig(path, dpi=DPI, bbox_inches="tight")
                written.append(path)
            finally:
                plt.close(fig)
    return written
