"""How tuner's worker loop scales against one PostgreSQL with max_connections = 100: W worker processes (1 to
256), a cheap objective, directly and through PgBouncer in transaction mode.

Each worker runs tuner's real loop (budget lock, ask, suggest, heartbeat, one report, tell, the reaper thread and
its lease) around an objective that does no compute, so a trial's wall time in the loop is the storage overhead
per trial. The workers are forked from one process that has imported tuner already (256 separate interpreters
would need ~20 GB here; forked, they share those pages). Prints per run: trials finished against the budget,
trials/s, per-trial overhead p50/p95 (ms), the most server connections seen, workers refused by the server
("too many clients"), and errors (non-zero exits, error lines, a budget mismatch).

    python bench/scale.py --workers 1 32 128 256 --trials 1000     # throwaway PostgreSQL + PgBouncer (pgserver)
    python bench/scale.py --profile                                # where one worker's per-trial time goes
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STUDY = """
[study]
name = "{name}"
n_trials = {trials}
sampler = "random"

[pruner]
type = "median"

[worker]
heartbeat_interval = 10
grace_period = 120
reaper_period = 10

[space]
lr = {{ low = 1e-4, high = 1e-1, log = true }}
width = {{ low = 8, high = 128, log = true }}
depth = {{ low = 1, high = 4 }}
dropout = {{ low = 0.0, high = 0.6 }}
weight_decay = {{ low = 1e-6, high = 1e-1, log = true }}
"""


def child(url: str, study: str, out: Path, retry_seconds: float) -> int:
    """One worker: tuner's Worker with a no-compute objective; writes its per-trial cycle times to `out`."""
    import logging
    import random

    from tuner.spec.space import suggest_hparams
    from tuner.fleet.worker import Worker

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", force=True)
    import warnings

    import optuna

    # as `tuner worker` does (cli._setup_logging): tuner uses these on purpose, with ask/tell
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    cycles: list[float] = []
    last = [time.perf_counter()]

    def make_objective(config):
        def objective(trial, should_stop, on_epoch):
            suggest_hparams(trial, config.space)
            trial.report(random.random(), 1)
            return random.random()
        return objective

    def on_trial(event) -> None:
        now = time.perf_counter()
        cycles.append(now - last[0])
        last[0] = now

    try:
        code = Worker(url, make_objective, on_trial=on_trial, db_retry_seconds=retry_seconds).run(study)
    except Exception as exc:  # what the CLI would print as its one error line
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    out.write_text(json.dumps({"cycles": cycles, "code": code}))
    return code


def spawn(url: str, study: str, workers: int, folder: Path, retry_seconds: float) -> None:
    """Fork `workers` children from this process, which imports tuner once first; wait for all of them."""
    import tuner.fleet.worker  # noqa: F401 (imported before forking: the children share these pages)

    gc.freeze()  # objects made so far stay out of the children's collections: their pages stay shared
    pids = []
    for i in range(workers):
        pid = os.fork()
        if pid == 0:
            err = os.open(folder / f"{i}.err", os.O_WRONLY | os.O_CREAT, 0o644)
            os.dup2(err, 2)
            code = 1
            try:
                code = child(url, study, folder / f"{i}.json", retry_seconds)
            finally:
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)


