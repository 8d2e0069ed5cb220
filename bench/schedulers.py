"""Schedulers at an equal epoch budget, with real training: Optuna's stop-only pruners against tuner's ASHA and PBT.

Every study here trains for real (tuner's objective, tuner.engine.objective.make_objective on the CPU, one torch
thread) and is served to its end by tuner's own Worker, in this process (budget lock, ask, TPE, heartbeat, tell,
ASHA's promotions, PBT's generations, checkpoints and resumes). Nothing is replayed: unlike bench/pruning.py,
which replays recorded curves, a resumed ASHA trial or an exploiting PBT member here really loads the checkpoint.

Per seed s (the study's seed: TPE is seeded by it; PBT's first population is what TPE samples):
  none@full   no pruning, n_trials = --configs, no epoch budget: --configs configs trained to the end (the
              reference, --configs x --epochs epochs);
  every arm   [study] max_epochs = --fraction x --configs x --epochs and no trial cap (tuner's compute budget:
              each epoch claimed under the budget lock, so every arm spends exactly that many epochs):
                none                 no pruning: fewer configs trained to the end
                median               tuner's default (n_startup_trials 5, warm-up ceil(0.2 x epochs))
                successive_halving   Optuna's defaults
                hyperband            Optuna's defaults
                asha                 tuner's ASHA with promotion, its defaults (min_resource 1, reduction_factor
                                     3; from 5a7b237 to the commit after be7ad0c they were ceil(0.2 x epochs) / 2,
                                     which is what the CIFAR run's `asha` row used)
                asha-1x3             min_resource 1, reduction_factor 3 spelled out
                asha-3x2             min_resource 3, reduction_factor 2 (ceil(0.2 x 12): the interim default at
                                     12 epochs)
                pbt                  tuner's PBT, population = max_epochs / epochs (every member trains to the
                                     end, so that is what the budget buys), interval and the rest its defaults
Printed per arm (median over seeds, min–max in brackets; and per seed): the best val_accuracy of a trial trained
to the end (COMPLETE), its gap to none@full's best of the same seed (points), the best reached by the time the
arm had trained 10/25/50% of its own budget (trials in order of completion, datetime_complete; epochs counted
from each trial's `epochs_trained`, tuner's claim, or for none@full from its reported steps), the trials and the
configurations started (configurations: trials without the user attribute `continues`), and wall time; then
checks of what tuner's schedulers did (exact budget, claims equal to epochs trained, every continuation resumed
where its trial paused with the curve it replays, no FAIL, PBT's population complete).

    python bench/schedulers.py --epochs 12 --configs 32 --fraction 0.25 --seeds 3             # digits, ~13 min
    python bench/schedulers.py --epochs 12 --configs 32 --fraction 0.25 --seeds 2 --first-seed 3   # seeds 3, 4
    python bench/schedulers.py --task cifar --per-class 1000 --epochs 6 --configs 12 --fraction 0.5 --seeds 1  # ~39 min

--task cifar extracts --per-class images of each class from ../shared/datasets/cifar10-train.tar.xz (an
ImageFolder tree of CIFAR-10's training images) into a temporary folder and searches the same space with
dataset "imagefolder", image_size 32, model cnn. Everything (SQLite, checkpoints, data cache, images) lives in
one temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import warnings
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "bench"))
from pruning import command_line, machine  # noqa: E402 (the same header lines as bench/pruning.py's tables)

STUDY_FILE = REPO / "studies" / "digits.toml"
CIFAR_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-train.tar.xz"
SHARES = (0.10, 0.25, 0.50)  # of an arm's own budget, at which "best so far" is read
REFERENCE = "none@full"
ARMS: dict[str, dict] = {  # label -> the [pruner] table (pbt's population is set per run: budget / epochs)
    "none": {"type": "none"},
    "median": {"type": "median"},
    "successive_halving": {"type": "successive_halving"},
    "hyperband": {"type": "hyperband"},
    "asha": {"type": "asha"},  # tuner's defaults when run (the stored table is printed)
    "asha-1x3": {"type": "asha", "min_resource": 1, "reduction_factor": 3},
    # the first rung at 20% of 12 epochs (as median's warm-up), factor 2: tuner's default from 5a7b237 to 98df682
    "asha-3x2": {"type": "asha", "min_resource": 3, "reduction_factor": 2},  # Li et al.'s / Syne Tune's
    "pbt": {"type": "pbt"},
}


def commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + (" (working tree has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ---------------------------------------------------------------------------------------------- data


def extract_cifar(archive: Path, into: Path, per_class: int) -> Path:
    """The first `per_class` images of each class of the archive's train/<class>/ tree, in archive order (one
    streaming pass: an .xz archive is not seekable, so random access would decompress it again per member)."""
    root = into / "cifar10-subset"
    taken: dict[str, int] = {}
    with tarfile.open(archive, "r|xz") as tar:
        for m in tar:
            if not (m.isfile() and m.name.lower().endswith((".jpg", ".png"))):
                continue
            parts = Path(m.name).parts
            cls = parts[-2]
            if taken.get(cls, 0) >= per_class:
                continue
            taken[cls] = taken.get(cls, 0) + 1
            target = root / cls / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(m).read())
    print(f"cifar: {sum(taken.values())} images extracted from {archive.name}, {len(taken)} classes "
          f"({', '.join(f'{c} {n}' for c, n in sorted(taken.items()))})", flush=True)
    return root


def base_study(args, data_dir: Path | None) -> dict:
    raw = tomllib.loads(STUDY_FILE.read_text())
    raw["task"]["epochs"] = args.epochs
    if args.task == "cifar":
        raw["task"].update(dataset="imagefolder", data_dir=str(data_dir), image_size=32, model="cnn")
    return raw


def study_dict(base: dict, name: str, seed: int, arm: str, n_configs: int, max_epochs: int) -> dict:
    raw = json.loads(json.dumps(base))
    raw["study"].update(name=name, seed=seed, sampler="tpe")
    raw["study"].pop("n_trials", None)
    pruner = dict(ARMS["none" if arm == REFERENCE else arm])
    if arm == REFERENCE:
        raw["study"]["n_trials"] = n_configs
    else:
        raw["study"]["max_epochs"] = max_epochs
        if arm == "pbt":
            pruner["population"] = max_epochs // raw["task"]["epochs"]  # n_trials left out: the population
    raw["pruner"] = pruner
    return raw


# ---------------------------------------------------------------------------------------------- one study


def run_study(url: str, raw: dict) -> dict:
    """Launch the study, serve it to its end with tuner's Worker in this process, read back its trials."""
    import optuna
    import torch

    from tuner.engine.objective import make_objective
    from tuner.fleet.study import launch_study
    from tuner.fleet.worker import Worker
    from tuner.spec.config import parse_config
    from tuner.store.storage import make_storage

    config = parse_config(raw, "bench/schedulers.py")
    storage = make_storage(url)
    launch_study(storage, config, check_paths=False)
    storage.engine.dispose()
    started = time.perf_counter()
    code = Worker(url, lambda c: make_objective(c, torch.device("cpu")), db_retry_seconds=30).run(config.study.name)
    wall = time.perf_counter() - started
    if code >= 128:  # a signal stopped the worker (each Worker installs its handlers anew): stop the whole run
        raise SystemExit(f"worker stopped by signal {code - 128} on study {config.study.name!r}")
    trials = optuna.load_study(study_name=config.study.name, storage=url).get_trials(deepcopy=False)
    return {"name": config.study.name, "code": code, "wall_s": wall, "trials": trials, "pruner": config.pruner,
            "max_epochs": config.study.max_epochs, "epochs": config.task.epochs}


