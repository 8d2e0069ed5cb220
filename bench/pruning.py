"""Which pruner, which warm-up: pruners against no pruning, on a nearest-neighbour surrogate of real learning curves.

The surrogate: `record` trains configs sampled at random from studies/digits.toml's space with tuner's own
training code (open_batches, build_model, fit: the digits CNN on the CPU) and writes each one's per-epoch
val_accuracy to bench/curves/digits_cnn.json. `run` then serves studies through tuner's own Worker (budget lock,
ask, TPE, heartbeat, tell) with an objective that replays, epoch by epoch, the recorded curve of the config
nearest to the sampled params (distance in a normalised space: log lr, log width, depth, dropout,
log weight_decay, each scaled to [0, 1] by the space's bounds), reporting each epoch with trial.report and
stopping on trial.should_prune() exactly as tuner/engine/objective.py run_trial does. It is a nearest-neighbour
surrogate of recorded real curves: no training happens in `run`, so every pruner sees the same real curves, and
a 100-trial study costs ~10 s of Optuna's storage and TPE instead of the ~3 min its training would.

    python bench/pruning.py record --configs 300 --epochs 15   # once (~10 min); writes bench/curves/digits_cnn.json
    python bench/pruning.py run --seeds 5 --trials 100          # every pruner setting x every seed
    python bench/pruning.py run --seeds 2 --trials 40 --pruners none median-w2   # a subset
    python bench/pruning.py run --seeds 5 --trials 100 --skip wilcoxon           # all but the slow one
    python bench/pruning.py run --seeds 5 --trials 100 --budget-fraction 0.25 \
        --pruners none median successive_halving hyperband asha asha-rf2          # at an equal epoch budget
    python bench/pruning.py run --seeds 5 --trials 100 --budget-fraction 0.25 \
        --pruners none median asha-r1-rf2 asha-r1-rf3 asha-r2-rf2 asha-r2-rf3 asha-r3-rf2 asha-r3-rf3   # ASHA's grid
    python bench/pruning.py run --seeds 3 --trials 100 --budget-fraction 0.25 --sampler random \
        --pruners none median asha-r3-rf2 asha-r1-rf3                             # without TPE's feedback

Per pruner setting, over the seeds (median, and min-max in brackets): epochs trained as % of the no-pruning run
of the same seed, best value, its gap to no pruning's best (points of accuracy), how many seeds end within
0.5 points of no pruning, and the best value found by the time the setting had trained 10%, 25% and 50% of
the no-pruning run's epochs (epochs counted from the trials' intermediate values, trials in order of
completion). Seed s is the study's seed: one Worker per study samples with the study's seed itself, so every
pruner setting of seed s starts from the same TPE seed, and a second run of the script prints the same figures
(all but the seconds). 'top pruned' counts pruned trials whose replayed curve would have ended within 0.5 points
of the best recorded curve: good configs a pruner stopped, whether or not the study found them again.

ASHA (`asha`: tuner's [pruner] type = "asha" with its defaults, which pauses trials at rungs and promotes them
later; `asha-r{R}-rf{F}`: min_resource R, reduction_factor F spelled out, rungs at R x F**k below task.epochs;
`asha-rf2` = `asha-r1-rf2`, `asha-rf3` = `asha-r1-rf3`):
the objective resumes a promotion as run_trial does (make_objective_factory), and a trial's epochs are the steps
it reported after its `resumed_from_epoch`, so a lineage's replayed epochs count once. With a trial budget ASHA's
n_trials counts configurations, and 'pruned' counts trials stopped for good (a paused trial promoted since is not).

--budget-fraction F compares at an equal epoch budget instead: per seed, no pruning with --trials trials runs
first (the reference row, none@full); then every setting, 'none' too (= train fewer configs to the end), runs
with [study] max_epochs = F x the reference's epochs and no trial cap, so it spends exactly the same epochs
(tuner's compute budget: every epoch claimed under the budget lock). Printed per setting: best, gap to
none@full, best by 10/25/50% of its own budget, trials and configurations started, trials trained to the end,
and a check that each budgeted study trained exactly max_epochs, that tuner's `epochs_trained` matches the
epochs each trial trained, and that every promotion resumed its paused trial's epoch and curve.

wilcoxon is slow, and not because of tuner: Optuna's WilcoxonPruner runs scipy.stats.wilcoxon at every epoch, and with
scipy 1.17 a sample with ties or zero differences (accuracies on 324 validation images have plenty) of up to 13
steps gets an exact permutation test (2**n sign flips through numpy's apply_along_axis): 0.2-1 s of CPU per
epoch, minutes per 100-trial study. `--skip wilcoxon` leaves it out; `--pruners wilcoxon` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import tomllib
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CURVES = REPO / "bench" / "curves" / "digits_cnn.json"
STUDY_FILE = REPO / "studies" / "digits.toml"
DIMENSIONS = ("lr", "width", "depth", "dropout", "weight_decay")  # the surrogate's distance uses these
BUDGETS = (0.10, 0.25, 0.50)  # shares of the no-pruning run's epochs at which "best so far" is compared
NEAR = 0.5  # points of accuracy: "within NEAR of no pruning"


def _median(n_warmup: int) -> dict:
    return {"type": "median", "n_startup_trials": 5, "n_warmup_steps": n_warmup}


# label -> the study file's [pruner] table
PRUNERS: dict[str, dict] = {
    "none": {"type": "none"},
    **{f"median-w{w}": _median(w) for w in (0, 1, 2, 3, 5, 7)},
    "percentile-25": {"type": "percentile", "percentile": 25.0},
    "successive-halving": {"type": "successive_halving"},
    "hyperband": {"type": "hyperband"},
    "wilcoxon": {"type": "wilcoxon"},
    "patient-2-median": {"type": "patient", "patience": 2, "wraps": "median"},
    "threshold-0.2": {"type": "threshold", "lower": 0.2},
    "median": {"type": "median"},  # tuner's default: n_startup_trials 5, warm-up ceil(0.2 x task.epochs)
    "asha": {"type": "asha"},  # tuner's scheduler with its defaults: pauses at rungs and promotes
    # ASHA's settings spelled out: asha-r{min_resource}-rf{reduction_factor} (the "Choosing ASHA's defaults" grid)
    **{f"asha-r{r}-rf{f}": {"type": "asha", "min_resource": r, "reduction_factor": f}
       for r in (1, 2, 3) for f in (2, 3)},
}
ALIASES = {"successive_halving": "successive-halving", "asha-rf3": "asha-r1-rf3", "asha-rf2": "asha-r1-rf2",
           "none@budget": "none"}
ASHA_GRID = [label for label in PRUNERS if label.startswith("asha-r")]
BUDGET_ONLY = ("median", "asha", *ASHA_GRID)  # not in the default set of the trial-budget mode (the 2026-11-24 table)
# --budget-fraction's default
BUDGET_ARMS = ["none", "median", "successive-halving", "hyperband", "asha", "asha-r1-rf2"]
REFERENCE = "none@full"  # --budget-fraction: no pruning with --trials trials and no epoch budget


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{platform.node()}: {usable} CPU cores usable ({os.cpu_count()} online), {cpu}; "
            f"Python {platform.python_version()}")


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def one_thread() -> None:
    """The machine is shared: torch on one thread (OMP_NUM_THREADS must be set before torch is imported)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def digits_study() -> dict:
    return tomllib.loads(STUDY_FILE.read_text())


