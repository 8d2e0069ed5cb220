"""The combination matrix: study files that combine every pair of values of every two dimensions below (a
greedy all-pairs covering, generated here, seeded), each run through the whole life a user gives a study:

    launch-study -> run (2 trials or so, 2 epochs, tiny data) -> status (table, JSON) -> best (table, JSON)
    -> report (HTML; PNG in some rows) -> export + predict() -> evaluate -> enqueue -> extend -> enqueue
    -> status --watch for a moment -> delete

Every command runs in this process (typer's CliRunner on tuner.cli.app.app) but `status --watch` (a real
process, stopped with SIGINT) and, in a few rows, `tuner run --workers 1 --cpu` (real worker processes); the
other rows train with tuner's real Worker in this process (tests/inprocess.py does the same). No command may
end in a traceback, and every number shown must agree between `best`, `status`, `report` and plain SQL (the
README's own best-trial query, and counts on Optuna's schema).

Storage is SQLite or PostgreSQL; a few PostgreSQL rows (ids ending +pgbouncer) reach it through a real
PgBouncer in transaction-pooling mode, as teams run it.

Combinations tuner refuses are not generated: REFUSED lists each refused combination with the reason, and
test_a_refused_combination_is_one_line_at_launch checks that launch-study refuses it in one line, storing
nothing. `python -m pytest tests/test_matrix.py -v` (or `-k matrix`) lists the rows by their ids.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy

from conftest import REPO, create_database, pgbouncer

EXAMPLE = REPO / "examples" / "own_model"

# The dimensions, each value a readable id part.
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "sampler": ("tpe", "random", "gp", "cmaes", "qmc", "nsga2"),
    "pruner": ("median", "percentile", "successive_halving", "hyperband", "wilcoxon", "patient", "threshold",
               "none", "asha", "pbt"),
    # "two": two budgets together; which two goes round the three pairs by row
    "budget": ("n_trials", "max_epochs", "max_gpu_hours", "two"),
    "objectives": ("1obj", "2obj"),
    "max_params": ("maxp", "nomaxp"),
    "enqueue": ("enq", "noenq"),
    "knob": ("batch_size", "label_smoothing", "warmup_epochs", "prune_amount", "distill"),
    # backbone: mobilenet_v3_small, weights "none", head-only training (resnet18 at 8 px took 3x as long: its
    # 11M parameters are written to a checkpoint every epoch); own: examples/own_model's MLP, with its own loader
    # on the digits and tuner's loaders for the other data
    "model": ("cnn", "backbone", "own"),
    "data": ("digits", "synthetic", "folder_split", "folder_flat"),
    "storage": ("sqlite", "postgres"),
}
SEED = 20240601
CANDIDATES = 40  # rows tried per chosen row: the one covering the most uncovered pairs wins


@dataclass(frozen=True)
class Refusal:
    """A combination launch-study refuses: a study-file change from a valid base, and the one line's gist."""

    id: str
    why: str  # the reason, as the spec
    change: Callable[[str], str]  # base study file -> refused study file
    message: str  # in the one error line
    names_file: bool = True  # the host's checks of what the file names (plug-ins, folders) name field and value


def _set(section: str, line: str) -> Callable[[str], str]:
    """Add `line` at the end of `[section]` (before the next section)."""
    def change(text: str) -> str:
        head = f"[{section}]\n"
        if head not in text:
            return text + f"\n{head}{line}\n"
        before, after = text.split(head, 1)
        return before + head + line + "\n" + after
    return change


