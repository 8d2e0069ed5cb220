"""Terminal views for the commands: `tuner run`'s live progress, the redraw loop of `status --watch`, the table of
`status`, and the best trial or Pareto front of `best` and `run`.

Rendering only: the numbers come from the library (tuner.fleet.progress, tuner.fleet.study), and the commands
own the consoles (tuner/cli/common.py), handed in. Kept out of the command modules so that each command stays a
few lines.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tuner.store.place import human_bytes
from tuner.fleet.progress import ProgressSnapshot
from tuner.store.storage import is_connection_error
from tuner.fleet.study import BestTrial, StudyStatus
from tuner.spec.config import StudyConfig

BAR_WIDTH = 40  # characters of the study's budget bar
TRIAL_BAR_WIDTH = 20  # characters of each running trial's epoch bar
MAX_RUNNING_SHOWN = 16  # running trials listed one per line; more are summarised in one line


def format_duration(seconds: float | None) -> str:
    """1:05 for 65 s, 2:03:04 past an hour, ? when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_view(snap: ProgressSnapshot, note: str = "") -> RenderableType:
    """The study's budget bar, the split of finished trials, the best so far, time, and the running trials."""
    top = Table.grid(padding=(0, 1))
    top.add_row(Text(snap.study, style="bold"), ProgressBar(total=1000, completed=round(1000 * snap.spent),
                                                             width=BAR_WIDTH),
                Text(snap.budget))
    split = f"{snap.complete} complete, {snap.pruned} pruned, {snap.failed} failed"
    if snap.waiting:
        split += f", {snap.waiting} retries queued"
    best = "best: none yet" if snap.best_value is None else \
        f"best {snap.metric} {snap.best_value:.4f} (trial {snap.best_trial})"
    lines: list[RenderableType] = [top, Text(split), Text(best),
                                   Text(f"elapsed {format_duration(snap.elapsed_s)}, "
                                        + ("done" if snap.done else f"ETA {format_duration(snap.eta_s)}"))]
    if snap.running:
        running = Table.grid(padding=(0, 1))
        for t in snap.running[:MAX_RUNNING_SHOWN]:
            running.add_row(f"  trial {t.number}", ProgressBar(total=snap.epochs, completed=t.epoch,
                                                               width=TRIAL_BAR_WIDTH),
                            f"epoch {t.epoch}/{snap.epochs}")
        lines.append(Text(f"running {len(snap.running)}:"))
        lines.append(running)
        if len(snap.running) > MAX_RUNNING_SHOWN:
            lines.append(Text(f"  ... and {len(snap.running) - MAX_RUNNING_SHOWN} more"))
    if note:
        lines.append(Text(note, style="yellow"))
    return Group(*lines)


