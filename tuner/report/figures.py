"""The report's plots as plotly figures: optuna.visualization's, and tuner's own learning curves, model size
against the metric, and what pruning saved."""

from __future__ import annotations

import optuna.visualization as ov
import plotly.express as px
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tuner.report.data import Curve, ReportSnapshot, family_tree, learning_curves, size_front, pruning_savings
from tuner.report.plan import KnownImportances

# colours shared with the matplotlib versions (png.py)
COMPLETE_COLOR, PRUNED_COLOR, RUNNING_COLOR, BEST_COLOR = "#1f77b4", "#ff7f0e", "#7f7f7f", "#2ca02c"
WITH_PRUNING_COLOR, WITHOUT_PRUNING_COLOR = "#1f77b4", "#c7c7c7"
HEIGHT = 460  # px


def _joined(curves: list[Curve]) -> tuple[list, list, list]:
    """Many curves as one trace: one <path> for the browser instead of one trace per trial."""
    xs, ys, texts = [], [], []
    for c in curves:
        xs += [*c.steps, None]
        ys += [*c.values, None]
        texts += [f"trial #{c.number} ({c.state.lower()})"] * len(c.steps) + [None]
    return xs, ys, texts


def learning_curves_figure(snapshot: ReportSnapshot) -> go.Figure:
    curves = learning_curves(snapshot.trials)
    best = snapshot.best
    fig = go.Figure()
    styles = {"COMPLETE": dict(color=COMPLETE_COLOR, width=1.2), "RUNNING": dict(color=RUNNING_COLOR, dash="dot"),
              "FAIL": dict(color=RUNNING_COLOR, dash="dot"), "PRUNED": dict(color=PRUNED_COLOR, dash="dash")}
    for state, line in styles.items():
        chosen = [c for c in curves if c.state == state]
        if chosen:
            x, y, text = _joined(chosen)
            name = {"FAIL": "failed", "RUNNING": "running"}.get(state, state.lower())
            fig.add_trace(go.Scatter(x=x, y=y, hovertext=text, mode="lines", name=f"{name} ({len(chosen)})",
                                     line=line, opacity=0.6, hoverinfo="text+x+y"))
    pruned = [c for c in curves if c.pruned_at]
    if pruned:
        fig.add_trace(go.Scatter(x=[c.pruned_at[0] for c in pruned], y=[c.pruned_at[1] for c in pruned],
                                 mode="markers", name="pruned here", hoverinfo="text+x+y",
                                 hovertext=[f"trial #{c.number} pruned at epoch {c.pruned_at[0]}" for c in pruned],
                                 marker=dict(symbol="x", size=8, color="#d62728")))
    if best is not None:
        c = next((c for c in curves if c.number == best.number), None)
        if c is not None:
            fig.add_trace(go.Scatter(x=c.steps, y=c.values, mode="lines+markers", name=f"best (trial #{c.number})",
                                     line=dict(color=BEST_COLOR, width=3)))
    fig.update_layout(xaxis_title="epoch", yaxis_title=snapshot.config.study.metric)
    return fig


def size_figure(snapshot: ReportSnapshot) -> go.Figure:
    complete = [t for t in snapshot.complete if t.user_attrs.get("param_count") is not None]
    front = size_front(complete, snapshot.maximize)
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[t.user_attrs["param_count"] for t in complete], y=[t.value for t in complete], mode="markers",
        name=f"COMPLETE trials ({len(complete)})", marker=dict(color=COMPLETE_COLOR, opacity=0.5),
        hovertext=[f"trial #{t.number}<br>" + "<br>".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                         for k, v in t.params.items()) for t in complete]))
    fig.add_trace(go.Scatter(
        x=[p.param_count for p in front], y=[p.value for p in front], mode="lines+markers", line_shape="hv",
        name=f"Pareto front ({len(front)})", marker=dict(color=BEST_COLOR, size=10),
        line=dict(color=BEST_COLOR, width=2), hovertext=[f"trial #{p.number}" for p in front]))
    fig.update_layout(xaxis_title="parameters", yaxis_title=snapshot.config.study.metric)
    fig.update_xaxes(type="log")
    return fig


def pruning_figure(snapshot: ReportSnapshot) -> go.Figure:
    s = pruning_savings(snapshot.trials, snapshot.config.task.epochs)
    hours = s.seconds_trained is not None
    fig = make_subplots(rows=1, cols=2 if hours else 1,
                        subplot_titles=["epochs", "device hours (estimated)"] if hours else ["epochs"])
    labels = ["with pruning", "without pruning"]
    colors = [WITH_PRUNING_COLOR, WITHOUT_PRUNING_COLOR]
    fig.add_trace(go.Bar(x=labels, y=[s.epochs_trained, s.epochs_without_pruning], marker_color=colors,
                         text=[f"{s.epochs_trained:,}", f"{s.epochs_without_pruning:,}"], showlegend=False), 1, 1)
    if hours:
        values = [s.seconds_trained / 3600, s.seconds_without_pruning / 3600]
        fig.add_trace(go.Bar(x=labels, y=values, marker_color=colors, text=[f"{v:.3g}" for v in values],
                             showlegend=False), 1, 2)
    return fig


def family_tree_figure(snapshot: ReportSnapshot) -> go.Figure:
    segments = family_tree(snapshot.trials)
    values = [s.value for s in segments if s.value is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    fig = go.Figure()
    for s in segments:
        share = 0.5 if high == low or s.value is None else (s.value - low) / (high - low)
        color = px.colors.sample_colorscale("Viridis", [share])[0]
        fig.add_trace(go.Scatter(x=[s.start, s.end], y=[s.member, s.member], mode="lines+markers",
                                 line=dict(color=color, width=4), showlegend=False,
                                 hovertext=f"trial {s.trial}: epochs {s.start + 1}-{s.end}, value {s.value:.4f}",
                                 hoverinfo="text"))
        if s.exploited_member is not None:
            fig.add_annotation(x=s.start, y=s.member, ax=s.start, ay=s.exploited_member, xref="x", yref="y",
                               axref="x", ayref="y", showarrow=True, arrowhead=2, arrowcolor="#888")
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(title="member", dtick=1)
    return fig


def plotly_figure(key: str, snapshot: ReportSnapshot, importances: dict[str, float] | None) -> go.Figure:
    study, params = snapshot.study, snapshot.searched_params
    if key == "history":
        fig = ov.plot_optimization_history(study)
    elif key == "learning_curves":
        fig = learning_curves_figure(snapshot)
    elif key == "importances":
        fig = ov.plot_param_importances(study, evaluator=KnownImportances(importances or {}))
    elif key == "parallel_coordinates":
        fig = ov.plot_parallel_coordinate(study, params=params)
    elif key == "slices":
        fig = ov.plot_slice(study, params=params)
    elif key == "size":
        fig = size_figure(snapshot)
    elif key == "pruning":
        fig = pruning_figure(snapshot)
    elif key == "family_tree":
        fig = family_tree_figure(snapshot)
    else:
        raise ValueError(f"unknown plot {key!r}")
    fig.update_layout(title=None, template="plotly_white", height=HEIGHT, margin=dict(l=60, r=20, t=40, b=50))
    return fig
