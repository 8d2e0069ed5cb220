"""tuner behind a real PgBouncer in transaction-pooling mode, as PostgreSQL users deploy it for many clients.

Transaction pooling hands a server connection to a client for one transaction only, so anything a client leaves
on its server session (SET, prepared statements, session advisory locks, LISTEN, temp tables, WITH HOLD cursors)
would leak to other clients or be lost. The reliability checks that matter run here through the pooler: the exact
budget with eight workers, SIGKILL -> FAIL -> retry resumed from its checkpoint, a PostgreSQL restart under the
pooler, no password in any log; and every server connection of the pool is checked for session state afterwards.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.request

import optuna
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from conftest import (PASSWORD, BudgetLockHold, create_database, free_port, pgbouncer, restart_postgres,
                      start_worker, study_file, tuner, tuner_env, wait_all, wait_for)
from test_reliability import (LONG_TRIAL, RELAXED_RECOVERY, assert_clean_logs, epoch_reached, logged_epochs,
                              retries_of, state_of, trials)

# Parameters PgBouncer itself keeps in step between a client and the server connection it lends (it SETs them
# when they differ): not state a client left behind.
POOLER_TRACKED = ("application_name", "client_encoding", "datestyle", "timezone", "standard_conforming_strings")
_SESSION_STATE = sqlalchemy.text("""
    SELECT pg_backend_pid(),
           ARRAY(SELECT name || '=' || setting FROM pg_settings
                 WHERE source = 'session' AND lower(name) <> ALL(:tracked)),
           (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
           (SELECT count(*) FROM pg_prepared_statements),
           (SELECT count(*) FROM pg_cursors WHERE is_holdable),
           (SELECT count(*) FROM pg_listening_channels()),
           pg_my_temp_schema() <> 0
""")


def assert_no_session_state(url: str, pool_size: int) -> None:
    """Hold `pool_size` transactions open through the pooler at once, so each lands on its own server connection
    (every one in the pool), and check that no client left session state on any of them."""
    engine = sqlalchemy.create_engine(url, pool_size=pool_size, max_overflow=0,
                                      connect_args={"application_name": "tuner"})
    conns = [engine.connect() for _ in range(pool_size)]
    try:
        rows = [conn.execute(_SESSION_STATE, {"tracked": list(POOLER_TRACKED)}).one() for conn in conns]
    finally:
        for conn in conns:
            conn.close()
        engine.dispose()
    assert len({pid for pid, *_ in rows}) == pool_size, "the transactions did not get a server connection each"
    for pid, settings, advisory, prepared, cursors, channels, temp in rows:
        assert settings == [], f"server connection {pid}: session settings left by a client: {settings}"
        assert (advisory, prepared, cursors, channels, temp) == (0, 0, 0, 0, False), (
            f"server connection {pid}: advisory locks {advisory}, prepared statements {prepared}, "
            f"holdable cursors {cursors}, LISTEN channels {channels}, temp schema {temp}")


def test_eight_workers_behind_pgbouncer_finish_exactly_the_budget_even_when_stopped_and_restarted(pg_url,
                                                                                                   tmp_path):
    with pgbouncer(pg_url) as bouncer:  # default_pool_size 20 server connections for 8 workers (1-2 client connections each)
        url = bouncer.url()
        path = study_file(tmp_path, "eight", n_trials=12, epochs=2, worker=RELAXED_RECOVERY)
        env = tuner_env(url, tmp_path)
        assert tuner("launch-study", str(path), env=env).returncode == 0

        def finished() -> int:
            return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials(url, "eight"))

        # The stop must land mid-study, on every worker, on any machine (as in test_reliability's twin): the
        # budget lock (in the database behind the pooler) lines all eight up, so each has its signal handlers
        # installed before SIGTERM; held again after they got their first trials, it keeps any worker from
        # starting a second one, so at most eight of the twelve trials have started when SIGTERM arrives.
        hold = BudgetLockHold(pg_url, "eight")
        first = [start_worker("eight", env, tmp_path / f"a{i}.log") for i in range(8)]
        hold.wait_for_waiters(8, timeout=300)
        hold.release()
        hold = BudgetLockHold(pg_url, "eight")
        wait_for(lambda: finished() >= 1, 300, "a finished trial", interval=0.2)
        for p in first:
            p.send_signal(signal.SIGTERM)
        hold.release()  # interrupted trials take the lock to fail and queue their retries, then their workers exit
        codes = wait_all(first, timeout=120)
        assert all(code in (0, 128 + signal.SIGTERM) for code in codes), codes
        assert finished() < 12
        assert not [t for t in trials(url, "eight") if t.state == TrialState.RUNNING]

        second = [start_worker("eight", env, tmp_path / f"b{i}.log") for i in range(8)]
        assert wait_all(second, timeout=400) == [0] * 8, [log.read_text()[-2000:] for log in tmp_path.glob("b*.log")]
        all_trials = trials(url, "eight")
        assert finished() == 12
        assert sorted(t.number for t in all_trials) == list(range(len(all_trials)))
        assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        for t in all_trials:  # the only failures are the SIGTERMs, each retried
            if t.state == TrialState.FAIL:
                assert t.user_attrs["fail_reason"] == "interrupted"
                assert retries_of(url, "eight", t.number)
        assert_clean_logs(*tmp_path.glob("[ab]*.log"))

        # The CLI through the same pooler: it sees what the workers wrote.
        status = tuner("status", "--study", "eight", env=env)
        assert status.returncode == 0 and "12/12 trials" in status.stdout, status.stdout + status.stderr  # budget spent
        best = tuner("best", "--study", "eight", "--format", "json", env=env)
        assert best.returncode == 0, best.stderr
        assert json.loads(best.stdout)["trial"] in {t.number for t in all_trials if t.state == TrialState.COMPLETE}
        assert PASSWORD not in status.stdout + status.stderr + best.stdout + best.stderr

        # Nothing any of the 16 worker processes did stayed behind on the pooled server connections.
        assert_no_session_state(url, pool_size=20)
        assert PASSWORD not in bouncer.log.read_text()


def test_behind_pgbouncer_a_killed_workers_trial_is_failed_retried_and_resumed(pooled_url, tmp_path):
    url = pooled_url
    # A 10 s grace period, not test_reliability's 3 s: the live worker's heartbeats pass through one more busy
    # process here, and only the dead worker's trial may be failed.
    path = study_file(tmp_path, "kill", n_trials=2, epochs=10, space=LONG_TRIAL, pruner='type = "none"',
                      worker="heartbeat_interval = 1\ngrace_period = 10\nreaper_period = 1")
    env = tuner_env(url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [start_worker("kill", env, log) for log in logs]
    victim = wait_for(lambda: epoch_reached(logs[0], 3), 300, "worker 0 to reach epoch 3")
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    last_reported = max(next(t for t in trials(url, "kill") if t.number == victim).intermediate_values)

    # Only the other worker's reaper can notice, through the pooler, while that worker trains.
    wait_for(lambda: state_of(url, "kill", victim) == TrialState.FAIL, 120, "the dead trial to be failed")
    dead = next(t for t in trials(url, "kill") if t.number == victim)
    assert dead.user_attrs["fail_reason"] == "no heartbeat for 10 s (its worker died or froze)"

    assert wait_all(procs[1:], timeout=400) == [0], logs[1].read_text()[-2000:]
    (retry,) = retries_of(url, "kill", victim)
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    resumed = retry.user_attrs["resumed_from_epoch"]  # from the last checkpoint, written right after each report
    assert resumed in (last_reported, last_reported - 1) and resumed >= 3
    assert logged_epochs(logs[1], retry.number) == list(range(resumed + 1, 11))
    assert sorted(retry.intermediate_values) == list(range(1, 11))
    states = [t.state for t in trials(url, "kill")]
    assert states.count(TrialState.COMPLETE) == 2 and states.count(TrialState.FAIL) == 1
    assert_clean_logs(logs[1])
    assert PASSWORD not in logs[0].read_text()


def test_behind_pgbouncer_workers_ride_out_a_postgresql_restart(own_postgres, tmp_path):
    pgdata, admin_uri, direct_url = own_postgres
    with pgbouncer(direct_url) as bouncer:
        url = bouncer.url()
        # A relaxed grace period: on a loaded machine a 3 s one fails live trials behind a pooler that is itself
        # short of CPU; a trial failed as stale during the outage is retried, and nothing may be lost either way.
        path = study_file(tmp_path, "restart", n_trials=3, epochs=4, space=LONG_TRIAL, worker=RELAXED_RECOVERY,
                          pruner='type = "none"')
        env = tuner_env(url, tmp_path)
        assert tuner("launch-study", str(path), env=env).returncode == 0
        logs = [tmp_path / f"w{i}.log" for i in range(2)]
        procs = [start_worker("restart", env, log) for log in logs]
        wait_for(lambda: any(epoch_reached(log, 2) is not None for log in logs), 300, "training to be under way")
        # PgBouncer's own outage is longer: after a failed login it refuses clients for server_login_retry
        # (15 s) before it tries PostgreSQL again, so the workers ride out ~20 s without the database.
        restart_postgres(pgdata, admin_uri, down_for=5)
        assert wait_all(procs, timeout=400) == [0, 0], [log.read_text()[-2000:] for log in logs]
        all_trials = trials(url, "restart")
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in all_trials) == 3
        for t in all_trials:
            if t.state == TrialState.COMPLETE:
                assert sorted(t.intermediate_values) == list(range(1, 5))
        assert any("retrying" in log.read_text() for log in logs)  # they did see the outage
        assert_clean_logs(*logs)
        assert PASSWORD not in bouncer.log.read_text()


def test_the_cli_the_dashboard_and_the_budget_lock_leave_no_session_state_on_pooled_connections(pg_server,
                                                                                                  tmp_path):
    # Two server connections for everyone: whatever a command leaves on its server session, the next client
    # gets. Two, not one: Optuna's first open of an empty database keeps a transaction open on one connection
    # (alembic's revision check) while it reads the version table on a second.
    from tuner.store.budget import budget_lock
    from tuner.store.storage import make_storage

    with pgbouncer(create_database(*pg_server), default_pool_size=2) as bouncer:
        url = bouncer.url()
        env = tuner_env(url, tmp_path)
        path = study_file(tmp_path, "cli", n_trials=2, epochs=1)
        for args in (["launch-study", str(path)], ["status", "--study", "cli"], ["best", "--study", "cli"],
                     ["extend", "--study", "cli", "--n-trials", "3"]):
            result = tuner(*args, env=env, timeout=300)
            # no trial has finished: `best` says so in one line, exit code 1
            assert result.returncode == (1 if args[0] == "best" else 0), (args, result.stderr[-2000:])
            assert "Traceback" not in result.stderr and PASSWORD not in result.stdout + result.stderr
            assert_no_session_state(url, pool_size=2)

        port = free_port()
        dashboard = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--port", str(port)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            studies = wait_for(lambda: _get(f"http://127.0.0.1:{port}/api/studies"), 300, "the dashboard")
            assert '"cli"' in studies and PASSWORD not in studies
        finally:
            dashboard.terminate()
            output = dashboard.communicate(timeout=60)[0]
        assert "Traceback" not in output and PASSWORD not in output
        assert_no_session_state(url, pool_size=2)

        storage = make_storage(url)
        study_id = storage.get_study_id_from_name("cli")
        with budget_lock(storage, study_id):  # SET LOCAL + pg_advisory_xact_lock: both end with the transaction
            pass
        storage.engine.dispose()
        assert_no_session_state(url, pool_size=2)


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read().decode()
    except OSError:  # not listening yet
        return None


# A worker waiting for the budget lock (a blocking pg_advisory_xact_lock) holds a server connection while it waits.
# If the holder needed another connection for its own queries, waiters filling the pool would starve it until
# PostgreSQL ended its idle session and gave the lock away; tuner.store.budget runs the holder's whole section on the
# lock's own connection instead. (This test failed before that change.)
def test_the_budget_lock_stays_held_while_its_holder_queries_when_waiters_fill_the_pool(pg_server):
    from tuner.store.budget import LOCK_CLASS, budget_lock, trial_counts
    from tuner.store.storage import make_storage

    admin_url, user_url = pg_server
    direct_url = create_database(admin_url, user_url)
    database = make_url(direct_url).database
    with pgbouncer(direct_url, default_pool_size=2) as bouncer:
        storage, waiter_storage = make_storage(bouncer.url()), make_storage(bouncer.url())
        study_id = optuna.create_study(study_name="lock", storage=storage)._study_id
        admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        locks = sqlalchemy.text(
            "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' AND classid = :c AND objid = :s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = :d)")

        def lock_table() -> list[tuple[int, bool]]:
            with admin.connect() as conn:
                return [tuple(row) for row in conn.execute(locks, {"c": LOCK_CLASS, "s": study_id, "d": database})]

        def wait_for_the_lock() -> None:
            with budget_lock(waiter_storage, study_id):
                pass

        waiter = threading.Thread(target=wait_for_the_lock)
        try:
            with budget_lock(storage, study_id):
                (holder,) = [pid for pid, granted in lock_table() if granted]
                waiter.start()  # it waits on the second (last) server connection of the pool
                wait_for(lambda: [pid for pid, granted in lock_table() if not granted], 120, "the waiter")
                trial_counts(storage, study_id)  # the holder's own query: on its lock connection, none needed
                optuna.load_study(study_name="lock", storage=storage).ask()  # and Optuna's, bound to it too
                assert [pid for pid, granted in lock_table() if granted] == [holder], "the holder lost the lock"
        finally:
            waiter.join(120)
            for engine in (storage.engine, waiter_storage.engine, admin):
                engine.dispose()