def _sub(old: str, new: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        assert old in text, old
        return text.replace(old, new)
    return change


def _chain(*changes: Callable[[str], str]) -> Callable[[str], str]:
    def change(text: str) -> str:
        for c in changes:
            text = c(text)
        return text
    return change


TWO_OBJECTIVES = _set("study", 'objectives = ["val_accuracy", "param_count"]')
# Which combinations are refused, and why: the generator never makes them (PAIR_RULES), and each is checked here
# against launch-study as one line with nothing stored.
REFUSED: tuple[Refusal, ...] = (
    Refusal("cmaes-with-two-objectives", "Optuna's CmaEsSampler is single-objective",
            _chain(TWO_OBJECTIVES, _set("study", 'sampler = "cmaes"'), _sub('type = "median"', 'type = "none"')),
            "study.sampler is single-objective only"),
    *(Refusal(f"{kind}-pruner-with-two-objectives", "Optuna prunes single-objective trials only (ASHA and PBT "
              "rank trials by one value too)",
              _chain(TWO_OBJECTIVES, _sub('type = "median"', f'type = "{kind}"\n{extra}')),
              "pruner cannot be used with several objectives")
      for kind, extra in (("median", ""), ("percentile", "percentile = 50.0"), ("successive_halving", ""),
                          ("hyperband", ""), ("wilcoxon", ""), ("patient", "patience = 1"),
                          ("threshold", "lower = 0.0"), ("asha", ""), ("pbt", "population = 2"))),
    Refusal("pbt-with-n_trials-not-the-population", "PBT's configurations are its population: n_trials may only "
            "repeat it", _sub('type = "median"', 'type = "pbt"\npopulation = 3'),
            "study.n_trials must equal pruner.population (3) with pbt"),
    Refusal("pbt-with-more-enqueued-configs-than-members", "queued configs start the first members",
            _chain(_sub("n_trials = 2\n", ""), _sub('type = "median"', 'type = "pbt"\npopulation = 2'),
                   lambda text: text + "".join(f"\n[[enqueue]]\nlr = 0.0{i}\n" for i in (1, 2, 3))),
            "enqueue holds more configs than pruner.population (2)"),
    Refusal("pbt-perturbing-the-architecture", "width/depth go with the weights a member exploits",
            _sub('type = "median"', 'type = "pbt"\npopulation = 2\nperturb = ["width"]'), "pruner.perturb"),
    Refusal("pbt-interval-not-below-epochs", "members are compared every interval epochs, within the training",
            _sub('type = "median"', 'type = "pbt"\npopulation = 2\ninterval = 2'), "pruner.interval must be below"),
    Refusal("asha-first-rung-not-below-epochs", "ASHA compares trials at a rung below task.epochs",
            _sub('type = "median"', 'type = "asha"\nmin_resource = 2'), "pruner.min_resource must be below"),
    Refusal("cmaes-with-a-categorical", "CMA-ES samples numbers only (Optuna would draw choices at random)",
            _chain(_set("study", 'sampler = "cmaes"'), _set("space", "batch_size = { choices = [32, 64] }")),
            "study.sampler cannot search categorical parameters"),
    Refusal("distillation-without-a-teacher", "distill_alpha > 0 needs task.teacher",
            _set("space", "distill_alpha = { low = 0.0, high = 0.5 }"), "space.distill_alpha needs a teacher"),
    Refusal("warmup-not-below-epochs", "warm-up epochs must leave epochs to anneal",
            _set("space", "warmup_epochs = { low = 0, high = 2 }"), "space.warmup_epochs must be < task.epochs"),
    Refusal("more-enqueued-trials-than-n_trials", "each queued trial takes a slot of the trial budget",
            lambda text: text + "\n[[enqueue]]\nlr = 0.01\n\n[[enqueue]]\nlr = 0.02\n\n[[enqueue]]\nlr = 0.03\n",
            "enqueue has more trials than study.n_trials"),
    Refusal("enqueue-outside-the-space", "a queued trial's params must lie in [space]",
            lambda text: text + "\n[[enqueue]]\nlr = 0.5\n", "enqueue[0].lr must be within space.lr"),
    Refusal("weights-on-the-cnn", "tuner's cnn has no pretrained weights",
            _set("task", 'weights = "imagenet"'), "task.weights needs a torchvision backbone"),
    Refusal("freeze-on-the-cnn", "the cnn has no backbone stages to freeze",
            _set("space", 'freeze = "all"'), "space.freeze applies to torchvision backbones"),
    Refusal("imagefolder-without-data_dir", "an image folder needs its folder",
            _sub('dataset = "digits"', 'dataset = "imagefolder"'), "task.data_dir is required"),
    Refusal("own-model-without-its-callable", "a module:callable must name a callable of the module",
            _sub('model = "cnn"', 'model = "mlp_model:biuld"'), "task.model: module 'mlp_model' has no 'biuld'",
            names_file=False),
    Refusal("max_params-below-zero", "a parameter budget is a count", _set("study", "max_params = -1"),
            "study.max_params"),
)
REFUSALS = {r.id: r for r in REFUSED}

# What the commands of a valid study refuse, each in one line that says what to do instead, at points of its life
# the matrix reaches: command situation -> (the line's gist, why).
COMMAND_REFUSALS: dict[str, tuple[str, str]] = {
    "report, two objectives": ("has several objectives", "the report covers single-objective studies; `tuner best` "
                               "prints the front and the dashboard plots it"),
    "export without --trial, two objectives": ("several objectives", "no single best: --trial picks one of the "
                                               "front"),
    "enqueue, n_trials spent": ("tuner extend", "a queued trial takes a slot of the trial budget"),
    "enqueue, PBT population started": ("started every member of its population", "a queued config only starts "
                                        "a member, and extend refuses PBT"),
    "enqueue, compute budget spent": ("is complete", "nothing would run it"),
    "extend, PBT": ("population-based training", "its configurations are its population"),
    "extend, compute budget spent": ("is complete", "more trials would not run: max_epochs/max_gpu_hours are fixed "
                                     "at launch"),
}

# Pairs of values the generator leaves out, each a refusal above (a row is a dict of dimension -> value).
PAIR_RULES: tuple[tuple[Callable[[dict[str, str]], bool], str], ...] = (
    (lambda r: r.get("objectives") == "2obj" and r.get("sampler") == "cmaes", "cmaes-with-two-objectives"),
    (lambda r: r.get("objectives") == "2obj" and r.get("pruner", "none") != "none",
     "median-pruner-with-two-objectives"),
)


def allowed(row: dict[str, str]) -> bool:
    return not any(rule(row) for rule, _ in PAIR_RULES)


def _pairs(row: dict[str, str]) -> set[tuple[str, str, str, str]]:
    names = [n for n in DIMENSIONS if n in row]
    return {(a, row[a], b, row[b]) for a, b in itertools.combinations(names, 2)}


def all_pairs(dimensions: dict[str, tuple[str, ...]], seed: int = SEED) -> list[dict[str, str]]:
    """Rows in which every allowed pair of values of every two dimensions appears at least once: greedy (AETG):
    each row starts from an uncovered pair and takes, dimension by dimension in a shuffled order, the value that
    covers most uncovered pairs with the values chosen so far; of CANDIDATES such rows the best is kept."""
    rng = random.Random(seed)
    names = list(dimensions)
    uncovered = {(a, va, b, vb) for a, b in itertools.combinations(names, 2)
                 for va in dimensions[a] for vb in dimensions[b] if allowed({a: va, b: vb})}
    rows: list[dict[str, str]] = []
    while uncovered:
        pool = sorted(uncovered)
        best: tuple[dict[str, str], set] | None = None
        for _ in range(CANDIDATES):
            a, va, b, vb = rng.choice(pool)
            row = {a: va, b: vb}
            rest = [n for n in names if n not in row]
            rng.shuffle(rest)
            for n in rest:
                options = [v for v in dimensions[n] if allowed({**row, n: v})]
                gain = {v: len(_pairs({**row, n: v}) & uncovered) for v in options}
                top = max(gain.values())
                row[n] = rng.choice([v for v in options if gain[v] == top])
            covered = _pairs(row) & uncovered
            if best is None or len(covered) > len(best[1]):
                best = (row, covered)
        rows.append({n: best[0][n] for n in names})
        uncovered -= best[1]
    return rows


ROWS = all_pairs(DIMENSIONS)
MAX_PARAMS = 5_000_000  # above every model of the rows' spaces: the constraint is set and met
TWO_BUDGETS = ("n_trials+max_epochs", "n_trials+max_gpu_hours", "max_epochs+max_gpu_hours")


@dataclass(frozen=True)
class Row:
    index: int
    dims: dict[str, str]

    def __getattr__(self, name: str) -> str:
        if name in DIMENSIONS:
            return self.dims[name]
        raise AttributeError(name)

    @property
    def id(self) -> str:
        return f"{self.index:02d}-" + "-".join(self.dims.values()) + ("+pgbouncer" if self.pooled else "")

    @property
    def pooled(self) -> bool:  # a few PostgreSQL rows reach it through a real PgBouncer (transaction pooling)
        return self.storage == "postgres" and self.index % 6 == 1

    @property
    def name(self) -> str:
        return f"m{self.index:02d}"

    @property
    def budgets(self) -> tuple[str, ...]:
        if self.budget == "two":
            return tuple(TWO_BUDGETS[self.index % len(TWO_BUDGETS)].split("+"))
        return (self.budget,)

    @property
    def multi(self) -> bool:
        return self.objectives == "2obj"

    @property
    def png(self) -> bool:  # PNGs (matplotlib) in some rows
        return self.index % 5 == 0

    @property
    def tuner_run(self) -> bool:  # `tuner run --workers 1 --cpu` (real worker processes) in some rows
        return self.index % 10 == 3


MATRIX = [Row(i, dims) for i, dims in enumerate(ROWS)]


def test_the_matrix_covers_every_allowed_pair():
    wanted = {(a, va, b, vb) for a, b in itertools.combinations(DIMENSIONS, 2)
              for va in DIMENSIONS[a] for vb in DIMENSIONS[b] if allowed({a: va, b: vb})}
    covered = set().union(*(_pairs(r.dims) for r in MATRIX))
    assert wanted <= covered
    assert all(allowed(r.dims) for r in MATRIX)
    assert all(rule_id in REFUSALS for _, rule_id in PAIR_RULES)
    assert all_pairs(DIMENSIONS) == ROWS  # seeded: the same rows every run
    assert len({r.id for r in MATRIX}) == len(MATRIX)


# ---------------------------------------------------------------------------------------------------------------
# Data, teachers, databases: made once per test process (module scope), shared by the rows it runs.

CLASSES = ("ant", "bee", "cat")


def _write_images(folder: Path, per_class: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (10, 10, 3))
            pixels[..., c] += 150  # the class is a colour: learnable in an epoch or two
            Image.fromarray(pixels.astype(np.uint8)).save(folder / name / f"{i}.png")


@pytest.fixture(scope="module")
def place(tmp_path_factory, pg_server):
    """Folders, databases and teachers of this test process."""
    root = tmp_path_factory.mktemp("matrix")
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        _write_images(root / "folder_split" / split, n, seed=len(split))
    _write_images(root / "folder_flat", 24, seed=7)
    return {"root": root, "sqlite": f"sqlite:///{root / 'matrix.db'}", "postgres": create_database(*pg_server),
            "teachers": {}}


def task_lines(row: Row, root: Path) -> str:
    """[task] for the row's model and data (2 epochs, tiny data)."""
    model = {"cnn": 'model = "cnn"', "backbone": 'model = "mobilenet_v3_small"\nweights = "none"',
             "own": 'model = "mlp_model:build"'}[row.model]
    if row.data == "digits":  # 10% of the digits train (a test split of 60%)
        dataset = "digits_data:load" if row.model == "own" else "digits"
        data = f'dataset = "{dataset}"\nval_fraction = 0.3\ntest_fraction = 0.6'
    elif row.data == "synthetic":
        data = 'dataset = "synthetic"\nnum_samples = 150\nnum_classes = 3\nimage_size = 8'
    else:
        data = f'dataset = "imagefolder"\ndata_dir = "{root / row.data}"\nimage_size = 8'
    return f"{data}\n{model}\nepochs = {epochs(row)}\nbatch_size = 64"


def data_kind(row: Row) -> str:
    """Rows whose data have the same classes, image size and channels share a teacher."""
    return {"digits": "digits", "synthetic": "synthetic"}.get(row.data, "folder")


def space_lines(row: Row) -> str:
    lines = ["lr = { low = 1e-3, high = 5e-2, log = true }"]
    if row.model == "own":  # the MLP's own parameters
        lines += ["hidden = { low = 8, high = 32 }", "layers = { low = 1, high = 2 }"]
    elif row.model == "backbone":  # the head: depth hidden layers of width units; the body does not train
        lines += ["width = { low = 8, high = 16 }", "depth = { low = 0, high = 1 }", 'freeze = "all"']
    else:
        lines += ["width = { low = 4, high = 8 }", "depth = { low = 1, high = 2 }"]
    lines.append("dropout = { low = 0.0, high = 0.3 }")
    lines.append({"batch_size": "batch_size = { low = 32, high = 64 }",
                  "label_smoothing": "label_smoothing = { low = 0.0, high = 0.2 }",
                  "warmup_epochs": "warmup_epochs = { low = 0, high = 1 }",
                  "prune_amount": "prune_amount = { low = 0.0, high = 0.5 }",
                  "distill": "distill_alpha = { low = 0.0, high = 0.5 }"}[row.knob])
    return "\n".join(lines)


PRUNER_LINES = {
    "median": None,  # the default: no [pruner] section
    "percentile": 'type = "percentile"\npercentile = 50.0\nn_startup_trials = 1\nn_warmup_steps = 1',
    "successive_halving": 'type = "successive_halving"\nmin_resource = 1\nreduction_factor = 2',
    "hyperband": 'type = "hyperband"\nmin_resource = 1\nreduction_factor = 2',
    "wilcoxon": 'type = "wilcoxon"\np_threshold = 0.1',
    "patient": 'type = "patient"\npatience = 1',
    "threshold": 'type = "threshold"\nlower = 0.0',
    "none": 'type = "none"',
    "asha": 'type = "asha"\nmin_resource = 1\nreduction_factor = 2',
    "pbt": 'type = "pbt"\npopulation = 2\ninterval = 1',
}


def epochs(row: Row) -> int:
    """2, but 1 for a row whose hours budget alone ends it (see budget_values) where 1 can train."""
    hours_alone = row.budgets == ("max_gpu_hours",) and row.pruner != "pbt"
    return 1 if hours_alone and row.pruner != "asha" and row.knob != "warmup_epochs" else 2


def budget_values(row: Row) -> dict[str, float]:
    """2 trials of 2 epochs or so. PBT trains its population to the end: its epoch budget is population x
    epochs, and an hours budget beside it is ample. An hours budget alone is measured, not claimed, so how many
    epochs fit is the machine's: a trial of 1 epoch always finishes, and the tiny budget ends the study after
    it; where a row needs 2 epochs (warm-up, ASHA's rungs) the budget leaves the first trial room to finish."""
    alone = len(row.budgets) == 1
    hours = (0.5 if not alone or row.pruner == "pbt" else 0.0001 if epochs(row) == 1
             else 0.002 if row.model == "backbone" else 0.001)
    values = {"n_trials": 2, "max_epochs": 4 if row.pruner == "pbt" else 3, "max_gpu_hours": hours}
    return {b: values[b] for b in row.budgets}


def budget_lines(row: Row) -> str:
    return "\n".join(f"{key} = {value}" for key, value in budget_values(row).items())


def study_text(row: Row, root: Path, teacher: Path | None) -> str:
    study = [f'name = "{row.name}"', f'sampler = "{row.sampler}"', f"seed = {row.index}", budget_lines(row)]
    if row.multi:
        study.append('objectives = ["val_accuracy", "param_count"]')
    if row.max_params == "maxp":  # above every model of the space: the constraint is set and met
        study.append(f"max_params = {MAX_PARAMS}")
    text = "[study]\n" + "\n".join(study) + "\n\n"
    if PRUNER_LINES[row.pruner] is not None:
        text += f"[pruner]\n{PRUNER_LINES[row.pruner]}\n\n"
    text += "[task]\n" + task_lines(row, root) + (f'\nteacher = "{teacher}"' if teacher else "") + "\n\n"
    text += "[space]\n" + space_lines(row) + "\n"
    if row.enqueue == "enq":
        own = {"own": "hidden = 16", "backbone": "width = 12", "cnn": "width = 6"}[row.model]
        text += f"\n[[enqueue]]\nlr = 0.01\n{own}\n"
    return text


# ---------------------------------------------------------------------------------------------------------------
# Running commands


@dataclass
class Shown:
    code: int
    stdout: str
    error: str  # the one line main() prints for a TunerError ("" if none)


def cli(*args: str) -> Shown:
    """The command as `tuner` runs it, in this process: main()'s handling of a TunerError (one line, exit 1) and
    of anything else (a traceback: a failure here)."""
    from typer.testing import CliRunner

    from tuner.cli.app import app
    from tuner.errors import TunerError

    result = CliRunner().invoke(app, list(args), prog_name="tuner")
    exc = result.exception
    if isinstance(exc, TunerError):
        assert "\n" not in str(exc), f"tuner {' '.join(args)}: an error of more than one line:\n{exc}"
        return Shown(1, result.stdout, f"error: {exc}")
    if exc is not None and not isinstance(exc, SystemExit):
        import traceback

        raise AssertionError(f"tuner {' '.join(args)} ended in a traceback:\n"
                             + "".join(traceback.format_exception(exc)))
    return Shown(result.exit_code, result.stdout, "")


def ok(*args: str) -> str:
    shown = cli(*args)
    assert shown.code == 0, f"tuner {' '.join(args)}: exit {shown.code} {shown.error}\n{shown.stdout}"
    return shown.stdout


def refused(*args: str, gist: str) -> str:
    shown = cli(*args)
    assert shown.code == 1 and shown.error, f"tuner {' '.join(args)} was not refused:\n{shown.stdout}"
    assert gist in shown.error, shown.error
    return shown.error


def serve(url: str, name: str) -> None:
    """tuner's real Worker in this process until the study's budget is spent (tests/inprocess.py)."""
    import torch

    from tuner.engine.objective import make_objective
    from tuner.fleet.worker import Worker

    torch.set_num_threads(1)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}  # the Worker installs its own
    try:
        code = Worker(url, lambda c: make_objective(c, torch.device("cpu"))).run(name)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert code == 0