def trained(t) -> int:
    """Epochs this trial trained: tuner's claim (epochs_trained), else its reported steps after its resume."""
    if "epochs_trained" in t.user_attrs:
        return int(t.user_attrs["epochs_trained"])
    return sum(step > t.user_attrs.get("resumed_from_epoch", 0) for step in t.intermediate_values)


def summarise(result: dict, budget: int) -> dict:
    trials = result["trials"]
    order = sorted(trials, key=lambda t: (t.datetime_complete or datetime.max, t.number))
    spent, best, at = 0, -math.inf, {}
    for t in order:
        spent += trained(t)
        for share in SHARES:
            if share not in at and spent > share * budget:
                at[share] = best  # the best of the trials completed within that share of the budget
        if t.state.name == "COMPLETE" and t.value is not None:
            best = max(best, t.value)
    for share in SHARES:
        at.setdefault(share, best)
    return {"best": best, "at": at, "epochs": spent, "trials": len(trials),
            "configs": sum("continues" not in t.user_attrs for t in trials),
            "complete": sum(t.state.name == "COMPLETE" for t in trials),
            "fail": sum(t.state.name == "FAIL" for t in trials), "wall_s": result["wall_s"]}


def check(result: dict) -> list[str]:
    """What looks wrong in what the study did: budget, claims, resumes, failures."""
    trials, problems = result["trials"], []
    by_number = {t.number: t for t in trials}
    epochs = result["epochs"]
    if result["code"] != 0:
        problems.append(f"worker exited with code {result['code']}")
    for t in trials:
        if t.state.name not in ("COMPLETE", "PRUNED"):
            problems.append(f"trial {t.number} {t.state.name}: {t.user_attrs.get('fail_reason', '')}")
    if result["max_epochs"]:
        claimed = sum(int(t.user_attrs.get("epochs_trained", 0)) for t in trials)
        if claimed != result["max_epochs"]:
            problems.append(f"epochs claimed {claimed} != max_epochs {result['max_epochs']}")
        for t in trials:
            steps = sum(step > t.user_attrs.get("resumed_from_epoch", 0) for step in t.intermediate_values)
            if "epochs_trained" in t.user_attrs and int(t.user_attrs["epochs_trained"]) != steps:
                problems.append(f"trial {t.number}: epochs_trained {t.user_attrs['epochs_trained']} != {steps} "
                                "epochs reported after its resume")
    continued = [t.user_attrs["continues"] for t in trials if "continues" in t.user_attrs]
    if len(continued) != len(set(continued)):
        problems.append(f"a trial continued twice: {sorted(continued)}")
    for t in trials:
        if "continues" not in t.user_attrs:
            continue
        before = by_number[t.user_attrs["continues"]]
        paused = before.user_attrs.get("paused_at_epoch")
        resumed = t.user_attrs.get("resumed_from_epoch")
        if paused is None or t.user_attrs.get("continued_at_epoch") != paused or resumed != paused:
            problems.append(f"trial {t.number} continues {before.number} (paused at {paused}) but continued_at "
                            f"{t.user_attrs.get('continued_at_epoch')}, resumed_from_epoch {resumed}")
            continue
        # the curve it replays: its own lineage's (ASHA, PBT without exploit) or its donor's (a PBT exploit)
        source = by_number.get(t.user_attrs.get("exploited_trial", before.number))
        replay = {s: v for s, v in t.intermediate_values.items() if s <= paused}
        expected = {s: v for s, v in source.intermediate_values.items() if s <= paused}
        if replay != expected:
            problems.append(f"trial {t.number}: replayed curve to epoch {paused} differs from trial {source.number}'s")
        if "exploited_trial" not in t.user_attrs and t.params != before.params:
            problems.append(f"trial {t.number}: params differ from trial {before.number} it continues")
    if result["pruner"].get("type") == "pbt":
        population = result["pruner"]["population"]
        members = {t.user_attrs.get("pbt_member") for t in trials}
        done = {t.user_attrs.get("pbt_member") for t in trials
                if t.state.name == "COMPLETE" and t.last_step == epochs}
        if members != set(range(population)) or done != set(range(population)):
            problems.append(f"pbt: members {sorted(members, key=str)}, trained to the end {sorted(done, key=str)}, "
                            f"population {population}")
    return problems


