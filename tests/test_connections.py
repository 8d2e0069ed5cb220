"""A fleet on one PostgreSQL: how many connections a worker holds, and one reaper per study (with a take-over)."""

from __future__ import annotations

import signal
import statistics
import time

import sqlalchemy
from optuna.trial import TrialState

from conftest import load, start_worker, study_file, study_id_of, tuner, tuner_env, wait_all, wait_for
from tuner.store.storage import MAX_OVERFLOW, POOL_SIZE

FAST = "heartbeat_interval = 1\ngrace_period = 8\nreaper_period = 1"


def connections_by_process(engine) -> dict[int, int]:
    """pg_stat_activity rows of tuner processes, by process id (tuner names its connections tuner:<pid>)."""
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'tuner:%' GROUP BY application_name"))
        return {int(name.split(":")[1]): n for name, n in rows}


def lease_owner(engine, study_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT owner FROM tuner_reaper_leases WHERE study_id = :s"),
                            {"s": study_id}).scalar()


def test_a_training_worker_holds_one_connection_and_one_worker_reaps(pg_url, tmp_path):
    path = study_file(tmp_path, "fleet", n_trials=6, epochs=40, worker=FAST, pruner='type = "none"')
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    procs = [start_worker("fleet", env, log) for log in logs]
    engine = sqlalchemy.create_engine(pg_url, poolclass=sqlalchemy.pool.NullPool)  # this test's own, counted apart
    try:
        wait_for(lambda: all("epoch 1/40" in log.read_text() for log in logs), 240, "every worker training")
        # sampled over several heartbeat and reaper periods (1 s each): what each worker holds most of the time,
        # and never more than its pool allows
        samples = []
        for _ in range(40):
            samples.append(connections_by_process(engine))
            time.sleep(0.1)
        for p in procs:
            counts = [s.get(p.pid, 0) for s in samples]
            assert statistics.median(counts) == POOL_SIZE == 1, (p.pid, counts)
            assert max(counts) <= POOL_SIZE + MAX_OVERFLOW, (p.pid, counts)
        assert set().union(*samples) <= {p.pid for p in procs}  # nothing else of tuner's is connected

        # one reaper per study: the lease names one of the three
        study_id = study_id_of(pg_url, "fleet")
        owner = lease_owner(engine, study_id)
        (holder,) = [p for p in procs if owner.split(":")[1] == str(p.pid)]
        # the holder dies: another worker takes the lease over and reaps its trial (failed, then retried)
        running = {t.number for t in load(pg_url, "fleet").trials if t.state == TrialState.RUNNING}
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        wait_for(lambda: lease_owner(engine, study_id) != owner, 120, "a take-over of the reaper lease")
        new_owner = lease_owner(engine, study_id)
        assert new_owner.split(":")[1] in {str(p.pid) for p in procs if p is not holder}
        wait_for(lambda: any(t.state == TrialState.FAIL for t in load(pg_url, "fleet").trials), 120,
                 "the dead worker's trial to be failed by the new reaper")
        failed = [t for t in load(pg_url, "fleet").trials if t.state == TrialState.FAIL]
        assert {t.number for t in failed} <= running
        assert all(t.user_attrs["fail_reason"].startswith("no heartbeat") for t in failed)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        wait_all([p for p in procs], timeout=120)
        engine.dispose()