def run_one(url: str, workers: int, trials: int, count_connections, retry_seconds: float) -> dict:
    import subprocess
    import tomllib

    import optuna

    from tuner.spec.config import parse_config
    from tuner.store.storage import make_storage
    from tuner.fleet.study import launch_study

    name = f"scale-{workers}-{uuid.uuid4().hex[:6]}"
    config = parse_config(tomllib.loads(STUDY.format(name=name, trials=trials)), "bench")
    storage = make_storage(url)
    launch_study(storage, config)
    storage.engine.dispose()
    folder = Path(tempfile.mkdtemp(prefix=f"scale-{workers}-"))
    peak, done = [0], threading.Event()

    def watch() -> None:  # the most server connections seen while the workers run
        while not done.wait(0.5):
            try:
                peak[0] = max(peak[0], count_connections())
            except Exception:
                pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--spawn", name, "--workers", str(workers), "--folder", str(folder),
                    "--retry-seconds", str(retry_seconds)], env={**os.environ, "TUNER_STORAGE": url}, check=True)
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    cycles, errors, refused, messages = [], 0, 0, set()
    for i in range(workers):
        err = (folder / f"{i}.err").read_text() if (folder / f"{i}.err").exists() else ""
        result = json.loads((folder / f"{i}.json").read_text()) if (folder / f"{i}.json").exists() else {"code": 1}
        errors += result["code"] != 0
        # PostgreSQL refuses a connection past max_connections with one of these (the second when only the
        # superuser-reserved slots are left)
        refused += "too many clients" in err or "remaining connection slots are reserved" in err
        bad = [line for line in err.splitlines() if line.startswith(("ERROR", "Traceback", "error:"))]
        errors += len(bad)
        messages.update(line[:200] for line in bad)
        # each worker's first cycle includes its start-up (connect, load the study): not storage overhead
        cycles += result.get("cycles", [])[1:]
    study = optuna.load_study(study_name=name, storage=url)
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    errors += finished != trials
    for message in sorted(messages)[:5]:
        print(f"  [{workers} workers] {message}", file=sys.stderr)
    cycles_ms = sorted(c * 1000 for c in cycles) or [float("nan")]
    return {"workers": workers, "trials": finished, "wall_s": wall, "trials_per_s": finished / wall,
            "p50_ms": statistics.median(cycles_ms), "p95_ms": cycles_ms[int(0.95 * (len(cycles_ms) - 1))],
            "peak_connections": peak[0], "refused": refused, "errors": errors}


def profile(url: str, trials: int) -> None:
    """One worker under cProfile: where a trial's storage time goes."""
    import cProfile
    import pstats
    import tomllib

    from tuner.spec.config import parse_config
    from tuner.store.storage import make_storage
    from tuner.fleet.study import launch_study

    name = f"profile-{uuid.uuid4().hex[:6]}"
    launch_study(make_storage(url), parse_config(tomllib.loads(STUDY.format(name=name, trials=trials)), "bench"))
    profiler = cProfile.Profile()
    profiler.runcall(child, url, name, Path(tempfile.mkdtemp()) / "p.json", 60)
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(r"tuner/|optuna/study|optuna/trial|_cached_storage|sqlalchemy/engine/base", 40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 32, 128, 256])
    parser.add_argument("--trials", type=int, default=1000)
    # direct first: PgBouncer keeps idle server connections after its runs, which the direct runs would count
    parser.add_argument("--via", nargs="+", default=["direct", "pgbouncer"], choices=["pgbouncer", "direct"])
    parser.add_argument("--max-connections", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=20, help="PgBouncer's server connections")
    parser.add_argument("--repeat", type=int, default=1, help="runs per worker count (medians are printed)")
    parser.add_argument("--retry-seconds", type=float, default=600,
                        help="how long a worker rides out a refused connection (--db-retry-seconds)")
    parser.add_argument("--profile", action="store_true", help="profile one worker instead")
    parser.add_argument("--spawn", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.spawn:
        spawn(os.environ["TUNER_STORAGE"], args.spawn, args.workers[0], Path(args.folder), args.retry_seconds)
        return
    from pgbouncer import Fleet

    print(f"$ python {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} CPUs; PostgreSQL max_connections = {args.max_connections}; PgBouncer "
          f"transaction mode, {args.pool_size} server connections")
    with Fleet(max_connections=args.max_connections, pool_size=args.pool_size) as fleet:
        if args.profile:
            profile(fleet.direct_url, args.trials)
            return
        print(f"{'via':>9} {'workers':>7} {'trials':>6} {'wall s':>7} {'trials/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'peak conns':>10} {'refused':>7} {'errors':>6}")
        for via in args.via:
            url = fleet.pooled_url if via == "pgbouncer" else fleet.direct_url
            for workers in args.workers:
                runs = [run_one(url, workers, args.trials, fleet.server_connections, args.retry_seconds)
                        for _ in range(args.repeat)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                print(f"{via:>9} {workers:>7} {med['trials']:>6.0f} {med['wall_s']:>7.1f} {med['trials_per_s']:>8.1f} "
                      f"{med['p50_ms']:>8.1f} {med['p95_ms']:>8.1f} {max(r['peak_connections'] for r in runs):>10} "
                      f"{sum(r['refused'] for r in runs):>7} {sum(r['errors'] for r in runs):>6}", flush=True)


if __name__ == "__main__":
    main()