def watch_for_a_moment(name: str, env: dict[str, str], timeout: float = 120) -> str:
    """`tuner status --watch` in a real process: once it has drawn the study, Ctrl-C ends it with exit 0."""
    import queue
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "tuner", "status", "--study", name, "--watch", "--interval", "0.2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen, deadline = "", time.monotonic() + timeout
    try:
        while name not in seen:  # blocks until it has drawn (or has exited, or the deadline)
            assert proc.poll() is None or not lines.empty(), proc.stderr.read()
            with contextlib.suppress(queue.Empty):
                seen += lines.get(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            assert time.monotonic() < deadline, f"status --watch drew nothing in {timeout} s"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return seen


# ---------------------------------------------------------------------------------------------------------------
# Plain SQL on Optuna's schema


def readme_sql(url: str) -> str:
    marker = "sql:best-sqlite" if url.startswith("sqlite") else "sql:best"
    readme = (REPO / "README.md").read_text()
    block = re.search(rf"<!-- {marker} -->\n```sql\n(.*?)```\n<!-- /{marker} -->", readme, re.S)
    assert block, marker
    return block.group(1)


class Sql:
    def __init__(self, url: str):
        self.engine = sqlalchemy.create_engine(url)

    def rows(self, query: str, **params: Any) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sqlalchemy.text(query), params)]

    def close(self) -> None:
        self.engine.dispose()

    def study_id(self, name: str) -> int | None:
        found = self.rows("SELECT study_id FROM studies WHERE study_name = :n", n=name)
        return found[0][0] if found else None

    def states(self, sid: int) -> dict[str, int]:
        return dict(self.rows("SELECT state, count(*) FROM trials WHERE study_id = :s GROUP BY state", s=sid))

    def attr(self, sid: int, key: str) -> dict[int, Any]:
        """trial number -> the user attribute's value."""
        return {n: json.loads(v) for n, v in self.rows(
            "SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
            "WHERE t.study_id = :s AND a.key = :k", s=sid, k=key)}

    def values(self, sid: int) -> dict[int, list[float]]:
        """COMPLETE trial number -> its objective values."""
        out: dict[int, list[float]] = {}
        for n, objective, value in self.rows(
                "SELECT t.number, v.objective, v.value FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
                "WHERE t.study_id = :s AND t.state = 'COMPLETE' ORDER BY t.number, v.objective", s=sid):
            out.setdefault(n, []).append(value)
        return out

    def finished(self, sid: int) -> set[int]:
        """COMPLETE/PRUNED trial numbers."""
        return {n for (n,) in self.rows("SELECT number FROM trials WHERE study_id = :s AND state IN ('COMPLETE', "
                                        "'PRUNED')", s=sid)}

    def finished_steps(self, sid: int) -> dict[int, list[int]]:
        """COMPLETE/PRUNED trial number -> the epochs of its learning curve."""
        out: dict[int, list[int]] = {}
        for n, step in self.rows(
                "SELECT t.number, i.step FROM trials t JOIN trial_intermediate_values i ON i.trial_id = t.trial_id "
                "WHERE t.study_id = :s AND t.state IN ('COMPLETE', 'PRUNED')", s=sid):
            out.setdefault(n, []).append(int(step))
        return out

    def readme_best(self, url: str, name: str) -> tuple[int, float, dict[str, Any]]:
        rows = self.rows(readme_sql(url).replace("'digits-cnn'", ":name"), name=name)
        assert rows, "the README's query found no best trial"
        ((number, value),), params = {(r[0], r[1]) for r in rows}, {r[2]: r[3] for r in rows}
        return number, value, params


