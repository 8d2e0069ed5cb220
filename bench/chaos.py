"""Chaos soak: real workers on a real study on PostgreSQL, with faults injected at random (seeded) moments.

It starts its own throwaway PostgreSQL (pgserver, in a temporary folder: it restarts the server, so it always owns
it) with a password-protected `tuner` role, launches a digits study of short trials (a tiny CNN, EPOCHS epochs,
1 s heartbeats, a 6 s grace period, a 1 s reaper period), and starts `--workers` real
`tuner worker --study S --cpu --threads 1` processes. Once the first epoch is reported, for `--duration` seconds
it injects faults at moments drawn from `random.Random(--seed)` (the schedule — moments, kinds, victims, pause and
down times — is fixed by the seed; only what each fault hits depends on the machine's speed):

  sigkill     SIGKILL a random worker and start a new one in its place
  sigstop     SIGSTOP a random worker for longer than the grace period (+ heartbeat + reaper period), then SIGCONT
  pg-restart  restart PostgreSQL (`pg_ctl -m fast stop`, down 1-3 s, start again on the same socket)
  terminate   terminate every backend of the study's database (pg_terminate_backend, as the admin)

An outage (pg-restart, terminate) due while a new worker is still starting (before it logs "serving study") waits
until it serves: a worker checks the database once at start-up without retrying (a wrong URL fails at once), so an
outage then is a start-up failure by design, not a fault a running worker must ride out. Each postponement is
printed; on a busy machine it stretches the window (its real length is printed).

The budget. The study is launched with a budget it cannot spend within the window whatever the machine's speed
(100,000 trials), so faults always land on a study in full flight. When the window is over (and every paused
worker has been continued) the soak sets the final budget with tuner's own `extend_study` (what `tuner extend`
runs) to what is committed at that moment — finished, running and queued retries — plus 2 x workers new trials,
and waits for the workers to finish it and exit by themselves. The exact-budget check is then exact whatever
the speed: COMPLETE + PRUNED must equal the stored n_trials. (The budget therefore closes after the faults: a
fault that lands on the last budget slots is not exercised here.)

Then it checks, and prints with their figures:
  exact budget                COMPLETE + PRUNED == n_trials
  nothing left running        no trial RUNNING or WAITING
  trial numbers               0..N-1, each once
  complete curves             every COMPLETE trial has intermediate values for exactly epochs 1..E (and every
                              PRUNED one for exactly 1..its pruned_at_epoch)
  one result per lineage      no lineage (a trial and its retries) has two COMPLETE/PRUNED trials, and every
                              lineage has one unless its retries ran out
  retries match failures      every FAIL with retries left has exactly one retry, one whose are used up none
  failures are ours           every FAIL is "no heartbeat" and was run by a worker we SIGKILLed or SIGSTOPped,
                              at most one per such fault: restarts and terminated backends fail nothing
  paused workers drop results every "dropping its result" (LOST) line is from a worker we SIGSTOPped, about a trial
                              failed while it was paused, and every such trial of a worker we did not also kill
                              was logged LOST by it
  exits                       every worker exited 0 except those we SIGKILLed (-9)
  clean logs                  no Traceback, no error: line, no password in any worker's log

It prints the faults injected (each with its time, counts by kind), the trials, the FAILs by reason and the
invariant table, and a line `CHAOS-SUMMARY {json}` with all of it (tests/test_chaos.py reads it). Exit code 1 if
any invariant fails (the worker logs are then kept and their folder printed). The study's workers run this
checkout's tuner (PYTHONPATH).

    python bench/chaos.py                          # 10 minutes of faults, 8 workers, seed 1
    python bench/chaos.py --duration 120 --seed 7  # what the test suite runs
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

PASSWORD = "pw-" + uuid.uuid4().hex  # a real secret: the server checks it (scram-sha-256)
STUDY_NAME = "chaos"
EPOCHS = 3
HEARTBEAT, GRACE, REAPER = 1, 6, 1  # [worker] heartbeat_interval, grace_period, reaper_period (seconds)
BATCH = 32  # ~45 steps an epoch: a trial takes seconds, so most kills and pauses land mid-trial
MAX_RETRIES = 2
LAUNCH_BUDGET = 100_000  # not reachable within any window: the real budget is set when the window ends
KINDS = ("sigkill", "sigstop", "pg-restart", "terminate")
OUTAGES = ("pg-restart", "terminate")
STALE_REASON = f"no heartbeat for {GRACE} s (its worker died or froze)"  # tuner.fleet.recovery.STALE

STUDY = f"""\
[study]
name = "{STUDY_NAME}"
n_trials = {LAUNCH_BUDGET}
seed = 0
max_retries = {MAX_RETRIES}