# ---------------------------------------------------------------------------------------------- record


def record(args) -> None:
    """Train --configs random configs of the digits space for --epochs each; write their val_accuracy curves."""
    one_thread()
    import optuna
    import torch

    from tuner.spec.config import parse_config
    from tuner.data.loader import open_batches
    from tuner.engine.device import resolve_precision
    from tuner.errors import TrialFailed
    from tuner.engine.models import build_model
    from tuner.spec.space import suggest_hparams
    from tuner.engine.train import FitConfig, fit

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    raw = digits_study()
    raw["task"]["epochs"] = args.epochs
    config = parse_config(raw, str(STUDY_FILE.relative_to(REPO)))
    cpu = torch.device("cpu")
    data = open_batches(config.task, cpu)
    precision = resolve_precision(config.task.precision, cpu)
    # the params as a study would sample them (suggest_hparams on the study's space), drawn at random
    sampling = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    print(command_line())
    print(machine(), f"torch threads {torch.get_num_threads()}")
    print(f"digits: {data.num_train} train images, task.epochs {config.task.epochs}, batch {config.task.batch_size}")
    configs, started = [], time.perf_counter()
    for i in range(args.configs):
        trial = sampling.ask()
        hp = suggest_hparams(trial, config.space)
        sampling.tell(trial, 0.0)
        seed = config.study.seed + i  # as run_trial seeds trial i of the study
        torch.manual_seed(seed)
        model = build_model(config.task.model, config.task.weights, hp, data.image_shape, data.num_classes).to(cpu)
        curve: list[float] = []
        fit_config = FitConfig(epochs=config.task.epochs, batch_size=config.task.batch_size, lr=hp.lr,
                               weight_decay=hp.weight_decay, optimizer=hp.optimizer, seed=seed, precision=precision)
        t0, failed = time.perf_counter(), ""
        try:
            fit(model, data, fit_config,
                lambda epoch, metrics, snapshot, curve=curve: curve.append(metrics[config.study.metric]))
        except TrialFailed as exc:  # e.g. a non-finite loss: a real study would record the trial as FAIL
            failed = str(exc)
        entry = {"params": dict(trial.params), "seed": seed, "val_accuracy": [round(v, 6) for v in curve],
                 "seconds": round(time.perf_counter() - t0, 2)}
        if failed:
            entry["failed"] = failed
        configs.append(entry)
        final = f"{curve[-1]:.4f}" if curve else "-"
        print(f"[{i + 1:>3}/{args.configs}] {entry['seconds']:5.1f} s  final {final}  {failed}  "
              f"{' '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}' for k, v in trial.params.items())}",
              flush=True)
    seconds = time.perf_counter() - started
    out = {
        "description": "Per-epoch val_accuracy of the digits CNN for configs drawn at random from the space of "
                       "studies/digits.toml, trained with tuner's fit() on the CPU; the curves bench/pruning.py "
                       "replays.",
        "recorded": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command_line(),
            "machine": machine(),
            "torch": torch.__version__, "optuna": optuna.__version__, "torch_threads": torch.get_num_threads(),
            "sampling": f"optuna RandomSampler(seed={args.seed}) + tuner.spec.space.suggest_hparams on the study's space",
            "training_seed": "study.seed + config index (as run_trial seeds trial number i)",
            "seconds": round(seconds, 1),
            "train_images": data.num_train,
        },
        "metric": config.study.metric,
        "epochs": config.task.epochs,
        "task": {k: v for k, v in config.to_dict()["task"].items()
                 if k in ("dataset", "model", "epochs", "batch_size", "val_fraction", "test_fraction", "split_seed",
                          "augment", "precision")},
        "space": config.to_dict()["space"],
        "configs": configs,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=None, separators=(",", ":")).replace('{"params"', '\n{"params"') + "\n")
    finals = sorted(c["val_accuracy"][-1] for c in configs if c["val_accuracy"])
    print(f"wrote {len(configs)} curves to {path} in {seconds / 60:.1f} min "
          f"({seconds / len(configs):.1f} s per config); final val_accuracy: best {finals[-1]:.4f}, "
          f"median {statistics.median(finals):.4f}, failed {sum('failed' in c for c in configs)}")