def pareto(values: dict[int, list[float]], directions: list[str]) -> list[int]:
    signs = [1 if d == "maximize" else -1 for d in directions]

    def beats(a: list[float], b: list[float]) -> bool:
        return all(s * x >= s * y for s, x, y in zip(signs, a, b)) and a != b

    return sorted(n for n, v in values.items() if not any(beats(w, v) for m, w in values.items() if m != n))


def same(a: Any, b: Any) -> bool:
    """A param as `tuner best` gives it and as the README's query does (PostgreSQL: text)."""
    try:
        return float(a) == pytest.approx(float(b), rel=1e-9)
    except (TypeError, ValueError):
        return str(a).strip('"') == str(b).strip('"')


# ---------------------------------------------------------------------------------------------------------------
# The matrix


@pytest.fixture
def row_env(place, tmp_path, monkeypatch):
    """This row's checkpoint folder and the own model's module on the path (in this process and its children)."""
    monkeypatch.setenv("TUNER_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.delenv("TUNER_STORAGE_FILE", raising=False)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def teacher_for(place: dict, row: Row) -> Path:
    """An exported cnn for the row's data (same classes, size and channels), trained once per test process."""
    kind = data_kind(row)
    if kind not in place["teachers"]:
        root = place["root"]
        data = {"folder": "folder_flat"}.get(kind, kind)
        donor = Row(0, {**row.dims, "budget": "n_trials", "model": "cnn", "data": data})
        path = root / f"teacher-{kind}.toml"
        path.write_text(f'[study]\nname = "teacher-{kind}"\nn_trials = 1\n\n[pruner]\ntype = "none"\n\n'
                        f'[task]\n{task_lines(donor, root)}\n\n[space]\nlr = 0.01\nwidth = 8\ndepth = 1\n')
        url = place["sqlite"]
        with pytest.MonkeyPatch.context() as mp:  # its checkpoints are not the row's
            mp.setenv("TUNER_CHECKPOINT_DIR", str(root / "teacher-checkpoints"))
            ok("launch-study", str(path), "--storage", url)
            serve(url, f"teacher-{kind}")
            ok("export", "--study", f"teacher-{kind}", "--out", str(root / f"teacher-{kind}.pt"), "--storage", url)
        place["teachers"][kind] = root / f"teacher-{kind}.pt"
    return place["teachers"][kind]


def predict_input(row: Row, root: Path) -> tuple[Any, int]:
    """Images as a user has them, for predict(): (images, how many)."""
    if row.data == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits().images[:5]  # 0-16 floats: a digits export takes them as scikit-learn gives them
        if row.model == "own":  # the own loader's export: uint8 0-255, (N, 8, 8)
            return np.round(digits * (255 / 16)).astype(np.uint8), 5
        return digits, 5
    if row.data == "synthetic":
        return np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), 4
    files = sorted((root / "folder_flat" / "bee").glob("*.png"))[:3]
    return [str(f) for f in files], 3