[pruner]
type = "median"
n_startup_trials = 5
n_warmup_steps = 2

[task]
dataset = "digits"
model = "cnn"
epochs = {EPOCHS}
batch_size = {BATCH}

[worker]
heartbeat_interval = {HEARTBEAT}
grace_period = {GRACE}
reaper_period = {REAPER}

[space]
lr = {{ low = 1e-3, high = 1e-1, log = true }}
width = {{ low = 4, high = 8 }}
depth = 1
dropout = {{ low = 0.0, high = 0.3 }}
weight_decay = {{ low = 1e-6, high = 1e-2, log = true }}
"""


def say(message: str = "") -> None:
    print(message, flush=True)


# --- PostgreSQL that this script owns ------------------------------------------------------------------------


class Postgres:
    """A throwaway server in its own folder with a `tuner` role that must log in with PASSWORD (the pattern of
    tests/conftest.py: new_pgdata, start_pgserver, admin_and_user_urls, create_database)."""

    def __init__(self) -> None:
        import pgserver

        # Outside any pytest tree: as root, pgserver runs PostgreSQL as another user and opens the folders on the
        # way up for it.
        self.pgdata = Path(tempfile.mkdtemp(prefix="tuner-chaos-pg-"))
        self.server = pgserver.get_server(self.pgdata, cleanup_mode="delete")
        self.system_user = self.server.system_user
        hba = self.pgdata / "pg_hba.conf"
        # First matching line wins: the tuner role must authenticate, everyone else stays on trust.
        hba.write_text("local all tuner scram-sha-256\n" + hba.read_text())
        self.server.psql(f"CREATE ROLE tuner LOGIN CREATEDB PASSWORD '{PASSWORD}'; SELECT pg_reload_conf();")
        uri = self.server.get_uri()
        self.socket_dir = re.search(r"host=([^&]+)", uri).group(1)
        admin = make_url(uri.replace("postgresql://", "postgresql+psycopg2://", 1))
        self.admin_url = admin.render_as_string(hide_password=False)
        self.user_base = admin.set(username="tuner", password=PASSWORD)

    def create_database(self, name: str) -> str:
        engine = sqlalchemy.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE {name} OWNER "tuner"')
        engine.dispose()
        return self.user_base.set(database=name).render_as_string(hide_password=False)

    def _pg_ctl(self, args: list[str]) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(args, pgdata=self.pgdata, user=self.system_user, timeout=120)

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl(["-w", "-m", mode, "stop"])

    def start(self) -> None:
        self._pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start"])

    def terminate_backends(self, database: str) -> int:
        engine = sqlalchemy.create_engine(self.admin_url, isolation_level="AUTOCOMMIT",
                                          poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                return conn.execute(sqlalchemy.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": database}).scalar()
        finally:
            engine.dispose()

    def close(self) -> None:
        """Stop whatever server runs in pgdata now (a restart is behind pgserver's back) and remove the folder."""
        try:
            self.stop("immediate")
        except Exception:  # already stopped
            pass
        shutil.rmtree(self.pgdata, ignore_errors=True)


# --- workers ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Worker:
    index: int
    proc: subprocess.Popen
    log: Path
    killed: bool = False  # by our SIGKILL
    stopped: bool = False  # SIGSTOPped right now
    stops: int = 0
    code: int | None = None
    _serving: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def serving(self) -> bool:
        """It has logged "serving study": past its connection checks and set-up, in its trial loop."""
        self._serving = self._serving or "serving study" in self.log.read_text()
        return self._serving


class Fleet:
    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs = env, logs
        self.workers: list[Worker] = []

    def start(self) -> Worker:
        index = len(self.workers)
        log = self.logs / f"worker-{index:02d}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuner", "worker", "--study", STUDY_NAME, "--cpu", "--threads", "1"],
            env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        worker = Worker(index, proc, log)
        self.workers.append(worker)
        return worker

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    def by_pid(self) -> dict[int, Worker]:
        return {w.pid: w for w in self.workers}

    def kill_all(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGCONT)
                w.proc.kill()
                w.proc.wait()