# ---------------------------------------------------------------------------------------------- tables


def spread(values: list[float], fmt: str) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-"
    mid = format(statistics.median(finite), fmt)
    if len(finite) == 1 or min(finite) == max(finite):
        return mid
    return f"{mid} ({format(min(finite), fmt)}–{format(max(finite), fmt)})"


def cell(v: float, fmt: str) -> str:
    return format(v, fmt) if math.isfinite(v) else "-"  # -: no trial trained to the end by then


def pct(v: float) -> float:
    return 100 * v if math.isfinite(v) else v


def print_tables(arms: list[str], summary: dict[str, list[dict]], budgets: dict[str, int], seeds: list[int]) -> None:
    base = [r["best"] for r in summary[REFERENCE]]
    print(f"| arm | max_epochs | best val acc % | gap to {REFERENCE}, pts | best @10% | best @25% | best @50% "
          "| trials started | configs started | trained to the end | s/study |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for arm in arms:
        rows = summary[arm]
        gap = [100 * (r["best"] - base[s]) for s, r in enumerate(rows)]
        cells = [arm, str(budgets[arm]), spread([pct(r["best"]) for r in rows], ".2f"), spread(gap, "+.2f"),
                 *(spread([pct(r["at"][share]) for r in rows], ".2f") for share in SHARES),
                 spread([r["trials"] for r in rows], ".0f"), spread([r["configs"] for r in rows], ".0f"),
                 spread([r["complete"] for r in rows], ".0f"),
                 f"{statistics.median(r['wall_s'] for r in rows):.0f}"]
        print("| " + " | ".join(cells) + " |")
    print()
    print("Per seed:")
    print()
    print("| arm | seed | epochs | best % | gap, pts | @10% | @25% | @50% | trials | configs | complete | s |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for arm in arms:
        for s, r in enumerate(summary[arm]):
            print(f"| {arm} | {seeds[s]} | {r['epochs']} | {cell(pct(r['best']), '.2f')} | "
                  f"{cell(100 * (r['best'] - base[s]), '+.2f')} | "
                  + " | ".join(cell(pct(r['at'][share]), ".2f") for share in SHARES)
                  + f" | {r['trials']} | {r['configs']} | {r['complete']} | {r['wall_s']:.0f} |")


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("digits", "cifar"), default="digits")
    parser.add_argument("--epochs", type=int, default=8, help="task.epochs of every study")
    parser.add_argument("--configs", type=int, default=24, help="configs none@full trains to the end")
    parser.add_argument("--fraction", type=float, default=0.25, help="every arm's max_epochs, as a share of "
                        "none@full's configs x epochs")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (seeds first .. first+n-1)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--per-class", type=int, default=1000, help="cifar: images per class")
    parser.add_argument("--archive", default=str(CIFAR_ARCHIVE), help="cifar: the ImageFolder tarball")
    args = parser.parse_args()
    if not 0 < args.fraction <= 1:
        raise SystemExit("--fraction must be in (0, 1]")
    budget = round(args.fraction * args.configs * args.epochs)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    if "pbt" in args.arms and budget // args.epochs < 2:
        raise SystemExit(f"pbt needs a population of 2 or more: max_epochs {budget} / epochs {args.epochs} < 2")

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import optuna
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

    arms = [REFERENCE] + list(dict.fromkeys(args.arms))
    budgets = {arm: (args.configs * args.epochs if arm == REFERENCE else budget) for arm in arms}
    print(command_line())
    print(f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; commit {commit()}")
    print(f"machine: {machine()}, no GPU used; torch {torch.__version__} ({torch.get_num_threads()} thread), "
          f"optuna {optuna.__version__}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-schedulers-") as tmp:
        os.environ["TUNER_CHECKPOINT_DIR"] = os.path.join(tmp, "checkpoints")
        os.environ["TUNER_DATA_CACHE"] = os.path.join(tmp, "data-cache")
        data_dir = extract_cifar(Path(args.archive), Path(tmp), args.per_class) if args.task == "cifar" else None
        base = base_study(args, data_dir)
        describe_task(base)
        pbt_population = budget // args.epochs
        print(f"studies: sampler tpe seeded by the seed, task.epochs {args.epochs}, seeds {seeds[0]}..{seeds[-1]}, one "
              f"in-process Worker each, SQLite in a temporary folder; {REFERENCE}: no pruning, n_trials "
              f"{args.configs} ({args.configs * args.epochs} epochs); every arm: max_epochs = {args.fraction:g} x "
              f"{args.configs} x {args.epochs} = {budget}, no trial cap"
              + (f" (pbt: population {pbt_population})" if "pbt" in arms else ""))
        print(flush=True)
        url = f"sqlite:///{tmp}/bench.db"
        results: dict[str, list[dict]] = {arm: [] for arm in arms}
        for seed in seeds:
            for arm in arms:
                raw = study_dict(base, f"sched-{arm}-seed{seed}", seed, arm, args.configs, budget)
                result = run_study(url, raw)
                results[arm].append(result)
                s = summarise(result, budgets[arm])
                problems = check(result)
                print(f"  seed {seed} {arm:<18} {result['wall_s']:6.0f} s  epochs {s['epochs']:4d}  trials "
                      f"{s['trials']:3d}  configs {s['configs']:3d}  complete {s['complete']:3d}  best "
                      f"{pct(s['best']):.2f}" + (f"  PROBLEMS: {problems}" if problems else ""), flush=True)
    wall = time.perf_counter() - started
    summary = {arm: [summarise(r, budgets[arm]) for r in runs] for arm, runs in results.items()}
    print()
    print(f"Medians over {args.seeds} seeds (min–max in brackets). Accuracy in % of the validation split. "
          f"best = best trial trained to epoch {args.epochs}; gap = best − {REFERENCE}'s best of the same seed; "
          "best @x = best among the trials completed by the time the arm had trained x of its own budget; "
          "- = no trial had been trained to the end by then.")
    print()
    print_tables(arms, summary, budgets, seeds)
    print()
    print("Checks (budget exact, epochs_trained = epochs trained, every continuation resumed where its trial "
          "paused and replays the curve of the weights it took, no FAIL, every PBT member trained to the end):")
    fine = True
    for arm in arms:
        for seed, result in zip(seeds, results[arm]):
            for problem in check(result):
                fine = False
                print(f"  {arm} seed {seed}: {problem}")
    if fine:
        print("  all passed")
    print()
    print("[pruner] tables as tuner stored them (defaults filled in):")
    for arm in arms:
        print(f"  {arm:<18} {json.dumps(results[arm][0]['pruner'])}")
    print(f"\nwall time: {wall / 60:.1f} min for {len(arms)} arms x {args.seeds} seeds")


def describe_task(base: dict) -> None:
    import torch

    from tuner.data.loader import open_batches
    from tuner.spec.config import parse_config

    raw = json.loads(json.dumps(base))
    raw["study"]["name"] = "describe"
    config = parse_config(raw, "bench/schedulers.py")
    data = open_batches(config.task, torch.device("cpu"))
    val = len(data.prepared.splits["val"])
    print(f"task: {config.task.dataset}, model {config.task.model}, batch {config.task.batch_size}, "
          f"{data.num_train} train / {val} validation images (one validation image = {100 / val:.2f} points), "
          f"space {', '.join(p.name for p in config.space if p.value is None)}")


if __name__ == "__main__":
    main()
