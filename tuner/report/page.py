"""The report as one self-contained HTML page: plotly.js embedded once from the installed package, no CDN,
no external references, so it opens from disk on a machine without internet."""

from __future__ import annotations

import datetime
import html
from typing import Any

import plotly.graph_objects as go
import plotly.offline

from tuner.report.data import (Savings, ReportSnapshot, device_seconds, failures, pruning_savings,
                               study_seconds)
from tuner.report.plan import Plot
from tuner.spec.toml_dump import dump_toml

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1150px; padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; margin-top: 2em; } h3 { margin-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; } td, th { padding: .2em .8em; text-align: left;
  border-bottom: 1px solid #eee; vertical-align: top; } th { background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.banner { background: #fff3cd; border: 1px solid #e0c36a; padding: .6em 1em; border-radius: 4px; }
.note { color: #666; font-style: italic; } .caption { color: #555; margin-top: 0; }
.big { font-size: 1.3em; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
nav a { margin-right: 1em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else _e(v)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return str(datetime.timedelta(seconds=round(seconds)))


def _banner(snapshot: ReportSnapshot) -> str:
    c = snapshot.counts
    spent = html.escape(", ".join(text for _, text in snapshot.budget()))  # e.g. 12/20 trials, 40/100 epochs
    # a stop condition (target, patience, max_hours) ends a study before its budget is spent: say which
    stopped = f' <span id="stopped">Stopped: {html.escape(snapshot.stopped)}.</span>' if snapshot.stopped else ""
    if snapshot.unfinished:
        head = ("This study is still running" if c["RUNNING"] or c["WAITING"] else
                "This study is not finished (no trial is running or waiting right now)")
        return (f'<p class="banner" id="running"><b>{head}</b>: budget spent {spent} ({len(snapshot.finished)} '
                f'trials finished), {c["RUNNING"]} running, {c["WAITING"]} waiting.{stopped} This report is a '
                f'snapshot taken {snapshot.taken_at:%Y-%m-%d %H:%M} UTC.</p>')
    return f'<p id="finished">Finished: {len(snapshot.finished)} trials (budget spent {spent}).{stopped}</p>'


def _summary(snapshot: ReportSnapshot) -> str:
    counts = snapshot.counts
    parts = ["<h3>Trials by state</h3>",
             _table(list(counts) + ["retries"], [[str(v) for v in counts.values()] + [str(snapshot.retries)]])]
    best = snapshot.best
    parts.append("<h3>Best trial</h3>")
    if best is None:
        parts.append('<p class="note" id="no-complete">No COMPLETE trial yet: there is no best value, and the plots '
                     'that need finished results are left out below.</p>')
    else:
        fixed = snapshot.config.fixed()
        rows = [[_e(k), _number(v)] for k, v in best.params.items()]
        rows += [[f"{_e(k)} (fixed)", _number(v)] for k, v in fixed.items()]
        for attr in ("param_count", "trainable_params", "epochs_run"):
            if best.user_attrs.get(attr) is not None:
                rows.append([attr, f"{best.user_attrs[attr]:,}"])
        parts.append(f'<p class="big">trial #{best.number}: {_e(snapshot.config.study.metric)} = '
                     f'<b id="best-value">{best.value:.4f}</b></p>' + _table(["param", "value"], rows))
    tested = [t for t in snapshot.complete if t.user_attrs.get("test_accuracy") is not None]
    if tested:
        parts.append(_test_accuracy(snapshot, tested))
    devices = device_seconds(snapshot.trials)
    parts.append("<h3>Time</h3>")
    parts.append(f"<p>Wall time of the study (first trial's start to last trial's end): "
                 f"{_duration(study_seconds(snapshot))}</p>")
    parts.append(_table(["device", "trials", "device-hours (sum of trial wall times)"],
                        [[_e(d), str(n), f"{s / 3600:.3f}"] for d, (n, s) in devices.items()])
                 if devices else '<p class="note">No trial has recorded its wall time yet.</p>')
    parts.append(_failures(snapshot))
    parts.append("<h3>Config</h3><pre id=\"config\">" + _e(dump_toml(snapshot.config.to_dict())) + "</pre>")
    return "".join(parts)


def _test_accuracy(snapshot: ReportSnapshot, tested: list) -> str:
    sign = -1 if snapshot.maximize else 1
    top = sorted(tested, key=lambda t: (sign * t.value, t.number))[:10]
    rows = [[f"#{t.number}", f"{t.value:.4f}", f"{t.user_attrs['test_accuracy']:.4f}"] for t in top]
    return ('<h3 id="test-accuracy">Test accuracy</h3><p>Measured on the held-out test split for '
            f'{len(tested)} COMPLETE trials; the best {len(top)} by {_e(snapshot.config.study.metric)}:</p>'
            + _table(["trial", snapshot.config.study.metric, "test accuracy"], rows))


def _failures(snapshot: ReportSnapshot) -> str:
    by_reason = failures(snapshot.trials)
    head = (f'<h3 id="failures">Retries and failures</h3><p>{snapshot.counts["FAIL"]} FAIL trials, '
            f'{snapshot.retries} retries (a retry is a new trial with the same params, resumed from the '
            'checkpoint of the trial it retries).</p>')
    if not by_reason:
        return head
    rows = []
    for reason, numbers in by_reason.items():
        shown = ", ".join(f"#{n}" for n in numbers[:20]) + (" ..." if len(numbers) > 20 else "")
        rows.append([_e(reason), str(len(numbers)), shown])
    return head + _table(["reason", "trials", "trial numbers"], rows)


def _savings(s: Savings) -> str:
    if s.trials == 0:
        return '<p class="note">No finished trial yet: nothing to compare.</p>'
    share = s.epochs_saved / s.epochs_without_pruning if s.epochs_without_pruning else 0.0
    text = (f'<p class="big">Pruning saved <b id="epochs-saved">{s.epochs_saved}</b> of '
            f'<span id="epochs-without-pruning">{s.epochs_without_pruning}</span> epochs ({share:.0%}): the '
            f'{s.trials} finished trials trained <span id="epochs-trained">{s.epochs_trained}</span> epochs, '
            f'{s.epochs_per_trial} each without pruning.</p>')
    if s.seconds_saved is not None:
        text += (f'<p class="big">Device time saved (estimated): <b id="hours-saved">'
                 f'{s.seconds_saved / 3600:.3f}</b> of {s.seconds_without_pruning / 3600:.3f} hours.</p>')
    return text + ('<p class="caption">Each finished (COMPLETE or PRUNED) trial counts the epochs of its learning '
                   "curve; a retry's curve includes the epochs it resumed from its failed original, so each retry "
                   "chain counts once. Failed attempts and running trials are left out on both sides. Device time "
                   "is each trial's wall time per epoch it trained itself, times the epochs.</p>")


def _plot_section(plot: Plot, fig: go.Figure | None, extra: str = "") -> str:
    head = f'<section id="plot-{plot.key}"><h3>{_e(plot.title)}</h3><p class="caption">{_e(plot.caption)}</p>'
    if fig is None:
        return head + extra + f'<p class="note">Not drawn: {_e(plot.missing)}.</p></section>'
    body = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{plot.key}",
                       config={"displaylogo": False, "responsive": True})
    return head + extra + body + "</section>"


def render_page(snapshot: ReportSnapshot, plots: list[tuple[Plot, go.Figure | None]]) -> str:
    """The whole page; plots are (plot, its figure or None when it is missing)."""
    title = f"tuner report: {snapshot.name}"
    savings = pruning_savings(snapshot.trials, snapshot.config.task.epochs)
    sections = "".join(_plot_section(p, f) for p, f in plots if p.key != "pruning")
    pruning = "".join(_plot_section(p, f, _savings(savings)) for p, f in plots if p.key == "pruning")
    # plotly.js is ~4.8 MB of minified JavaScript; it goes in once, every figure div uses it
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style>\n<script>{plotly.offline.get_plotlyjs()}</script>\n</head><body>"
        f"<h1>{_e(title)}</h1>{_banner(snapshot)}"
        '<nav><a href="#summary">Summary</a><a href="#plots">Plots</a><a href="#pruning">What pruning saved</a>'
        "</nav>"
        f'<section id="summary"><h2>Summary</h2>{_summary(snapshot)}</section>'
        f'<section id="plots"><h2>Plots</h2>{sections}</section>'
        f'<section id="pruning"><h2>What pruning saved</h2>{pruning}</section>'
        f'<p class="note">Generated by tuner on {snapshot.taken_at:%Y-%m-%d %H:%M} UTC.</p></body></html>\n'
    )