# --- the fault schedule ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Fault:
    at: float  # seconds into the window, as planned
    kind: str
    pick: float  # which candidate worker: candidates[int(pick * len(candidates))]
    length: float  # sigstop: seconds paused; pg-restart: seconds down
    # what happened
    started: float | None = None
    wall: datetime.datetime | None = None
    victim: int | None = None  # worker index
    pid: int | None = None
    detail: str = ""
    postponed: float = 0.0  # an outage waits while a (replacement) worker is still starting


def schedule(rng: random.Random, duration: float) -> list[Fault]:
    """Moments 3-13 s apart (8 s on average); kinds drawn from a shuffled bag of all four, refilled when empty,
    so faults 1-4, 5-8, ... each hold every kind once (a 120 s window has all four kinds three times or more)."""
    faults, bag, at = [], [], rng.uniform(2, 6)
    while at < duration:
        if not bag:
            bag = list(KINDS)
            rng.shuffle(bag)
        kind = bag.pop()
        length = (GRACE + HEARTBEAT + REAPER + rng.uniform(2, 6)) if kind == "sigstop" else rng.uniform(1, 3)
        faults.append(Fault(round(at, 2), kind, rng.random(), round(length, 2)))
        at += rng.uniform(3, 13)
    return faults


# --- the soak --------------------------------------------------------------------------------------------------


