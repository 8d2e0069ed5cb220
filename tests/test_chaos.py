"""The chaos soak, shortened: bench/chaos.py with a 2-minute fault window (SIGKILLed and SIGSTOPped workers,
PostgreSQL restarts, terminated backends) on 8 real workers, then every invariant it checks must hold.

The bench starts its own PostgreSQL (it restarts it) and its own workers; this test reads the figures it prints
(the CHAOS-SUMMARY line) and checks them again, so a bench that printed "ok" with wrong figures fails here too.
Every check is exact and independent of the machine's speed: a slow machine lands fewer faults mid-trial, so
the test bounds failures by the faults that can cause one instead of expecting one per fault.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from conftest import REPO

SEED = 7  # its schedule: 18 faults in 120 s, every kind at least 4 times
DURATION = 120
WORKERS = 8
STALE = "no heartbeat for 6 s (its worker died or froze)"
INVARIANTS = {"exact budget", "nothing left running", "trial numbers", "complete curves", "one result per lineage",
              "retries match failures", "failures are ours", "paused workers drop results", "exits", "clean logs"}


def run_soak() -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "chaos.py"), "--duration", str(DURATION),
                             "--seed", str(SEED), "--workers", str(WORKERS)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # ~5 minutes on a busy 2-core machine: start-up, the window (stretched where an outage waits for a new
        # worker to start), the final budget; the bench's own waits are generous, this only catches a hang
        out, _ = proc.communicate(timeout=3600)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the bench stops its workers and its PostgreSQL on SIGTERM
        out, _ = proc.communicate(timeout=300)
        raise AssertionError(f"the chaos soak did not end within an hour:\n{out[-6000:]}") from None
    return proc.returncode, out


def test_the_chaos_soak_holds_every_invariant():
    code, out = run_soak()
    lines = [line for line in out.splitlines() if line.startswith("CHAOS-SUMMARY ")]
    assert len(lines) == 1, out[-6000:]
    s = json.loads(lines[0].removeprefix("CHAOS-SUMMARY "))
    report = out[out.find("faults injected:"):][:6000]
    assert code == 0, report
    assert s["ok"] and set(s["invariants"]) == INVARIANTS and all(s["invariants"].values()), report

    # the seed's schedule, whatever the machine's speed: every kind of fault, several times
    faults = s["faults"]
    assert sum(faults.values()) == len(s["fault_log"]) == 18
    assert all(faults[kind] >= 4 for kind in ("sigkill", "sigstop", "pg-restart", "terminate")), faults
    assert s["terminated_backends"] > 0

    # the exact budget, and nothing left behind
    states = s["states"]
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == s["n_trials"] > 0
    assert set(states) <= {"COMPLETE", "PRUNED", "FAIL"}, states
    assert s["trials"] == s["n_trials"] + s["fails"]

    # every FAIL is a missed heartbeat of a worker we killed or paused (restarts and terminated backends fail
    # nothing), and each is retried exactly once unless its lineage used up max_retries
    assert set(s["fail_reasons"]) <= {STALE}, s["fail_reasons"]
    assert s["fails"] == states.get("FAIL", 0) <= faults["sigkill"] + faults["sigstop"]
    assert s["retries"] == s["fails"] - s["fails_exhausted"]
    assert s["lineages"] == s["n_trials"] + s["fails_exhausted"]  # one result per lineage, or none if given up
    assert s["lost"] <= faults["sigstop"]

    # the workers: one replacement per SIGKILL; those exited -9 (our signal), every other one 0
    assert s["workers_started"] == WORKERS + faults["sigkill"]
    codes = list(s["exit_codes"].values())
    assert codes.count(-signal.SIGKILL) == faults["sigkill"] and codes.count(0) == WORKERS, s["exit_codes"]