def status_table(statuses: Sequence[StudyStatus], caption: str = "") -> Table | Group:
    """`tuner status`: one row per study; a caption (with the time) when it is refreshed."""
    table = Table(caption=f"{datetime.now():%H:%M:%S}, {caption}" if caption else None)
    for col in ("study", "complete", "pruned", "running", "waiting", "failed", "retries", "best", "budget spent",
                "checkpoints"):
        table.add_column(col)
    for s in statuses:
        c = s.counts
        best = "-" if s.best_value is None else f"{s.best_value:.4f}"
        if s.front_size is not None:  # several objectives: no single best
            best = f"front of {s.front_size}"
        disk = "-" if s.checkpoint_bytes is None else human_bytes(s.checkpoint_bytes)  # "-": no folder on this host
        cells = [str(c.get(k, 0)) for k in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")]
        if "paused" in c:  # ASHA, PBT: PRUNED holds the paused trials, and the segments that others continued
            cells[1] += f" ({c['paused']} paused, {c['continued']} continued)"
        table.add_row(s.name, *cells, str(s.retries), best, s.budget, disk)
    # a warm start's trials finished elsewhere: in none of the columns or the budget, said below the table whole
    notes = [Text(f"{s.name}: imported {s.imported} (warm start from {', '.join(s.warm_start_from)})")
             for s in statuses if s.imported]
    return Group(table, *notes) if notes else table


def status_view(statuses: Sequence[StudyStatus], caption: str = "") -> Group:
    """The status table, then one whole line per study a stop condition ended (a reason too long for a cell)."""
    lines = [Text(f"study {s.name!r} stopped: {s.stopped}", style="bold") for s in statuses if s.stopped]
    return Group(status_table(statuses, caption), *lines)


def print_best(console: Console, b: BestTrial) -> None:
    """`tuner best` (and the end of `tuner run`): the best trial's value, params and sizes."""
    # the title as its own line: a table title wraps at the table's width, mid-sentence
    console.print(f"best trial of {b.study!r}: #{b.number}, value {b.value:.4f}", markup=False, highlight=False,
                  soft_wrap=True)
    table = Table()
    table.add_column("param")
    table.add_column("value")
    for k, v in b.params.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    for k, v in b.fixed.items():
        table.add_row(f"{k} (fixed)", str(v))
    table.add_row("param_count", f"{b.param_count:,}" if b.param_count is not None else "?")
    if b.nonzero_params is not None and b.nonzero_params != b.param_count:  # its weights were pruned
        table.add_row("nonzero_params", f"{b.nonzero_params:,}")
    table.add_row("test_accuracy", f"{b.test_accuracy:.4f}" if b.test_accuracy is not None
                  else "not measured (tuner evaluate)")
    console.print(table)
    if b.schedule:  # PBT: the params changed along the way; the table above holds the last segment's
        steps = Table(title="its hyperparameter schedule (PBT)")
        for col in ("epochs", "member", "trial", "params"):
            steps.add_column(col)
        for s in b.schedule:
            steps.add_row(f"{s['from_epoch']}-{s['to_epoch']}", str(s["member"]), str(s["trial"]),
                          " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in s["params"].items()))
        console.print(steps)


def print_front(console: Console, config: StudyConfig, front: Sequence[BestTrial]) -> None:
    """A multi-objective study's best trials: the Pareto front, one row per trial."""
    objectives = config.study.objectives
    directions = ", ".join(f"{o} ({d})" for o, d in zip(objectives, config.study.directions))
    console.print(f"Pareto front of {config.study.name!r}: {len(front)} trials no other trial beats on every "
                  f"objective; {directions}", markup=False, highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("trial")
    for name in objectives:
        table.add_column(name)
    names = list(front[0].params)
    for name in names:
        table.add_column(name)
    for t in front:
        cells = [f"{v:,.0f}" if o in ("param_count",) else f"{v:.4f}" for o, v in zip(objectives, t.values)]
        params = [f"{t.params[n]:.4g}" if isinstance(t.params.get(n), float) else str(t.params.get(n, "-"))
                  for n in names]
        table.add_row(f"#{t.number}", *cells, *params)
    console.print(table)


def tolerant(render: Callable[[], RenderableType],
             on_outage: Callable[[str], RenderableType]) -> Callable[[], RenderableType]:
    """render(), or on_outage(note) while the database is unreachable: a watcher outlives a DB restart,
    like the workers it watches."""

    def wrapped() -> RenderableType:
        try:
            return render()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            return on_outage(f"{time.strftime('%H:%M:%S')} database unreachable; retrying")

    return wrapped


def run_log_path(study: str) -> Path:
    """Where `tuner run` sends its workers' log while the live view owns the terminal (working directory)."""
    return Path(f"tuner-run-{re.sub(r'[^A-Za-z0-9._-]+', '_', study)}.log")


def print_tail(console: Console, path: Path, lines: int = 20) -> None:
    """The end of a log file, where a failing worker's one-line reason is."""
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    console.print(f"last {len(tail)} lines of {path}:", markup=False)
    for line in tail:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def redraw(console: Console, render: Callable[[], RenderableType], interval: float,
           until: Callable[[], bool] = lambda: False) -> None:
    """Show render() every `interval` seconds until until() is true; Ctrl-C raises KeyboardInterrupt.

    On a terminal the view is redrawn in place (rich.live). Elsewhere (a pipe, a file, TERM=dumb) each view
    is printed after the previous one, so a log shows every refresh rather than control sequences.
    """
    # Ctrl-C only sets a flag while we poll: raised where it lands, inside a query, psycopg2 turns it into
    # QueryCanceledError (an OperationalError), which tolerant() would take for a database outage and swallow.
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    live = Live(console=console, auto_refresh=False) if console.is_interactive else None
    if live is not None:
        live.start()
    try:
        while not interrupted.is_set():
            done = until()  # checked before drawing, so that the last view shows the end state
            view = render()
            if live is not None:
                live.update(view, refresh=True)
            else:
                console.print(view)
            if done:
                return
            interrupted.wait(interval)
        raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, previous)
        if live is not None:
            live.stop()  # leaves the last view on screen