# ---------------------------------------------------------------------------------------------- surrogate


class Surrogate:
    """The recorded curves, and the nearest one to a config in the normalised space."""

    def __init__(self, path: Path):
        recorded = json.loads(path.read_text())
        self.recorded = recorded
        self.epochs: int = recorded["epochs"]
        self.space = recorded["space"]
        self.configs = [c for c in recorded["configs"] if len(c["val_accuracy"]) == self.epochs]
        self.failed = len(recorded["configs"]) - len(self.configs)
        self.points = [self.position(c["params"]) for c in self.configs]

    def position(self, params: dict) -> tuple[float, ...]:
        def scaled(name: str) -> float:
            bounds = self.space[name]
            f = math.log if bounds.get("log") else float
            return (f(params[name]) - f(bounds["low"])) / (f(bounds["high"]) - f(bounds["low"]))

        return tuple(scaled(name) for name in DIMENSIONS)

    def nearest(self, params: dict) -> int:
        here = self.position(params)
        return min(range(len(self.points)), key=lambda i: sum((a - b) ** 2 for a, b in zip(here, self.points[i])))

    @property
    def ceiling(self) -> float:
        return max(c["val_accuracy"][-1] for c in self.configs)


def make_objective_factory(surrogate: Surrogate):
    """What Worker takes: config -> objective(trial, should_stop, on_epoch), reporting like run_trial.

    Resuming, as run_trial does with ASHA's promotions (and retries): each study's objective keeps a stand-in
    for the checkpoint folders, lineage -> the last epoch a trial of it trained (saved after each epoch, like
    checkpoints.save). A trial whose lineage has one (a promotion: user attribute `lineage`, tuner.fleet.lineage)
    re-reports the recorded curve's first `resumed` epochs with trial.report (no should_prune on them, like
    _replay_history), sets `resumed_from_epoch`, and trains on from resumed + 1 along the same recorded curve; a
    promotion without one fails as run_trial's does. A pause (the pruner's `pauses`) sets `paused_at_epoch`."""
    import optuna

    from tuner.errors import Interrupted, TrialFailed
    from tuner.engine.objective import EpochEvent
    from tuner.fleet.lineage import lineage_number
    from tuner.spec.space import suggest_hparams
    from tuner.store.budget import CONTINUATION_ATTR  # a promotion's user attribute: the paused trial it continues

    def make_objective(config):
        metric = config.study.metric
        epochs = config.task.epochs
        saved: dict[int, int] = {}  # lineage -> last epoch trained: this study's "checkpoints"

        def objective(trial, should_stop, on_epoch) -> float:
            hp = suggest_hparams(trial, config.space)
            index = surrogate.nearest(hp.as_mapping())
            trial.set_user_attr("surrogate_config", index)
            curve = surrogate.configs[index]["val_accuracy"][:epochs]
            lineage = lineage_number(trial)
            resumed = saved.get(lineage, 0)
            continues = trial.user_attrs.get(CONTINUATION_ATTR)
            if continues is not None and not resumed:
                raise TrialFailed(f"the checkpoint of paused trial {continues} is gone: it cannot be resumed")
            if resumed:
                for epoch, value in enumerate(curve[:resumed], start=1):
                    trial.report(value, epoch)
                trial.set_user_attr("resumed_from_epoch", resumed)
                if resumed >= epochs:  # the original finished training before it died; its result stands
                    return curve[-1]
            for epoch in range(resumed + 1, epochs + 1):
                value = curve[epoch - 1]
                if should_stop():
                    raise Interrupted(f"stopped during epoch {epoch}")
                trial.report(value, epoch)
                trial.set_user_attr("epochs_run", epoch)
                saved[lineage] = epoch
                prune = trial.should_prune()
                on_epoch(EpochEvent(trial.number, epoch, epochs, value, pruned=prune))
                if prune and getattr(trial.study.pruner, "pauses", False):  # ASHA: a worker may promote it later
                    trial.set_user_attr("paused_at_epoch", epoch)
                    raise optuna.TrialPruned(f"paused at epoch {epoch} with {metric}={value:.4f}")
                if prune:
                    trial.set_user_attr("pruned_at_epoch", epoch)
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} with {metric}={value:.4f}")
            return curve[-1]

        return objective

    return make_objective