@pytest.mark.parametrize("row", MATRIX, ids=[r.id for r in MATRIX])
def test_matrix(row: Row, place, row_env, monkeypatch):
    root, url = place["root"], place[row.storage]
    teacher = teacher_for(place, row) if row.knob == "distill" else None
    path = row_env / f"{row.name}.toml"
    path.write_text(study_text(row, root, teacher))
    with contextlib.ExitStack() as stack:
        if row.pooled:
            url = stack.enter_context(pgbouncer(url)).url()
        monkeypatch.setenv("TUNER_STORAGE", url)  # every command's storage, as a user sets it
        sql = Sql(url)
        stack.callback(sql.close)
        _life(row, path, url, dict(os.environ), sql, root)


def _life(row: Row, path: Path, url: str, env: dict[str, str], sql: Sql, root: Path) -> None:
    name = row.name
    assert "created" in ok("launch-study", str(path))
    assert "reusing" in ok("launch-study", str(path))
    if row.tuner_run:
        run = subprocess.run([sys.executable, "-m", "tuner", "run", str(path), "--workers", "1", "--cpu"], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    else:
        serve(url, name)
    sid = sql.study_id(name)
    _check_trials(row, sql, sid)
    status = _check_status(row, url, sql, sid)
    best = _check_best(row, url, sql, sid, status)
    if row.tuner_run:  # what it printed at the end is what best says
        said = (f"Pareto front of {name!r}: {len(best)} trials" if row.multi
                else f"best trial of {name!r}: #{best['trial']}, value {best['value']:.4f}")
        assert said in run.stdout, run.stdout[-3000:]
    _check_report(row, sql, sid, status, best)
    _check_export_and_evaluate(row, sql, sid, best, root)
    _check_enqueue_and_extend(row, sql, sid, status)
    watched = watch_for_a_moment(name, env)
    assert name in watched
    trials = sum(sql.states(sid).values())
    ckpt = Path(os.environ["TUNER_CHECKPOINT_DIR"])
    deleted = ok("delete", "--study", name, "--yes")
    assert f"deleted study {name!r}: {trials} trials" in deleted
    assert sql.study_id(name) is None
    assert not any(p.is_file() for p in ckpt.rglob("*")), "checkpoints left after delete"


def _check_trials(row: Row, sql: Sql, sid: int) -> None:
    """What the study file asked of the trials, in the database."""
    counts = sql.attr(sid, "param_count")
    if row.max_params == "maxp":  # every trial that built its model carries the constraint param_count - N <= 0
        constraints = dict(sql.rows(
            "SELECT t.number, a.value_json FROM trials t JOIN trial_system_attributes a ON a.trial_id = t.trial_id "
            "WHERE t.study_id = :s AND a.key = 'constraints:max_params'", s=sid))
        assert counts and {n: json.loads(v) for n, v in constraints.items()} == {
            n: c - MAX_PARAMS for n, c in counts.items()}
    if row.enqueue == "enq":  # the study file's trial ran first (PBT: as the first member)
        params = dict(sql.rows("SELECT p.param_name, p.param_value FROM trials t JOIN trial_params p "
                               "ON p.trial_id = t.trial_id WHERE t.study_id = :s AND t.number = 0", s=sid))
        assert params["lr"] == pytest.approx(0.01) and sql.attr(sid, "enqueued")[0] == "study file", params
    epochs_run = sql.attr(sid, "epochs_run")
    assert all(1 <= e <= epochs(row) for e in epochs_run.values()), epochs_run


def _check_status(row: Row, url: str, sql: Sql, sid: int) -> dict[str, Any]:
    name = row.name
    (status,) = json.loads(ok("status", "--study", name, "--format", "json"))
    states = sql.states(sid)
    assert {k: v for k, v in status["states"].items() if v} == states
    assert "FAIL" not in states, sql.attr(sid, "fail_reason")
    assert status["retries"] == len(sql.rows(
        "SELECT 1 FROM trial_system_attributes a JOIN trials t ON t.trial_id = a.trial_id "
        "WHERE t.study_id = :s AND a.key = 'failed_trial'", s=sid)) == 0
    assert states.get("COMPLETE", 0) >= 1 and set(states) <= {"COMPLETE", "PRUNED"}, states
    assert status["ended"], status  # the run ended because the budget was spent
    continues = sql.attr(sid, "continues")
    paused = {n for n, v in sql.attr(sid, "paused_at_epoch").items()} - set(continues.values())
    assert (status["paused"], status["continued"]) == (len(paused), len(continues))
    # the budget, as shown, against the trials' own records
    budget = status["budget"]
    configs = len(sql.finished(sid) - set(continues))  # n_trials counts configurations
    if "n_trials" in row.budgets or row.pruner == "pbt":
        assert f"{configs}/{status['n_trials']} trials" in budget, (budget, configs)
    trained = sum(sql.attr(sid, "epochs_trained").values())
    hours = sum(sql.attr(sid, "train_seconds").values()) / 3600
    if "max_epochs" in row.budgets:
        assert status["epochs_trained"] == trained
        assert re.search(rf"\b{trained}/\d+ epochs", budget), (budget, trained)
    if "max_gpu_hours" in row.budgets:
        assert status["device_hours"] == pytest.approx(round(hours, 6), abs=1e-6)
        assert f"{hours:.3g}/" in budget, (budget, hours)
        if status["ended"].startswith("max_gpu_hours"):  # why it ended, in the same figures
            assert f"({hours:.3g} of {budget_values(row)['max_gpu_hours']:g} device hours)" in status["ended"]
    if row.multi:
        front = pareto(sql.values(sid), ["maximize", "minimize"])
        assert status["front_size"] == len(front) and status["best_value"] is None
    else:
        number, value, _ = sql.readme_best(url, name)
        assert (status["best_trial"], status["best_value"]) == (number, value)
    table = ok("status", "--study", name)
    shown_best = f"front of {status['front_size']}" if row.multi else f"{status['best_value']:.4f}"
    assert shown_best in table, table
    assert " ".join(budget.split()) in " ".join(table.split()) or _wrapped(budget, table), (budget, table)
    return status


def _wrapped(text: str, table: str) -> bool:
    """Every word of `text` is in the table (a narrow column wraps it)."""
    return all(word.strip(",") in table for word in text.split())


def _check_best(row: Row, url: str, sql: Sql, sid: int, status: dict[str, Any]) -> dict[str, Any] | list:
    name = row.name
    best = json.loads(ok("best", "--study", name, "--format", "json"))
    table = ok("best", "--study", name)
    if row.multi:
        front = pareto(sql.values(sid), ["maximize", "minimize"])
        assert [t["number"] for t in best] == front
        values = sql.values(sid)
        for t in best:
            assert t["values"] == pytest.approx(values[t["number"]])
        assert f"Pareto front of {name!r}: {len(front)} trials" in table
        for t in best:
            assert f"#{t['number']}" in table and f"{t['values'][0]:.4f}" in table
        return best
    number, value, params = sql.readme_best(url, name)
    assert (best["trial"], best["value"]) == (number, value) == (status["best_trial"], status["best_value"])
    assert set(best["params"]) == set(params)
    assert all(same(best["params"][k], params[k]) for k in params), (best["params"], params)
    assert best["param_count"] == sql.attr(sid, "param_count")[number]
    assert best["epochs_run"] == sql.attr(sid, "epochs_run")[number]
    assert best["nonzero_params"] == sql.attr(sid, "nonzero_params").get(number)
    assert f"best trial of {name!r}: #{number}, value {value:.4f}" in table
    assert f"{best['param_count']:,}" in table
    if row.pruner == "pbt":  # the winner's weights trained through these segments, the last one the winner
        steps = best["schedule"]
        assert steps[-1]["trial"] == number and steps[-1]["to_epoch"] == epochs(row) and steps[0]["from_epoch"] == 1
        assert all(a["to_epoch"] + 1 == b["from_epoch"] for a, b in zip(steps, steps[1:]))
        assert "its hyperparameter schedule (PBT)" in table
    else:
        assert "schedule" not in best
    return best


def _report_text(page: str, element_id: str) -> str:
    import html

    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S)
    assert found, element_id
    return html.unescape(found.group(1))


