"""How tuner's worker loop scales against one PostgreSQL: W worker processes, a cheap objective.

Each worker runs tuner's real loop (budget lock, ask, suggest, heartbeat, one report, tell, reaper thread);
the objective does no compute, so a trial's wall time in the loop is the storage overhead per trial.
Prints trials/s, per-trial overhead p50/p95 (ms), and errors (non-zero exits, error lines, budget mismatch).

    python bench/scale.py --workers 8 32 64 --trials 1000            # throwaway PostgreSQL via pgserver
    TUNER_STORAGE=postgresql+psycopg2://... python bench/scale.py     # your PostgreSQL (a new study per run)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STUDY = """
[study]
name = "{name}"
n_trials = {trials}
sampler = "random"

[pruner]
type = "median"

[worker]
heartbeat_interval = 10
grace_period = 60
reaper_period = 10

[space]
lr = {{ low = 1e-4, high = 1e-1, log = true }}
width = {{ low = 8, high = 128, log = true }}
depth = {{ low = 1, high = 4 }}
dropout = {{ low = 0.0, high = 0.6 }}
weight_decay = {{ low = 1e-6, high = 1e-1, log = true }}
"""


def child(url: str, study: str) -> None:
    """One worker process: tuner's Worker with a no-compute objective; prints per-trial cycle times."""
    import logging
    import random

    from tuner.space import suggest_hparams
    from tuner.worker import Worker

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
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

    code = Worker(url, make_objective, on_trial=on_trial, db_retry_seconds=60).run(study)
    print(json.dumps({"cycles": cycles}))
    sys.exit(code)


def run_one(url: str, workers: int, trials: int) -> dict:
    import optuna

    from tuner.config import parse_config
    from tuner.storage import make_storage
    from tuner.study import launch_study
    import tomllib

    name = f"scale-{workers}-{uuid.uuid4().hex[:6]}"
    config = parse_config(tomllib.loads(STUDY.format(name=name, trials=trials)), "bench")
    launch_study(make_storage(url), config)
    env = {**os.environ, "TUNER_STORAGE": url}
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--child", name], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    results = [p.communicate() for p in procs]
    wall = time.perf_counter() - started
    cycles, errors, messages = [], 0, set()
    for p, (out, err) in zip(procs, results):
        errors += p.returncode != 0
        bad = [line for line in err.splitlines() if line.startswith(("ERROR", "Traceback", "error:", "WARNING"))]
        errors += sum(1 for line in bad if not line.startswith("WARNING"))
        messages.update(line[:300] for line in bad)
        if p.returncode != 0 or any(line.startswith("Traceback") for line in bad):
            log = Path(tempfile.gettempdir()) / f"scale-{workers}-worker-{p.pid}.log"
            log.write_text(err)
            messages.add(f"worker log: {log}")
        for line in out.splitlines():
            if line.startswith("{"):
                # each worker's first cycle includes its start-up (imports, connect): not storage overhead
                cycles += json.loads(line)["cycles"][1:]
    study = optuna.load_study(study_name=name, storage=url)
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    errors += finished != trials
    for message in sorted(messages)[:10]:
        print(f"  [{workers} workers] {message}", file=sys.stderr)
    cycles_ms = sorted(c * 1000 for c in cycles)
    return {"workers": workers, "trials": finished, "wall_s": wall, "trials_per_s": finished / wall,
            "p50_ms": statistics.median(cycles_ms),
            "p95_ms": cycles_ms[int(0.95 * (len(cycles_ms) - 1))], "errors": errors}


def throwaway_postgres(max_connections: int) -> str:
    import pgserver

    pgdata = Path(tempfile.mkdtemp()) / "pg"
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    # 4 connections per worker (main, heartbeat, reaper, budget lock); the default 100 serves ~24 workers
    server.psql(f"ALTER SYSTEM SET max_connections = {max_connections};")
    pgserver._commands.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pgdata, user=server.system_user)
    throwaway_postgres.server = server  # keep the handle alive: the server stops when it is collected
    print(f"throwaway PostgreSQL, max_connections = {server.psql('SHOW max_connections;').split()[2]}")
    return server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1, help="runs per worker count (medians are printed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(os.environ["TUNER_STORAGE"], args.child)
        return
    url = os.environ.get("TUNER_STORAGE") or throwaway_postgres(4 * max(args.workers) + 20)
    print(f"{'workers':>7} {'trials':>6} {'wall s':>7} {'trials/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'errors':>6}")
    for workers in args.workers:
        runs = [run_one(url, workers, args.trials) for _ in range(args.repeat)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{workers:>7} {med['trials']:>6.0f} {med['wall_s']:>7.1f} {med['trials_per_s']:>8.1f} "
              f"{med['p50_ms']:>7.1f} {med['p95_ms']:>7.1f} {sum(r['errors'] for r in runs):>6}")


if __name__ == "__main__":
    main()