# ---------------------------------------------------------------------------------------------- run


def study_dict(name: str, seed: int, trials: int, epochs: int, pruner: dict, max_epochs: int = 0,
               sampler: str = "tpe") -> dict:
    """The study file of one run; max_epochs > 0 gives it an epoch budget instead of a trial budget (n_trials 0:
    no cap on trials)."""
    raw = digits_study()
    raw["study"].update(name=name, seed=seed, sampler=sampler)
    if max_epochs:
        raw["study"].update(n_trials=0, max_epochs=max_epochs)
    else:
        raw["study"]["n_trials"] = trials
    raw["task"]["epochs"] = epochs
    raw["pruner"] = dict(pruner)
    return raw


class Row(NamedTuple):
    """One trial, as the summaries read it."""

    state: str
    value: float | None
    epochs: int  # epochs this trial trained: its reported steps after the one it resumed from (replays excluded)
    final: float  # the final value its replayed curve would have reached
    promoted: bool  # it continues a paused trial (ASHA): not a new configuration
    continued: bool  # a later trial continues it: paused, and promoted since (not stopped for good)
    claimed: int | None  # its `epochs_trained` (tuner's compute budget), None without one


def run_study(url: str, name: str, raw: dict, make_objective, surrogate: Surrogate) -> dict:
    """Launch the study, serve it to its end with one in-process Worker, and read back its trials."""
    import optuna

    from tuner.spec.config import parse_config
    from tuner.store.storage import make_storage
    from tuner.fleet.study import launch_study
    from tuner.fleet.worker import Worker
    from tuner.store.budget import CONTINUATION_ATTR

    config = parse_config(raw, "bench")
    storage = make_storage(url)
    launch_study(storage, config, check_paths=False)
    storage.engine.dispose()
    started = time.perf_counter()
    code = Worker(url, make_objective, db_retry_seconds=30).run(name)
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"worker exited with {code} on study {name!r}")
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    order = sorted(trials, key=lambda t: (t.datetime_complete or datetime.max, t.number))
    continued = {t.user_attrs[CONTINUATION_ATTR] for t in trials if CONTINUATION_ATTR in t.user_attrs}
    rows = [Row(t.state.name, t.value,
                sum(step > t.user_attrs.get("resumed_from_epoch", 0) for step in t.intermediate_values),
                surrogate.configs[t.user_attrs["surrogate_config"]]["val_accuracy"][-1],
                CONTINUATION_ATTR in t.user_attrs, t.number in continued, t.user_attrs.get("epochs_trained"))
            for t in order]
    # what looked wrong in tuner's ASHA, if anything: a promotion that did not resume where its trial paused
    by_number = {t.number: t for t in trials}

    def resumed_elsewhere(t) -> bool:  # a promotion that did not resume at its paused trial's epoch and curve
        before = by_number[t.user_attrs[CONTINUATION_ATTR]]
        paused = before.user_attrs.get("paused_at_epoch")
        return (t.user_attrs.get("resumed_from_epoch") != paused or t.params != before.params
                or {s: v for s, v in t.intermediate_values.items() if s <= (paused or 0)} != before.intermediate_values)

    checks = {
        "promotions without resumed_from_epoch": sum(CONTINUATION_ATTR in t.user_attrs
                                                     and "resumed_from_epoch" not in t.user_attrs for t in trials),
        "promotions not resuming their paused trial": sum(CONTINUATION_ATTR in t.user_attrs and resumed_elsewhere(t)
                                                          for t in trials),
        "paused trials promoted twice": sum(CONTINUATION_ATTR in t.user_attrs for t in trials) - len(continued),
        "epochs_trained != epochs trained": sum(r.claimed is not None and r.claimed != r.epochs for r in rows),
    }
    return {"rows": rows, "wall_s": wall, "pruner": config.pruner,  # the [pruner] table as stored: defaults filled in
            "max_epochs": config.study.max_epochs, "checks": {k: v for k, v in checks.items() if v}}