def _check_report(row: Row, sql: Sql, sid: int, status: dict[str, Any], best: Any) -> None:
    name, out = row.name, Path(f"{row.name}.html")
    args = ["report", "--study", name, "--out", str(out)] + (["--png", "png"] if row.png else [])
    if row.multi:
        refused(*args, gist=COMMAND_REFUSALS["report, two objectives"][0])
        return
    said = ok(*args)
    page = out.read_text()
    assert 'id="finished"' in page  # its budget is spent
    assert _report_text(page, "best-value") == f"{best['value']:.4f}"
    assert f"trial #{best['trial']}:" in page
    for key, value in best["params"].items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        assert f"<tr><td>{key}</td><td>{shown}</td></tr>" in page, (key, shown)
    walls, devices = sql.attr(sid, "wall_time_s"), sql.attr(sid, "device")
    for device in set(devices.values()):
        mine = [w for n, w in walls.items() if devices.get(n) == device]
        assert f"<td>{device}</td><td>{len(mine)}</td><td>{sum(mine) / 3600:.3f}</td>" in page
    states = sql.states(sid)
    counts = re.search(r"<h3>Trials by state</h3><table><tr>(.*?)</tr><tr>(.*?)</tr>", page, re.S)
    head = re.findall(r"<th>(.*?)</th>", counts.group(1))
    cells = [int(c) for c in re.findall(r"<td>(.*?)</td>", counts.group(2))]
    assert dict(zip(head, cells)) == {**{s: states.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING",
                                                                         "WAITING")}, "retries": 0}
    assert f"budget spent {status['budget']})" in page  # the same words as tuner status
    assert f"budget spent {status['budget']})" in said
    continued_at = sql.attr(sid, "continued_at_epoch")
    trained = sum(sum(1 for s in steps if s > continued_at.get(n, 0))
                  for n, steps in sql.finished_steps(sid).items())
    assert int(_report_text(page, "epochs-trained")) == trained
    if row.png:
        pngs = list(Path("png").glob("*.png"))
        assert pngs and all(p.stat().st_size > 1000 for p in pngs)
        assert f"wrote {len(pngs)} PNGs" in said


