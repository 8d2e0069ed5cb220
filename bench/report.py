"""How long `tuner report` takes on a 1,000-trial study.

Builds a synthetic study directly with Optuna in a temporary SQLite file, stored as `tuner launch-study` stores
it (the studies/digits.toml config, 15 epochs): 1,000 finished trials with a learning curve each, about 40 %
PRUNED (with pruned_at_epoch), 20 FAIL trials (stale workers, CUDA OOM) each retried and resumed, and the user
attributes a worker records (param_count, wall_time_s, epochs_run, device). Then times building the HTML report
(median of --repeats runs) and, separately, the PNGs.

    python bench/report.py                  # 1,000 trials
    python bench/report.py --trials 200 --keep /tmp/bench-report   # keep the study and the report
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
STALE = "no heartbeat for 60 s (its worker died or froze)"
OOM = "CUDA out of memory: Tried to allocate 2.00 GiB"


def _param_count(width: int, depth: int) -> int:
    """Roughly tuner's CNN: depth 3x3 conv blocks, block i has width * 2**i channels, then a 10-way head."""
    channels = [1] + [width * 2**i for i in range(depth)]
    return sum(9 * a * b + b for a, b in zip(channels, channels[1:])) + 10 * channels[-1] + 10


def synthetic_trials(n: int, epochs: int, seed: int = 0) -> list[FrozenTrial]:
    rng = random.Random(seed)
    dists = {"lr": FloatDistribution(1e-4, 3e-1, log=True), "width": IntDistribution(8, 128, log=True),
             "depth": IntDistribution(1, 4), "dropout": FloatDistribution(0.0, 0.6),
             "weight_decay": FloatDistribution(1e-6, 1e-1, log=True)}
    clock = datetime.datetime(2025, 1, 1)
    trials, finals, fails = [], [], set(rng.sample(range(n), 20))
    for i in range(n):
        params = {k: _sample(rng, d) for k, d in dists.items()}
        count = _param_count(params["width"], params["depth"])
        final = 0.98 - 0.08 * (math.log10(params["lr"]) + 2) ** 2 + 0.01 * math.log10(count / 1e4)
        final = min(0.995, max(0.1, final + rng.gauss(0, 0.01)))
        curve = [final * (1 - math.exp(-(e + 1) / 2.5)) + rng.gauss(0, 0.005) for e in range(epochs)]
        stop = epochs
        if len(finals) >= 5 and final < statistics.median(finals[-50:]) and rng.random() < 0.8:
            stop = rng.randint(3, epochs - 1)  # the median pruner's verdict at some epoch
        finals.append(final)
        per_epoch = 0.5 + count / 2e5  # s
        device = f"cuda:{i % 4}"
        attrs = {"param_count": count, "trainable_params": count, "device": device}
        resumed = 0
        if i in fails:  # a dead worker or an OOM part way through, then a retry that resumes from the checkpoint
            resumed = rng.randint(1, stop - 1)
            trials.append(_frozen(TrialState.FAIL, None, params, dists, curve[:resumed], clock,
                                  {**attrs, "epochs_run": resumed, "wall_time_s": per_epoch * resumed,
                                   "fail_reason": STALE if rng.random() < 0.7 else OOM}, {}))
            attrs = {**attrs, "resumed_from_epoch": resumed}
        attrs.update(epochs_run=stop, wall_time_s=round(per_epoch * (stop - resumed), 3))
        if stop < epochs:
            attrs["pruned_at_epoch"] = stop
        system = {"failed_trial": len(trials) - 1, "retry_history": [len(trials) - 1]} if resumed else {}
        state = TrialState.PRUNED if stop < epochs else TrialState.COMPLETE
        trials.append(_frozen(state, curve[stop - 1], params, dists, curve[:stop], clock, attrs, system))
        clock += datetime.timedelta(seconds=per_epoch * stop / 4)  # 4 GPUs
    return trials


def _sample(rng: random.Random, d: FloatDistribution | IntDistribution) -> float | int:
    value = math.exp(rng.uniform(math.log(d.low), math.log(d.high))) if d.log else rng.uniform(d.low, d.high)
    return int(round(value)) if isinstance(d, IntDistribution) else value


def _frozen(state: TrialState, value: float | None, params: dict, dists: dict, curve: list[float],
            start: datetime.datetime, attrs: dict, system: dict) -> FrozenTrial:
    end = start + datetime.timedelta(seconds=attrs.get("wall_time_s", 1.0))
    return FrozenTrial(number=0, state=state, value=value, datetime_start=start, datetime_complete=end,
                       params=params, distributions=dists, user_attrs=attrs, system_attrs=system,
                       intermediate_values={e + 1: v for e, v in enumerate(curve)}, trial_id=0)


def make_study(url: str, name: str, n: int) -> None:
    from tuner.spec.config import load_config
    from tuner.store.storage import make_storage
    from tuner.fleet.study import launch_study

    config = load_config(REPO / "studies" / "digits.toml", name=name)
    config = dataclasses.replace(config, study=dataclasses.replace(config.study, n_trials=n))
    storage = make_storage(url)
    launch_study(storage, config)
    optuna.load_study(study_name=name, storage=storage).add_trials(synthetic_trials(n, config.task.epochs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="Write the study (bench.db) and the report here.")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    from tuner.report.build import build_report
    from tuner.store.storage import make_storage

    work = args.keep or Path(tempfile.mkdtemp(prefix="tuner-bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{work / 'bench.db'}"
    started = time.perf_counter()
    make_study(url, "bench-report", args.trials)
    print(f"study: {args.trials} finished trials + 20 failed, written in {time.perf_counter() - started:.1f} s")
    times = []
    for _ in range(args.repeats):
        storage = make_storage(url)  # a fresh storage each run: nothing cached between runs
        t0 = time.perf_counter()
        result = build_report(storage, "bench-report", work / "report.html")
        times.append(time.perf_counter() - t0)
        storage.engine.dispose()
    t0 = time.perf_counter()
    with_pngs = build_report(make_storage(url), "bench-report", work / "report.html", png_dir=work / "png")
    png_time = time.perf_counter() - t0
    print(f"HTML report ({result.html.stat().st_size / 1e6:.1f} MB): median {statistics.median(times):.2f} s "
          f"of {args.repeats} runs ({', '.join(f'{t:.2f}' for t in times)} s)")
    print(f"HTML report + {len(with_pngs.pngs)} PNGs: {png_time:.2f} s (one run)")
    print(f"files in {work}")


if __name__ == "__main__":
    main()