def summarise(rows: list[Row], reference_epochs: int, top: float) -> dict:
    """Epochs, best, and best-so-far at shares of `reference_epochs` (the no-pruning run's epochs, or the
    run's own epoch budget); rows in completion order."""
    spent, best, at = 0, -math.inf, {}
    budgets = sorted(BUDGETS)
    for row in rows:
        spent += row.epochs
        for b in budgets:
            if b not in at and spent > b * reference_epochs:
                at[b] = best  # the best of the trials completed within the budget
        if row.state == "COMPLETE" and row.value is not None:
            best = max(best, row.value)
    out_of_trials = [b for b in budgets if b not in at]
    for b in out_of_trials:  # it finished every trial within this budget: its final best
        at[b] = best
    stopped = [r for r in rows if r.state == "PRUNED" and not r.continued]  # paused and promoted: not stopped
    return {"epochs": spent, "best": best, "at": at, "out_of_trials": out_of_trials,
            "pruned": len(stopped),
            "top_pruned": sum(r.final >= top for r in stopped),  # would have ended near the top
            "failed": sum(r.state not in ("COMPLETE", "PRUNED") for r in rows),
            "trials": len(rows), "configs": sum(not r.promoted for r in rows),
            "complete": sum(r.state == "COMPLETE" for r in rows),
            "claimed": sum(r.claimed or 0 for r in rows)}