def _check_export_and_evaluate(row: Row, sql: Sql, sid: int, best: Any, root: Path) -> None:
    from tuner.engine.export import load_exported

    name = row.name
    number = best[0]["number"] if row.multi else best["trial"]
    args = ["export", "--study", name, "--out", "model.pt"] + (["--trial", str(number)] if row.multi else [])
    said = ok(*args)
    value = best[0]["values"][0] if row.multi else best["value"]
    assert f"trial #{number}, value {value:.4f}, epoch {epochs(row)}" in said, said
    if row.pruner == "pbt":
        import torch

        assert torch.load("model.pt", weights_only=True)["schedule"] == best["schedule"]
    exported = load_exported(Path("model.pt"))
    images, n = predict_input(row, root)
    predicted = exported.predict(images)
    assert predicted.shape == (n,) and int(predicted.min()) >= 0 and int(predicted.max()) < len(exported.classes)
    if row.multi:
        refused("export", "--study", name, "--out", "x.pt",
                gist=COMMAND_REFUSALS["export without --trial, two objectives"][0])
    scored = ok("evaluate", "--study", name, "--cpu")
    tested = dict((int(n), float(a)) for n, a in re.findall(r"trial (\d+): test_accuracy ([\d.]+)", scored))
    stored = sql.attr(sid, "test_accuracy")
    assert tested and all(stored[n] == pytest.approx(a, abs=5e-5) for n, a in tested.items()), (tested, stored)
    if not row.multi:
        assert list(tested) == [best["trial"]]
        again = json.loads(ok("best", "--study", name, "--format", "json"))
        assert again["test_accuracy"] == stored[best["trial"]]


