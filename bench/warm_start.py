"""Warm start against a cold start, with real training on scikit-learn's digits (CPU, one torch thread).

A finished source study (--source-trials configs of studies/digits.toml's space, TPE seeded 100, no pruning,
task.epochs --epochs) is trained once. Then per seed s: a cold study (TPE seeded s, n_trials --trials) and a warm
one (the same, plus `warm_start = ["source"]`: the source's COMPLETE trials imported at launch). Both are served to
the end by tuner's own Worker in this process (budget lock, ask, TPE, tell), on SQLite in a temporary folder.
Printed per seed and as a mean: the mean val_accuracy of the first --first trials each study trained itself (by
trial number; imported ones excluded), and the best of all it trained; then checks that the warm study trained
exactly --trials trials, none of them an imported one again, and that its best is one it trained.

    python bench/warm_start.py                  # 5 seeds, 20 source trials, 8 per study: ~10 min on 2 busy cores
    python bench/warm_start.py --quick          # 2 seeds, 10 source trials, 5 per study
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import tomllib
import warnings
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from pruning import command_line, machine, one_thread  # noqa: E402 (the same header lines as the other tables)
from schedulers import commit  # noqa: E402

STUDY_FILE = REPO / "studies" / "digits.toml"


def study_dict(name: str, seed: int, trials: int, epochs: int, warm: bool) -> dict:
    raw = tomllib.loads(STUDY_FILE.read_text())
    raw["study"].update(name=name, seed=seed, sampler="tpe", n_trials=trials)
    if warm:
        raw["study"]["warm_start"] = ["source"]
    raw["pruner"] = {"type": "none"}  # every trial trains to the end: its value is comparable to the others'
    raw["task"]["epochs"] = epochs
    return raw


def run_study(url: str, raw: dict) -> tuple[list, str, float]:
    """Launch (printing what the warm start took), serve to the end in this process; the trials, by number."""
    import optuna
    import torch

    from tuner.engine.objective import make_objective
    from tuner.fleet.study import best_of, launch_study
    from tuner.fleet.worker import Worker
    from tuner.spec.config import parse_config
    from tuner.store.storage import make_storage

    config = parse_config(raw, "bench/warm_start.py")
    storage = make_storage(url)
    launched = launch_study(storage, config, check_paths=False)
    if launched.warm_start:
        print(f"  {config.study.name}: {launched.warm_start}", flush=True)
    started = time.perf_counter()
    code = Worker(url, lambda c: make_objective(c, torch.device("cpu")), db_retry_seconds=30).run(config.study.name)
    if code >= 128:
        raise SystemExit(f"worker stopped by signal {code - 128} on study {config.study.name!r}")
    wall = time.perf_counter() - started
    trials = optuna.load_study(study_name=config.study.name, storage=url).get_trials(deepcopy=False)
    best = best_of(storage, config.study.name)
    storage.engine.dispose()
    return sorted(trials, key=lambda t: t.number), best, wall


def own(trials: list) -> list:
    from tuner.fleet.imported import is_imported

    return [t for t in trials if not is_imported(t)]


def summary(trials: list, first: int) -> dict:
    mine = own(trials)
    values = [t.value for t in mine if t.value is not None]
    return {"first": statistics.mean(values[:first]), "best": max(values), "trained": len(mine),
            "imported": len(trials) - len(mine)}


def check(trials: list, best, n: int) -> list[str]:
    from tuner.fleet.imported import is_imported

    problems = []
    mine = own(trials)
    if len(mine) != n or any(t.state.name != "COMPLETE" for t in mine):
        problems.append(f"trained {len(mine)} trials, states {sorted({t.state.name for t in mine})}")
    if is_imported(best):
        problems.append(f"best is imported trial {best.number}")
    imported = [t for t in trials if is_imported(t)]
    if any(t.number > min(m.number for m in mine) for t in imported):
        problems.append("an imported trial after a trained one")
    return problems


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--source-trials", type=int, default=20)
    p.add_argument("--trials", type=int, default=8, help="n_trials of each cold and warm study")
    p.add_argument("--first", type=int, default=5, help="the first K trained trials whose values are averaged")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="2 seeds, 10 source trials, 5 per study")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.source_trials, args.trials, args.first = 2, 10, 5, 4
    one_thread()
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # as tuner's CLI does
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    print(command_line())
    print(f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; commit {commit()}")
    print(f"machine: {machine()}, no GPU used; torch {torch.__version__} ({torch.get_num_threads()} thread), "
          f"optuna {optuna.__version__}")
    print(f"digits, studies/digits.toml's space, cnn, task.epochs {args.epochs}, no pruning, TPE; source: "
          f"{args.source_trials} trials, seed 100; per seed: cold and warm, n_trials {args.trials}; mean of the "
          f"first {args.first} trained", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        os.environ["TUNER_CHECKPOINT_DIR"] = os.path.join(tmp, "checkpoints")
        os.environ["TUNER_DATA_CACHE"] = os.path.join(tmp, "data-cache")
        url = f"sqlite:///{tmp}/bench.db"
        source, source_best, wall = run_study(url, study_dict("source", 100, args.source_trials, args.epochs, False))
        print(f"  source: {len(source)} trials in {wall:.0f} s, best {100 * source_best.value:.2f}%, mean "
              f"{100 * statistics.mean(t.value for t in source):.2f}%", flush=True)
        for seed in range(args.seeds):
            row = {"seed": seed}
            for arm in ("cold", "warm"):
                trials, best, wall = run_study(url, study_dict(f"{arm}-{seed}", seed, args.trials, args.epochs,
                                                               arm == "warm"))
                row[arm] = summary(trials, args.first)
                row[arm]["problems"] = check(trials, best, args.trials)
                row[arm]["wall"] = wall
            rows.append(row)
            c, w = row["cold"], row["warm"]
            print(f"  seed {seed}: first {args.first} cold {100 * c['first']:.2f}% warm {100 * w['first']:.2f}%; "
                  f"best cold {100 * c['best']:.2f}% warm {100 * w['best']:.2f}%; trained {c['trained']}/"
                  f"{w['trained']}, imported {w['imported']}; {c['wall']:.0f}/{w['wall']:.0f} s"
                  + "".join(f"  PROBLEMS {arm}: {row[arm]['problems']}" for arm in ("cold", "warm")
                            if row[arm]["problems"]), flush=True)
    print()
    print(f"| seed | cold: mean of first {args.first}, % | warm: mean of first {args.first}, % | warm − cold, pts "
          "| cold: best, % | warm: best (trained here), % |")
    print("|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        c, w = r["cold"], r["warm"]
        print(f"| {r['seed']} | {100 * c['first']:.2f} | {100 * w['first']:.2f} | {100 * (w['first'] - c['first']):+.2f}"
              f" | {100 * c['best']:.2f} | {100 * w['best']:.2f} |")
    mean = lambda arm, key: 100 * statistics.mean(r[arm][key] for r in rows)  # noqa: E731
    print(f"| mean | {mean('cold', 'first'):.2f} | {mean('warm', 'first'):.2f} | "
          f"{mean('warm', 'first') - mean('cold', 'first'):+.2f} | {mean('cold', 'best'):.2f} | "
          f"{mean('warm', 'best'):.2f} |")
    print(json.dumps({"problems": [r[a]["problems"] for r in rows for a in ("cold", "warm") if r[a]["problems"]]}))


if __name__ == "__main__":
    main()