def spread(values: list[float], fmt: str) -> str:
    """median (min–max) of the finite values; '-' if none is ('best @x' before any trial completed), and
    '[n/m]' when only n of the m seeds have one."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-"
    some = f" [{len(finite)}/{len(values)}]" if len(finite) < len(values) else ""
    return f"{format(statistics.median(finite), fmt)} ({format(min(finite), fmt)}–{format(max(finite), fmt)}){some}"


def arm_cells(rows: list, own_epochs: list, base: list) -> tuple:
    """One arm's per-seed figures for a table row: epochs as % of `own_epochs` (the budget each seed's row is
    measured against), best and gap to `base` in points, seeds within NEAR, and the best-at-share cells."""
    pct = [100 * r["epochs"] / own_epochs[s] for s, r in enumerate(rows)]
    best = [100 * r["best"] for r in rows]
    gap = [100 * (r["best"] - base[s]) for s, r in enumerate(rows)]
    within = sum(g >= -NEAR - 1e-9 for g in gap)
    at_cells = []
    for b in BUDGETS:
        mark = "†" if any(b in r["out_of_trials"] for r in rows) else " "  # some seed had run out of trials
        at_cells.append(f"{spread([100 * r['at'][b] for r in rows], '.2f') + mark:>22}")
    return pct, best, gap, within, at_cells


def run(args) -> None:
    one_thread()
    import logging

    import optuna

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna's notes on the experimental heartbeat API and on heartbeats outside Study.optimize, once per study
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    surrogate = Surrogate(Path(args.curves))
    epochs = surrogate.epochs
    default = BUDGET_ARMS if args.budget_fraction else [label for label in PRUNERS if label not in BUDGET_ONLY]
    skip = [ALIASES.get(label, label) for label in args.skip or []]
    labels = [ALIASES.get(label, label) for label in args.pruners or default]
    labels = list(dict.fromkeys(label for label in labels if label not in skip and label != REFERENCE))
    if "none" not in labels:
        labels = ["none"] + labels
    unknown = [label for label in labels if label not in PRUNERS]
    if unknown:
        raise SystemExit(f"unknown pruner settings {unknown}; known: {', '.join(PRUNERS)}")
    if args.budget_fraction is not None and not 0 < args.budget_fraction <= 1:
        raise SystemExit(f"--budget-fraction must be in (0, 1], not {args.budget_fraction}")
    rec = surrogate.recorded["recorded"]
    print(command_line())
    print(f"machine: {machine()}; optuna {optuna.__version__}")
    print(f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"curves: {os.path.relpath(args.curves)}: {len(surrogate.configs)} real digits-CNN curves of {epochs} epochs "
          f"({surrogate.failed} failed configs left out; recorded {rec['date']}, {rec['seconds'] / 60:.1f} min); "
          f"best recorded final val_accuracy {surrogate.ceiling:.4f}")
    if args.budget_fraction:
        print(f"studies: sampler {args.sampler}, task.epochs {epochs}, seeds {args.seeds}, one in-process Worker "
              f"each, SQLite in a temporary folder; {REFERENCE}: no pruning, n_trials {args.trials}, no epoch "
              f"budget; every other arm: [study] max_epochs = {args.budget_fraction:g} x {REFERENCE}'s epochs of the "
              "same seed, no n_trials")
        print()
        run_budget(args, surrogate, labels)
        return
    print(f"studies: sampler {args.sampler}, {args.trials} trials, task.epochs {epochs}, seeds {args.seeds}, one "
          f"in-process Worker each, SQLite in a temporary folder")
    print()

    factory = make_objective_factory(surrogate)
    results: dict[str, list[dict]] = {label: [] for label in labels}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
        os.environ["TUNER_CHECKPOINT_DIR"] = os.path.join(tmp, "checkpoints")  # the objective writes none
        url = f"sqlite:///{tmp}/bench.db"
        for seed in range(args.seeds):
            for label in labels:
                name = f"pruning-{label}-seed{seed}"
                raw = study_dict(name, seed, args.trials, epochs, PRUNERS[label], sampler=args.sampler)
                result = run_study(url, name, raw, factory, surrogate)
                results[label].append(result)
                if args.verbose:
                    rows = result["rows"]
                    print(f"  seed {seed} {label:<20} {result['wall_s']:6.1f} s  epochs {sum(r[2] for r in rows):5d}  "
                          f"best {max((r[1] for r in rows if r[0] == 'COMPLETE'), default=float('nan')):.4f}",
                          flush=True)
    wall = time.perf_counter() - started

    reference = [sum(r[2] for r in res["rows"]) for res in results["none"]]
    top = surrogate.ceiling - NEAR / 100
    summary = {label: [summarise(res["rows"], reference[s], top) for s, res in enumerate(runs)]
               for label, runs in results.items()}
    base = [s["best"] for s in summary["none"]]
    head = (f"{'pruner':<20} {'epochs % of none':>20} {'best val_acc %':>22} {'gap to none, pts':>22} "
            f"{'within ' + str(NEAR):>10} "
            + " ".join(f"{'best @' + format(b, '.0%') + ' epochs':>22}" for b in BUDGETS)
            + f" {'pruned':>14} {'top pruned':>11} {'s/study':>7}")
    print(f"Medians over {args.seeds} seeds (min–max in brackets). Accuracy in %; gap = best − none's best of the "
          f"same seed, in points; 'within' = seeds whose gap ≥ −{NEAR}.")
    print(f"'best @x epochs' = best value among the trials completed within x of the no-pruning run's total epochs "
          f"({statistics.median(reference):.0f}); † = some seeds had finished all their trials by then (their final "
          "best is used).")
    print(f"'top pruned' = pruned trials whose curve, had it run on, ends within {NEAR} points of the best recorded "
          f"curve (≥ {100 * top:.2f}%): good configs the pruner stopped.")
    print(head)
    print("-" * len(head))
    for label in labels:
        rows = summary[label]
        pct, best, gap, within, at_cells = arm_cells(rows, reference, base)
        pruned = spread([r["pruned"] for r in rows], ".0f")
        top_pruned = spread([r["top_pruned"] for r in rows], ".0f")
        secs = statistics.median(res["wall_s"] for res in results[label])
        print(f"{label:<20} {spread(pct, '.1f'):>20} {spread(best, '.2f'):>22} {spread(gap, '+.2f'):>22} "
              f"{f'{within}/{len(rows)}':>10} {' '.join(at_cells)} {pruned:>14} {top_pruned:>11} {secs:>7.1f}")
        failed = sum(r["failed"] for r in rows)
        if failed:
            print(f"{'':<20} ({failed} trials ended neither COMPLETE nor PRUNED)")
    print()
    print("[pruner] tables as given, and as tuner stored them (its defaults filled in):")
    for label in labels:
        print(f"  {label:<20} {json.dumps(PRUNERS[label])}  ->  {json.dumps(results[label][0]['pruner'])}")
    print(f"\ntotal {wall / 60:.1f} min for {len(labels)} settings x {args.seeds} seeds x {args.trials} trials")


def run_budget(args, surrogate: Surrogate, labels: list[str]) -> None:
    """--budget-fraction: per seed, no pruning with --trials trials (the reference), then every setting in
    `labels` with [study] max_epochs = fraction x the reference's epochs and no trial cap."""
    factory = make_objective_factory(surrogate)
    epochs = surrogate.epochs
    arms = [REFERENCE] + labels
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
        os.environ["TUNER_CHECKPOINT_DIR"] = os.path.join(tmp, "checkpoints")  # the objective writes none
        url = f"sqlite:///{tmp}/bench.db"
        for seed in range(args.seeds):
            budget = 0
            for arm in arms:
                name = f"budget-{arm}-seed{seed}"
                if arm == REFERENCE:
                    raw = study_dict(name, seed, args.trials, epochs, PRUNERS["none"], sampler=args.sampler)
                else:
                    raw = study_dict(name, seed, 0, epochs, PRUNERS[arm], max_epochs=budget, sampler=args.sampler)
                result = run_study(url, name, raw, factory, surrogate)
                results[arm].append(result)
                rows = result["rows"]
                if arm == REFERENCE:
                    budget = max(1, round(args.budget_fraction * sum(r.epochs for r in rows)))
                if args.verbose:
                    print(f"  seed {seed} {arm:<20} {result['wall_s']:6.1f} s  epochs {sum(r.epochs for r in rows):5d}"
                          f" (claimed {sum(r.claimed or 0 for r in rows)}, max_epochs {result['max_epochs']})  "
                          f"trials {len(rows)}  configs {sum(not r.promoted for r in rows)}  best "
                          f"{max((r.value for r in rows if r.state == 'COMPLETE'), default=float('nan')):.4f}"
                          f"{'  ' + json.dumps(result['checks']) if result['checks'] else ''}", flush=True)
    wall = time.perf_counter() - started

    full = [sum(r.epochs for r in res["rows"]) for res in results[REFERENCE]]
    top = surrogate.ceiling - NEAR / 100
    summary = {arm: [summarise(res["rows"], res["max_epochs"] or full[s], top) for s, res in enumerate(runs)]
               for arm, runs in results.items()}
    base = [r["best"] for r in summary[REFERENCE]]
    head = (f"{'pruner':<20} {'max_epochs':>10} {'epochs % of budget':>20} {'best val_acc %':>22} "
            f"{'gap to none@full':>22} {'within ' + str(NEAR):>10} "
            + " ".join(f"{'best @' + format(b, '.0%') + ' budget':>22}" for b in BUDGETS)
            + f" {'trials started':>15} {'configs started':>15} {'complete':>12} {'stopped':>12}"
            f" {'top stopped':>11} {'s/study':>7}")
    print(f"Medians over {args.seeds} seeds (min–max in brackets). Accuracy in %. {REFERENCE}: no pruning, "
          f"{args.trials} trials, no epoch budget ({statistics.median(full):.0f} epochs); every other row: "
          f"max_epochs = {args.budget_fraction:g} x that, no trial cap ('none' = train fewer configs to the end).")
    print(f"'best' = best COMPLETE trial (trained to epoch {epochs}); gap = best − {REFERENCE}'s best of the same "
          f"seed, in points; 'within' = seeds whose gap ≥ −{NEAR}.")
    print("'best @x budget' = best value among the trials completed by the time the row had trained x of its own "
          "budget (max_epochs; for none@full its epochs); † = some seeds had finished all their trials by then; "
          "- = no trial had completed yet in any seed, [n/m] = in only n of the m seeds (the median is theirs).")
    print("'trials started' counts every trial (ASHA's promotions too); 'configs started' the configurations (trials "
          "that continue no paused trial); 'complete' trials trained to the end; 'stopped' trials PRUNED and never "
          f"resumed (pruned, paused for good, or stopped by the budget); 'top stopped' those of them whose curve ends "
          f"≥ {100 * top:.2f}%.")
    print(head)
    print("-" * len(head))
    for arm in arms:
        rows = summary[arm]
        own = [res["max_epochs"] or full[s] for s, res in enumerate(results[arm])]
        pct, best, gap, within, at_cells = arm_cells(rows, own, base)
        counts = [f"{spread([r[key] for r in rows], '.0f'):>{width}}"
                  for key, width in (("trials", 15), ("configs", 15), ("complete", 12), ("pruned", 12),
                                     ("top_pruned", 11))]
        secs = statistics.median(res["wall_s"] for res in results[arm])
        print(f"{arm:<20} {statistics.median(own):>10.0f} {spread(pct, '.1f'):>20} {spread(best, '.2f'):>22} "
              f"{spread(gap, '+.2f'):>22} {f'{within}/{len(rows)}':>10} {' '.join(at_cells)} {' '.join(counts)} "
              f"{secs:>7.1f}")
        failed = sum(r["failed"] for r in rows)
        if failed:
            print(f"{'':<20} ({failed} trials ended neither COMPLETE nor PRUNED)")
    print()
    print("Checks (epochs counted from each trial's reported steps after its resumed_from_epoch; claimed = the "
          "sum of tuner's epochs_trained):")
    fine = True
    for arm in arms:
        for s, res in enumerate(results[arm]):
            trained, claimed = summary[arm][s]["epochs"], summary[arm][s]["claimed"]
            problems = dict(res["checks"])
            if res["max_epochs"] and claimed != trained:
                problems["claimed != trained"] = f"{claimed} != {trained}"
            if res["max_epochs"] and trained > res["max_epochs"]:
                problems["over max_epochs"] = f"{trained} > {res['max_epochs']}"
            if res["max_epochs"] and trained < res["max_epochs"]:
                problems["under max_epochs"] = f"{trained} < {res['max_epochs']}"
            if problems:
                fine = False
                print(f"  {arm} seed {s}: {json.dumps(problems)}")
    if fine:
        print("  every budgeted study trained exactly its max_epochs; epochs_trained matched the epochs trained in "
              "every trial; every promotion resumed where its trial paused, none twice")
    print()
    print("[pruner] tables as given, and as tuner stored them (its defaults filled in):")
    for arm in arms:
        given = PRUNERS["none" if arm == REFERENCE else arm]
        print(f"  {arm:<20} {json.dumps(given)}  ->  {json.dumps(results[arm][0]['pruner'])}")
    print(f"\ntotal {wall / 60:.1f} min for {len(arms)} arms x {args.seeds} seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="train real configs and write their curves")
    rec.add_argument("--configs", type=int, default=300)
    rec.add_argument("--epochs", type=int, default=15)
    rec.add_argument("--seed", type=int, default=0, help="seed of the random sampling of configs")
    rec.add_argument("--out", default=str(CURVES))
    go = sub.add_parser("run", help="compare the pruner settings on the recorded curves")
    go.add_argument("--seeds", type=int, default=5)
    go.add_argument("--trials", type=int, default=100)
    go.add_argument("--pruners", nargs="+", help=f"a subset of: {', '.join(PRUNERS)} (none is always run)")
    go.add_argument("--skip", nargs="+", help="settings to leave out, e.g. wilcoxon (the slow one: see the docstring)")
    go.add_argument("--curves", default=str(CURVES))
    go.add_argument("--sampler", default="tpe", choices=("tpe", "random"),
                    help="[study] sampler of every study (random: to tell a pruner's effect apart from TPE's)")
    go.add_argument("--verbose", action="store_true", help="a line per study as it ends")
    go.add_argument("--budget-fraction", type=float, metavar="F",
                    help="compare at an equal epoch budget: every setting gets [study] max_epochs = F x the epochs of "
                         f"no pruning with --trials trials (that seed's; the reference row, {REFERENCE}) and no "
                         "trial cap; 'none' then trains fewer configs to the end")
    args = parser.parse_args()
    record(args) if args.command == "record" else run(args)


if __name__ == "__main__":
    main()