def _check_enqueue_and_extend(row: Row, sql: Sql, sid: int, status: dict[str, Any]) -> None:
    """The budget is spent: enqueue and extend say why not, or extend makes room and enqueue queues a trial."""
    name = row.name
    configs = int(re.search(r"(\d+)/\d+ trials", status["budget"]).group(1)) if "trials" in status["budget"] \
        else len(sql.finished(sid) - set(sql.attr(sid, "continues")))
    budget = budget_values(row)
    hours = sum(sql.attr(sid, "train_seconds").values()) / 3600
    compute_spent = (sum(sql.attr(sid, "epochs_trained").values()) >= budget.get("max_epochs", float("inf"))
                     or hours >= budget.get("max_gpu_hours", float("inf")))
    trials_spent = bool(status["n_trials"]) and configs >= status["n_trials"]
    enqueue_says = ("enqueue, PBT population started" if row.pruner == "pbt" else
                    "enqueue, n_trials spent" if trials_spent else "enqueue, compute budget spent")
    refused("enqueue", "--study", name, "lr=0.01", gist=COMMAND_REFUSALS[enqueue_says][0])
    if row.pruner == "pbt" or compute_spent:
        extend_says = "extend, PBT" if row.pruner == "pbt" else "extend, compute budget spent"
        refused("extend", "--study", name, "--n-trials", str(configs + 1), gist=COMMAND_REFUSALS[extend_says][0])
        (after,) = json.loads(ok("status", "--study", name, "--format", "json"))
        assert after == status  # nothing changed
        return
    said = ok("extend", "--study", name, "--n-trials", str(configs + 1))
    assert f"n_trials {status['n_trials']} -> {configs + 1}" in said, said
    said = ok("enqueue", "--study", name, "lr=0.01")
    number = int(re.search(r"queued trial #(\d+)", said).group(1))
    (after,) = json.loads(ok("status", "--study", name, "--format", "json"))
    assert after["n_trials"] == configs + 1 and after["ended"] is None
    assert sql.states(sid).get("WAITING") == after["states"].get("WAITING") == 1
    assert number == max(n for (n,) in sql.rows("SELECT number FROM trials WHERE study_id = :s", s=sid))
    assert f"{configs}/{configs + 1} trials" in after["budget"]


# ---------------------------------------------------------------------------------------------------------------
# The refused combinations

BASE = textwrap.dedent("""\
    [study]
    name = "refused"
    n_trials = 2

    [pruner]
    type = "median"

    [task]
    dataset = "digits"
    model = "cnn"
    epochs = 2

    [space]
    lr = { low = 1e-3, high = 5e-2, log = true }
    width = { low = 4, high = 8 }
    """)


@pytest.mark.parametrize("refusal", REFUSED, ids=[r.id for r in REFUSED])
def test_a_refused_combination_is_one_line_at_launch(refusal: Refusal, sqlite_url, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    base = tmp_path / "base.toml"
    base.write_text(BASE)
    assert "created" in ok("launch-study", str(base), "--storage", sqlite_url, "--name", "base")  # the base is valid
    path = tmp_path / "refused.toml"
    path.write_text(refusal.change(BASE))
    line = refused("launch-study", str(path), "--storage", sqlite_url, gist=refusal.message)
    assert str(path) in line or not refusal.names_file, line
    sql = Sql(sqlite_url)
    assert [n for (n,) in sql.rows("SELECT study_name FROM studies")] == ["base"]  # nothing stored
    sql.close()