def wait_for_first_epoch(fleet: Fleet, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if any(re.search(r"trial \d+ epoch 1/", w.log.read_text()) for w in fleet.workers):
            return time.monotonic() - started
        if not fleet.alive():
            break
        time.sleep(0.5)
    tails = "\n".join(f"--- {w.log.name}\n{w.log.read_text()[-1500:]}" for w in fleet.workers)
    raise SystemExit(f"no worker reported an epoch within {timeout:.0f} s\n{tails}")


def inject(fault: Fault, fleet: Fleet, pg: Postgres, database: str, rng_pauses: list, t0: float) -> None:
    fault.started = time.monotonic() - t0
    fault.wall = datetime.datetime.now()
    if fault.kind in ("sigkill", "sigstop"):
        candidates = [w for w in fleet.alive() if not w.stopped]
        victim = candidates[int(fault.pick * len(candidates))]
        fault.victim, fault.pid = victim.index, victim.pid
        if fault.kind == "sigkill":
            victim.proc.send_signal(signal.SIGKILL)
            victim.killed = True
            victim.proc.wait()
            new = fleet.start()
            fault.detail = f"worker {victim.index} (pid {victim.pid}) killed; worker {new.index} (pid {new.pid}) started"
        else:
            victim.proc.send_signal(signal.SIGSTOP)
            victim.stopped, victim.stops = True, victim.stops + 1
            rng_pauses.append((fault.started + fault.length, victim, fault))
            fault.detail = f"worker {victim.index} (pid {victim.pid}) stopped for {fault.length:.1f} s"
    elif fault.kind == "pg-restart":
        before = time.monotonic()
        pg.stop("fast")
        stopped = time.monotonic()
        time.sleep(fault.length)
        pg.start()
        fault.detail = (f"PostgreSQL down {time.monotonic() - stopped:.1f} s (stop took {stopped - before:.1f} s, "
                        f"planned {fault.length:.1f} s down)")
    else:
        killed = pg.terminate_backends(database)
        fault.detail = f"{killed} backends of database {database} terminated"
    if fault.postponed:
        fault.detail += f" (postponed {fault.postponed:.1f} s: a new worker was still starting)"
    say(f"  [{fault.started:7.1f} s] {fault.kind:<10} {fault.detail}")


def run_window(faults: list[Fault], fleet: Fleet, pg: Postgres, database: str, duration: float) -> float:
    pauses: list = []  # (due, worker, fault)
    t0 = time.monotonic()
    pending = list(faults)
    while pending or pauses:
        now = time.monotonic() - t0
        for item in [p for p in pauses if p[0] <= now]:
            _, worker, fault = item
            worker.proc.send_signal(signal.SIGCONT)
            worker.stopped = False
            pauses.remove(item)
            paused = now - fault.started
            fault.detail += f" (continued after {paused:.1f} s)"
            say(f"  [{now:7.1f} s] {'sigcont':<10} worker {worker.index} (pid {worker.pid}) after {paused:.1f} s")
        if pending and pending[0].at <= now:
            fault = pending[0]
            starting = [w for w in fleet.alive() if not w.serving()]
            if fault.kind in OUTAGES and starting and now - fault.at < 600:
                # A worker connects without retrying until it serves (tuner fails fast on a wrong URL): an
                # outage then would be a start-up failure, not a fault a running worker must ride out.
                fault.postponed = now - fault.at
            else:
                inject(pending.pop(0), fleet, pg, database, pauses, t0)
                continue
        for w in fleet.workers:
            if w.code is None and w.proc.poll() is not None and not w.killed:
                w.code = w.proc.returncode
                say(f"  [{now:7.1f} s] worker {w.index} (pid {w.pid}) EXITED by itself with code {w.code}")
        time.sleep(0.05)
    # the last fault may be a pause that ends after the window
    return max(duration, time.monotonic() - t0)


def with_db_retry(fn, what: str, timeout: float = 300):
    """The bench's own DB steps after the window (the server is up, but be patient with a busy machine)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except sqlalchemy.exc.OperationalError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"database unreachable for {timeout} s ({what}): {exc}") from None
            time.sleep(1)


def set_final_budget(url: str, workers: int) -> tuple[int, dict]:
    """Lower the budget to what is committed now plus 2 per worker (tuner's extend refuses below committed)."""
    from tuner.store.budget import trial_counts
    from tuner.errors import TunerError
    from tuner.fleet.lifecycle import extend_study
    from tuner.store.storage import make_storage

    storage = make_storage(url)
    try:
        study_id = storage.get_study_id_from_name(STUDY_NAME)
        for _ in range(20):
            counts = trial_counts(storage, study_id)
            target = counts.committed + 2 * workers
            try:
                extend_study(storage, STUDY_NAME, target)
                return target, dict(counts.by_state)
            except TunerError as exc:  # trials started between the count and the lock: count again
                say(f"  extend refused ({exc}); counting again")
        raise SystemExit("could not set the final budget")
    finally:
        storage.engine.dispose()


def wait_for_workers(fleet: Fleet, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for w in fleet.workers:
        if w.killed:
            w.code = w.proc.wait()
            continue
        try:
            w.code = w.proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    return True


# --- the invariants --------------------------------------------------------------------------------------------


def lost_lines(log: Path) -> list[int]:
    """Trials a worker dropped because they were failed while it was unresponsive (tuner.fleet.worker._lost)."""
    return [int(n) for n in re.findall(r"trial (\d+) was failed by another worker while this one was unresponsive",
                                       log.read_text())]


def check(url: str, fleet: Fleet, faults: list[Fault]) -> tuple[list[tuple[str, bool, str]], dict]:
    from optuna.trial import TrialState

    from tuner.fleet.lineage import lineage_number
    from tuner.store.storage import make_storage
    from tuner.fleet.study import stored_config

    storage = make_storage(url)
    try:
        study_id = storage.get_study_id_from_name(STUDY_NAME)
        trials = storage.get_all_trials(study_id)
        n_trials = stored_config(storage, STUDY_NAME).study.n_trials
    finally:
        storage.engine.dispose()
    by_number = {t.number: t for t in trials}
    states = collections.Counter(t.state.name for t in trials)
    results: list[tuple[str, bool, str]] = []

    def record(name: str, ok: bool, detail: str) -> None:
        results.append((name, bool(ok), detail))

    finished = states["COMPLETE"] + states["PRUNED"]
    record("exact budget", finished == n_trials,
           f"COMPLETE {states['COMPLETE']} + PRUNED {states['PRUNED']} = {finished}, n_trials {n_trials}")
    record("nothing left running", states["RUNNING"] == states["WAITING"] == 0,
           f"RUNNING {states['RUNNING']}, WAITING {states['WAITING']}")
    record("trial numbers", sorted(by_number) == list(range(len(trials))),
           f"{len(trials)} trials numbered 0..{len(trials) - 1}, no gap, no duplicate")

    bad_complete = [t.number for t in trials if t.state == TrialState.COMPLETE
                    and sorted(t.intermediate_values) != list(range(1, EPOCHS + 1))]
    bad_pruned = [t.number for t in trials if t.state == TrialState.PRUNED
                  and sorted(t.intermediate_values) != list(range(1, t.user_attrs.get("pruned_at_epoch", -1) + 1))]
    record("complete curves", not bad_complete and not bad_pruned,
           f"{states['COMPLETE']} COMPLETE with epochs exactly 1..{EPOCHS} (bad: {bad_complete or 'none'}); "
           f"{states['PRUNED']} PRUNED with 1..pruned_at_epoch (bad: {bad_pruned or 'none'})")

    # lineages: a trial and its retries (Optuna's failed_trial names the first trial of the chain)
    lineages: dict[int, list] = collections.defaultdict(list)
    for t in trials:
        lineages[lineage_number(t)].append(t)

    def counted_failures(t) -> int:
        """Failures of t's lineage up to and including t that use up a retry (an interruption does not)."""
        return sum(1 for u in lineages[lineage_number(t)] if u.state == TrialState.FAIL and u.number <= t.number
                   and u.user_attrs.get("fail_reason") != "interrupted")

    fails = [t for t in trials if t.state == TrialState.FAIL]
    exhausted = [t for t in fails if counted_failures(t) > MAX_RETRIES]
    twice = {n: [t.number for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
             for n, ts in lineages.items()}
    twice = {n: nums for n, nums in twice.items() if len(nums) > 1}
    unfinished = [n for n, ts in lineages.items()
                  if not any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ts)
                  and not any(t in exhausted for t in ts)]
    record("one result per lineage", not twice and not unfinished,
           f"{len(lineages)} lineages, {sum(len(ts) > 1 for ts in lineages.values())} with retries; "
           f"finished twice: {twice or 'none'}; unfinished with retries left: {unfinished or 'none'}")

    direct = collections.Counter(t.system_attrs["retry_history"][-1] for t in trials
                                 if t.system_attrs.get("retry_history"))
    retries = sum(direct.values())
    wrong = {t.number: direct[t.number] for t in fails if direct[t.number] != (0 if t in exhausted else 1)}
    strays = sorted(set(direct) - {t.number for t in fails})
    record("retries match failures", not wrong and not strays and retries == len(fails) - len(exhausted),
           f"{len(fails)} FAIL, {len(exhausted)} of them with max_retries={MAX_RETRIES} used up, {retries} retries "
           f"(one per FAIL with retries left; wrong counts: {wrong or 'none'}; retries of non-FAIL trials: "
           f"{strays or 'none'})")

    # Which FAILs our faults explain. A FAIL's `worker` attribute is host:pid of the process that ran it (set as
    # the trial starts); a worker killed or paused between ask and that moment leaves a FAIL without one.
    reasons = collections.Counter(t.user_attrs.get("fail_reason", "(none)") for t in fails)
    by_pid = fleet.by_pid()
    victim_faults: dict[int, list[Fault]] = collections.defaultdict(list)
    for f in faults:
        if f.kind in ("sigkill", "sigstop"):
            victim_faults[f.pid].append(f)
    lost_by_pid = {w.pid: lost_lines(w.log) for w in fleet.workers}
    not_ours, over, no_worker = [], [], []
    fails_of_pid: dict[int, list[int]] = collections.defaultdict(list)
    for t in fails:
        attr = t.user_attrs.get("worker")
        pid = int(attr.rsplit(":", 1)[1]) if attr else next(
            (p for p, nums in lost_by_pid.items() if t.number in nums), None)  # a LOST line names it too
        if pid is None:
            no_worker.append(t)
        elif pid not in victim_faults:
            not_ours.append((t.number, by_pid[pid].index if pid in by_pid else f"pid {pid}"))
        else:
            fails_of_pid[pid].append(t.number)
    for pid, nums in fails_of_pid.items():
        if len(nums) > len(victim_faults[pid]):
            over.append((by_pid[pid].index, nums, len(victim_faults[pid])))
    # a FAIL without a worker: the trial of a worker killed/paused right after asking; it must have started
    # before some kill/pause whose victim has no FAIL of its own
    spare = sorted((f.wall for pid, fs in victim_faults.items() for f in fs[len(fails_of_pid.get(pid, [])):]))
    unexplained = []
    for t in sorted(no_worker, key=lambda t: t.datetime_start or datetime.datetime.min):
        match = next((w for w in spare if (t.datetime_start or datetime.datetime.min) <= w), None)
        if match is None:
            unexplained.append(t.number)
        else:
            spare.remove(match)
    kills_stops = sum(len(fs) for fs in victim_faults.values())
    record("failures are ours",
           set(reasons) <= {STALE_REASON} and not not_ours and not over and not unexplained
           and len(fails) <= kills_stops,
           f"{len(fails)} FAIL <= {kills_stops} SIGKILL+SIGSTOP; reasons {dict(reasons) or 'none'}; "
           f"run by a worker we did not kill or pause: {not_ours or 'none'}; more than one per fault: "
           f"{over or 'none'}; without a worker attr: {len(no_worker)} (unexplained: {unexplained or 'none'})")

    # paused workers drop their stale result instead of storing it
    stopped_pids = {pid for pid, fs in victim_faults.items() if any(f.kind == "sigstop" for f in fs)}
    killed_pids = {w.pid for w in fleet.workers if w.killed}
    lost_total = sum(len(v) for v in lost_by_pid.values())
    lost_bad = [(by_pid[pid].index, n) for pid, nums in lost_by_pid.items() for n in nums
                if pid not in stopped_pids or by_number[n].state != TrialState.FAIL]
    missing = [(by_pid[pid].index, n) for pid in stopped_pids - killed_pids
               for n in fails_of_pid.get(pid, []) if n not in lost_by_pid[pid]]
    record("paused workers drop results", not lost_bad and not missing,
           f"{lost_total} LOST lines, all from SIGSTOPped workers about FAIL trials (bad: {lost_bad or 'none'}); "
           f"FAIL trials of paused (not killed) workers not logged LOST: {missing or 'none'}")

    codes = {w.index: w.code for w in fleet.workers}
    bad_exit = {w.index: w.code for w in fleet.workers if w.code != (-signal.SIGKILL if w.killed else 0)}
    record("exits", not bad_exit,
           f"{len(fleet.workers)} workers: {sum(c == 0 for c in codes.values())} exited 0, "
           f"{sum(w.killed for w in fleet.workers)} SIGKILLed by us (-9); others: {bad_exit or 'none'}")

    dirty = []
    for w in fleet.workers:
        text = w.log.read_text()
        dirty += [(w.index, "Traceback")] if "Traceback" in text else []
        dirty += [(w.index, "password")] if PASSWORD in text else []
        dirty += [(w.index, line[:200]) for line in text.splitlines() if line.startswith("error:")]
    record("clean logs", not dirty, f"{len(fleet.workers)} worker logs; problems: {dirty or 'none'}")

    figures = {
        "n_trials": n_trials, "trials": len(trials), "states": dict(states), "fail_reasons": dict(reasons),
        "fails": len(fails), "fails_exhausted": len(exhausted), "retries": retries, "lineages": len(lineages),
        "lost": lost_total, "fails_without_worker_attr": len(no_worker),
        "workers_started": len(fleet.workers), "exit_codes": {str(k): v for k, v in codes.items()},
    }
    return results, figures


# --- main ------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="seconds of faults (default 600)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the fault schedule (default 1)")
    parser.add_argument("--workers", type=int, default=8, help="worker processes (default 8)")
    parser.add_argument("--finish-timeout", type=float, default=1800,
                        help="seconds the workers get to finish the final budget after the window (default 1800)")
    parser.add_argument("--keep", action="store_true", help="keep the worker logs even when every check holds")
    args = parser.parse_args()

    started = time.monotonic()
    say("command: " + shlex.join([sys.executable, *sys.argv]))
    load = os.getloadavg()
    say(f"machine: {platform.node()}, {os.cpu_count()} CPU cores, {platform.machine()}, Python "
        f"{platform.python_version()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}")
    say(f"study: digits, cnn width 4..8 depth 1, {EPOCHS} epochs, batch {BATCH}, median pruner; heartbeat "
        f"{HEARTBEAT} s, grace {GRACE} s, reaper {REAPER} s, max_retries {MAX_RETRIES}; {args.workers} workers "
        f"(--cpu --threads 1); {args.duration:.0f} s of faults, seed {args.seed}")

    work = Path(tempfile.mkdtemp(prefix="tuner-chaos-"))
    (work / "logs").mkdir()
    pg = Postgres()
    fleet: Fleet | None = None

    def on_term(signum, frame):  # e.g. the test's timeout: take the workers and the server down with us
        raise SystemExit(f"stopped by {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_term)
    ok = False
    try:
        database = "chaos_" + uuid.uuid4().hex[:8]
        url = pg.create_database(database)
        env = {**os.environ, "TUNER_STORAGE": url, "TUNER_CHECKPOINT_DIR": str(work / "ckpt"),
               "TUNER_DATA_CACHE": str(work / "data"), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        env.pop("TUNER_STORAGE_FILE", None)
        study_file = work / "chaos.toml"
        study_file.write_text(STUDY)
        for step in (["prepare", str(study_file)], ["launch-study", str(study_file)]):
            done = subprocess.run([sys.executable, "-m", "tuner", *step], env=env, capture_output=True, text=True,
                                  timeout=600)
            if done.returncode != 0:
                raise SystemExit(f"tuner {step[0]} failed:\n{done.stdout}{done.stderr}")

        faults = schedule(random.Random(args.seed), args.duration)
        fleet = Fleet(env, work / "logs")
        for _ in range(args.workers):
            fleet.start()
        warmup = wait_for_first_epoch(fleet, timeout=600)
        say(f"\n{args.workers} workers started; first epoch reported after {warmup:.1f} s. Faults "
            f"({len(faults)} planned over {args.duration:.0f} s):")
        window = run_window(faults, fleet, pg, database, args.duration)

        target, counts_then = set_final_budget(url, args.workers)
        say(f"\nwindow over after {window:.1f} s; trials then: {counts_then}; final budget set to {target} "
            f"(committed + 2 x {args.workers} workers); waiting for the workers to finish it")
        tail_started = time.monotonic()
        if not wait_for_workers(fleet, args.finish_timeout):
            say(f"the workers did not finish within {args.finish_timeout:.0f} s; killing them")
            fleet.kill_all()
            for w in fleet.workers:
                w.code = w.proc.returncode if w.code is None else w.code
        tail = time.monotonic() - tail_started
        say(f"all workers exited {tail:.1f} s after the window")

        results, figures = check(url, fleet, faults)
        by_kind = collections.Counter(f.kind for f in faults)
        say("\nfaults injected:")
        for kind in KINDS:
            times = ", ".join(f"{f.started:.0f}" for f in faults if f.kind == kind)
            say(f"  {kind:<10} {by_kind[kind]:>3}  at s {times}")
        say(f"  {'total':<10} {len(faults):>3}  ({sum(1 for f in faults if f.postponed)} outages postponed while a "
            f"new worker was starting, {sum(f.postponed for f in faults):.0f} s in all)")
        stops = [f for f in faults if f.kind == "sigstop"]
        downs = [float(re.search(r"down ([\d.]+) s", f.detail).group(1)) for f in faults if f.kind == "pg-restart"]
        terminated = sum(int(f.detail.split()[0]) for f in faults if f.kind == "terminate")
        say(f"  SIGSTOP pauses {min((f.length for f in stops), default=0):.1f}-"
            f"{max((f.length for f in stops), default=0):.1f} s planned; PostgreSQL down "
            f"{min(downs, default=0):.1f}-{max(downs, default=0):.1f} s per restart; {terminated} backends terminated")
        say(f"\ntrials: {figures['trials']} ({figures['states']}), {figures['lineages']} lineages, final n_trials "
            f"{figures['n_trials']}")
        say(f"FAIL by reason: {figures['fail_reasons'] or 'none'}; retries {figures['retries']}; LOST (dropped "
            f"results of paused workers) {figures['lost']}; workers started {figures['workers_started']}")
        say("\ninvariants:")
        for name, passed, detail in results:
            say(f"  {'PASS' if passed else 'FAIL'}  {name:<28} {detail}")
        ok = all(passed for _, passed, _ in results)
        total = time.monotonic() - started
        say(f"\n{'all invariants hold' if ok else 'INVARIANTS VIOLATED'}; fault window {window:.1f} s, tail "
            f"{tail:.1f} s, total {total:.1f} s")
        summary = {
            "ok": ok, "seed": args.seed, "duration_s": args.duration, "window_s": round(window, 1),
            "tail_s": round(tail, 1), "total_s": round(total, 1), "workers": args.workers, "epochs": EPOCHS,
            "faults": {kind: by_kind[kind] for kind in KINDS},
            "fault_log": [{"t": round(f.started, 1), "kind": f.kind, "worker": f.victim, "detail": f.detail}
                          for f in faults],
            "terminated_backends": terminated,
            "postponed_outages": sum(1 for f in faults if f.postponed),
            "invariants": {name: passed for name, passed, _ in results},
            **figures,
        }
        if not ok:
            say(f"worker logs kept in {work / 'logs'}")
        say("CHAOS-SUMMARY " + json.dumps(summary))
        return 0 if ok else 1
    finally:
        if fleet is not None:
            fleet.kill_all()
        pg.close()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.keep:
            say(f"work folder kept: {work}")


if __name__ == "__main__":
    sys.exit(main())
