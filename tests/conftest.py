"""Shared fixtures: a real PostgreSQL with a real password, real worker processes, small study files.

PostgreSQL: $TUNER_TEST_DATABASE_URL if set (its user needs CREATEDB), else a throwaway server started
here with pgserver (no root, no Docker). Every test gets its own database.
PgBouncer: Debian's `pgbouncer` binary, started per test in front of that PostgreSQL (installed here with
apt-get where it is absent and this is root; tests that need it are skipped, saying why, where it cannot be).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
# Prepared datasets go to a throwaway cache, shared by this test process and the workers it starts (they copy
# os.environ), never to the user's ~/.cache; each dataset is prepared once per test process.
_DATA_CACHE = tempfile.TemporaryDirectory(prefix="tuner-test-data-")
os.environ["TUNER_DATA_CACHE"] = _DATA_CACHE.name
PASSWORD = "pw-" + uuid.uuid4().hex  # a real secret: the server checks it (scram-sha-256)

# TUNER_TEST_SPEEDUP=10: every process of the run (this one, and the workers, which copy os.environ) trains on a
# tenth of the digits, to show which tests hope for a slow machine (tests/speedup/sitecustomize.py says more).
if int(os.environ.get("TUNER_TEST_SPEEDUP", "1") or 1) > 1:
    _SPEEDUP = str(REPO / "tests" / "speedup")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_SPEEDUP, os.environ.get("PYTHONPATH", "")) if p)
    sys.path.insert(0, _SPEEDUP)
    importlib.import_module("sitecustomize")  # this process started before PYTHONPATH named it


# The suite runs in parallel (pytest-xdist, see pyproject.toml), so its wall time is at least its longest test's:
# these start first, spread over the parallel workers, instead of last.
LONGEST_FIRST = (
    "test_the_chaos_soak_holds_every_invariant",
    "test_the_digits_demo_finds_a_good_model_and_prunes",
    "test_a_killed_workers_trial_is_failed_while_others_are_busy_and_resumed_once",
    "test_eight_workers_behind_pgbouncer_finish_exactly_the_budget_even_when_stopped_and_restarted",
    "test_eight_workers_finish_exactly_the_budget_even_when_stopped_and_restarted",
    "test_a_long_trial_under_cpu_load_is_never_falsely_failed",
    "test_fine_tuning_a_backbone_from_a_local_weights_file_on_an_imagefolder",
    "test_a_finished_sqlite_study_gets_its_report",
    "test_a_retry_with_a_corrupt_newest_checkpoint_resumes_from_the_previous_and_completes",
    "test_extending_a_finished_study_lets_three_workers_finish_exactly_the_new_total",
    "test_a_40_trial_study_copied_sqlite_to_postgresql_and_back_reads_the_same_everywhere",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; deselected where there is none")


# Tests whose assertions are about the digits themselves, so they cannot hold on the tenth TUNER_TEST_SPEEDUP
# trains on (they are about the data, not the machine's speed): deselected in that run only, for the reason given.
NEED_ALL_DIGITS = {
    "test_resident_and_streamed_batches_are_bit_identical_for_one_seed": "counts batches of 1,797 images",
    "test_no_test_image_is_in_training_or_validation": "counts the 1,797 images",
    "test_tuner_prepare_prints_the_cache_size_and_path": "prints the 1,797 images' split sizes",
    "test_an_imagefolder_study_scores_its_test_split_and_its_export_predicts_raw_pngs": "writes digits per class",
    "test_a_digits_export_predicts_digits_as_scikit_learn_gives_them_and_refuses_what_it_would_get_wrong":
        "accuracy above chance",
    "test_the_digits_demo_finds_a_good_model_and_prunes": "accuracy >= 0.95",
    "test_replacing_the_config_of_a_study_whose_trials_failed_starts_it_afresh": "lr 1e38 gives NaN on these batches",
    "test_a_diverging_trial_fails_with_its_reason_and_the_retry_cap_holds": "lr 1e38 gives NaN on these batches",
    "test_a_paused_trial_is_promoted_and_resumes_from_its_checkpoint": "the good config out-learns the bad one",
    "test_the_example_model_and_dataset_of_your_own_run_a_study_end_to_end": "accuracy > 0.8",
    "test_a_student_that_never_sees_a_label_learns_the_task_from_its_teacher": "teacher accuracy > 0.9",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests and not _cuda_available():
        config.hook.pytest_deselected(items=gpu_tests)
        items[:] = [item for item in items if item not in gpu_tests]
    if int(os.environ.get("TUNER_TEST_SPEEDUP", "1") or 1) > 1:
        data_tests = [item for item in items if item.originalname in NEED_ALL_DIGITS]
        config.hook.pytest_deselected(items=data_tests)
        items[:] = [item for item in items if item not in data_tests]
    items.sort(key=lambda item: item.originalname not in LONGEST_FIRST)  # a stable sort: the rest keep their order


def pytest_report_header(config: pytest.Config) -> str:
    speedup = int(os.environ.get("TUNER_TEST_SPEEDUP", "1") or 1)
    fast = (f"; TUNER_TEST_SPEEDUP={speedup}: digits cut to 1 in {speedup}, {len(NEED_ALL_DIGITS)} tests about the "
            "data itself deselected (conftest.NEED_ALL_DIGITS)" if speedup > 1 else "")
    return "gpu tests: " + ("run (CUDA present)" if _cuda_available() else "deselected (no CUDA here)") + fast


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def new_pgdata() -> Path:
    """An empty folder for a throwaway server, outside pytest's temporary tree: as root, pgserver runs PostgreSQL
    as another user and opens the folders on the way up for it, and every new pytest session (a second suite on
    the same machine) closes /tmp/pytest-of-USER again (mode 0700), which killed the first session's server."""
    return Path(tempfile.mkdtemp(prefix="tuner-test-pg-"))


def start_pgserver(pgdata: Path):
    """Start PostgreSQL in pgdata with a `tuner` role that must log in with PASSWORD; returns pgserver's handle
    (`.get_uri()`: an admin URL; stop_postgres() ends it)."""
    import pgserver

    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    hba = pgdata / "pg_hba.conf"
    # First matching line wins: the tuner role must authenticate, everyone else stays on trust.
    hba.write_text("local all tuner scram-sha-256\n" + hba.read_text())
    server.psql(f"CREATE ROLE tuner LOGIN CREATEDB PASSWORD '{PASSWORD}'; SELECT pg_reload_conf();")
    return server


def admin_and_user_urls(admin_uri: str) -> tuple[str, str]:
    admin = make_url(admin_uri.replace("postgresql://", "postgresql+psycopg2://", 1))
    user = admin.set(username="tuner", password=PASSWORD)
    return admin.render_as_string(hide_password=False), user.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(admin URL, password-protected user URL) of the session's PostgreSQL, database 'postgres'."""
    env_url = os.environ.get("TUNER_TEST_DATABASE_URL")
    if env_url:
        yield env_url, env_url
        return
    pgdata = new_pgdata()
    server = start_pgserver(pgdata)
    yield admin_and_user_urls(server.get_uri())
    # pgserver stops it at interpreter exit, which pytest-xdist's workers never reach: stop it here, so no
    # server outlives the suite.
    stop_postgres(server, pgdata)


def stop_postgres(server, pgdata: Path) -> None:
    """Stop whatever server runs in pgdata now (a test may have restarted it behind pgserver's back, with
    pg_ctl), then let pgserver remove the folder and forget it (no second attempt at exit)."""
    import pgserver

    try:
        pgserver._commands.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=pgdata, user="pgserver")
    except Exception:  # already stopped (a test stopped it for good)
        pass
    server.cleanup()


def restart_postgres(pgdata: Path, admin_uri: str, down_for: float) -> None:
    """Stop the server (fast: every connection is cut), keep it down, start it again on the same socket."""
    import pgserver

    socket_dir = re.search(r"host=([^&]+)", admin_uri).group(1)
    pgserver._commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user="pgserver")
    time.sleep(down_for)
    pgserver._commands.pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(pgdata / "log"), "start"],
                              pgdata=pgdata, user="pgserver")


@pytest.fixture
def own_postgres(tmp_path) -> tuple[Path, str, str]:
    """A PostgreSQL this test may stop and start: (pgdata, admin URI, user URL of a fresh database)."""
    pgdata = new_pgdata()
    server = start_pgserver(pgdata)
    admin_uri = server.get_uri()
    yield pgdata, admin_uri, create_database(*admin_and_user_urls(admin_uri))
    stop_postgres(server, pgdata)


def create_database(admin_url: str, user_url: str) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        owner = make_url(user_url).username
        conn.exec_driver_sql(f'CREATE DATABASE {name} OWNER "{owner}"')
    engine.dispose()
    return make_url(user_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the real PostgreSQL, reached as the password-protected user."""
    return create_database(*pg_server)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'tuner.db'}"


def study_file(tmp_path: Path, name: str = "s", *, n_trials: int = 6, epochs: int = 3, extra: str = "",
               pruner: str = 'type = "median"\nn_startup_trials = 3\nn_warmup_steps = 1', worker: str = "",
               space: str = "") -> Path:
    """A small, fast digits study (tiny CNN) for tests."""
    space = space or textwrap.dedent("""\
        lr = { low = 1e-3, high = 1e-1, log = true }
        width = { low = 4, high = 12 }
        depth = { low = 1, high = 2 }
        dropout = { low = 0.0, high = 0.3 }
        weight_decay = { low = 1e-6, high = 1e-2, log = true }
        """)
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'[study]\nname = "{name}"\nn_trials = {n_trials}\nseed = 0\n{extra}\n'
        f"[pruner]\n{pruner}\n\n"
        f'[task]\ndataset = "digits"\nmodel = "cnn"\nepochs = {epochs}\nbatch_size = 128\n\n'
        + (f"[worker]\n{worker}\n\n" if worker else "")
        + f"[space]\n{space}"
    )
    return path


def tuner_env(url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "TUNER_STORAGE": url, "TUNER_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
           "PYTHONUNBUFFERED": "1", **extra}
    env.pop("TUNER_STORAGE_FILE", None)
    return env


def tuner(*args: str, env: dict[str, str], timeout: float = 300, cwd: Path | None = None,
          ) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "tuner", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def start_worker(study: str, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen:
    """A real worker process on the CPU, one torch thread (tests run several at once on 2 cores)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", "worker", "--study", study, "--cpu", "--threads", "1", *extra],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


def load(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def study_id_of(url: str, name: str) -> int:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        study_id = conn.execute(sqlalchemy.text("SELECT study_id FROM studies WHERE study_name = :n"),
                                {"n": name}).scalar_one()
    engine.dispose()
    return study_id


class BudgetLockHold:
    """Holds a study's budget lock (the PostgreSQL advisory lock every worker takes before it starts a trial
    and every reaper takes before it fails stale trials), so a test can line workers up behind it."""

    def __init__(self, url: str, name: str):
        from tuner.store.budget import LOCK_CLASS

        self.key = {"c": LOCK_CLASS, "s": study_id_of(url, name)}
        self.engine = sqlalchemy.create_engine(url)
        self.conn = self.engine.connect()
        self.conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:c, :s)"), self.key)
        self.watch = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def waiters(self) -> int:
        """Connections queued for the lock (PostgreSQL grants it to them in order when it is released)."""
        return self.watch.execute(sqlalchemy.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND classid = :c AND objid = :s"), self.key).scalar()

    def wait_for_waiters(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.waiters() < n:
            assert time.monotonic() < deadline, f"fewer than {n} waiters for the budget lock after {timeout} s"
            time.sleep(0.1)

    def release(self) -> None:
        if self.conn.closed:  # released already (a finally: after an early release)
            return
        self.conn.commit()  # ends the transaction: the lock goes to the first waiter
        self.conn.close()
        self.watch.close()
        self.engine.dispose()


def checkpoint_dir(url: str, name: str) -> Path:
    """The study's checkpoint folder as stored at launch: ROOT/<study uuid> (see tuner/store/place.py)."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    storage.engine.dispose()
    return Path(attrs["tuner_checkpoint_root"]) / attrs["tuner_uuid"]


# PgBouncer: Debian's package. .ci/run installs it; a developer's machine gets it here, once, where it is absent.
PGBOUNCER_INSTALL = "apt-get update -qq && apt-get install -y -qq pgbouncer"
_PGBOUNCER_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")  # not on a non-root user's PATH


def _find_pgbouncer() -> str | None:
    return shutil.which("pgbouncer", path=os.pathsep.join([os.environ.get("PATH", ""), *_PGBOUNCER_DIRS]))


def pgbouncer_binary() -> str:
    """The pgbouncer binary; installed with apt-get where it is absent (as root, once per machine: the
    parallel test processes take turns on a lock), else the calling test is skipped with the reason."""
    found = _find_pgbouncer()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("PgBouncer is not installed and cannot be installed here (that needs root and apt-get); "
                    f"install Debian's package: {PGBOUNCER_INSTALL}")
    reason = "another test process tried first"
    with open(Path(tempfile.gettempdir()) / "tuner-test-pgbouncer-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one apt-get at a time (dpkg's own lock would fail the second)
        if not _find_pgbouncer():
            try:
                result = subprocess.run(["sh", "-c", PGBOUNCER_INSTALL], capture_output=True, text=True,
                                        timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
                reason = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
            except subprocess.TimeoutExpired:
                reason = "it took longer than 600 s"
    found = _find_pgbouncer()
    if not found:
        pytest.skip(f"PgBouncer is not installed and `{PGBOUNCER_INSTALL}` did not install it: {reason}")
    return found


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns something (a trial number 0 counts; None, False and [] do not);
    return that, or fail the test after `timeout` seconds saying what it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result is not None and result is not False and result != []:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def count_studies(url: str) -> int:
    """Studies in the database at `url` (0 where Optuna's tables were never created: nothing was stored)."""
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        tables = sqlalchemy.inspect(conn).get_table_names()
        n = conn.execute(sqlalchemy.text("SELECT count(*) FROM studies")).scalar() if "studies" in tables else 0
    engine.dispose()
    return n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgBouncer:
    """A real PgBouncer (transaction pooling unless told otherwise) in front of the PostgreSQL of `user_url`,
    listening on 127.0.0.1 only, authenticating clients with scram-sha-256 against that user's password and
    logging in to PostgreSQL with it. `* =` routes every database name to the same-named database there.

    PgBouncer will not run as root: as root it is started with `-u` as the owner of PostgreSQL's socket folder
    (pgserver's own user, who can reach the socket), else `nobody`; its folder is handed to that user."""

    def __init__(self, user_url: str, **settings: str | int):
        self.user_url = make_url(user_url)
        self.settings = {"pool_mode": "transaction", "default_pool_size": 20, "max_client_conn": 1000,
                         "ignore_startup_parameters": "extra_float_digits", **settings}
        self.dir = Path(tempfile.mkdtemp(prefix="tuner-test-pgbouncer-"))  # beside new_pgdata's, same reason
        self.log = self.dir / "pgbouncer.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def _server(self) -> tuple[str, int]:
        """Where PostgreSQL listens: a socket folder (`?host=` of pgserver's URL) or a host name."""
        host = self.user_url.query.get("host") or self.user_url.host or "localhost"
        return (host if isinstance(host, str) else host[0]), self.user_url.port or 5432

    def _run_as(self) -> str | None:
        if os.geteuid() != 0:
            return None
        host, _ = self._server()
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "root"
        return owner if owner != "root" else "nobody"

    def _write_config(self) -> Path:
        host, port = self._server()
        auth_file = self.dir / "users.txt"
        auth_file.write_text(f'"{self.user_url.username}" "{self.user_url.password}"\n')
        ini = self.dir / "pgbouncer.ini"
        lines = ["[databases]", f"* = host={host} port={port}", "", "[pgbouncer]", "listen_addr = 127.0.0.1",
                 f"listen_port = {self.port}", "unix_socket_dir =", "auth_type = scram-sha-256",
                 f"auth_file = {auth_file}", *(f"{k} = {v}" for k, v in self.settings.items())]
        ini.write_text("\n".join(lines) + "\n")
        for path in (self.dir, auth_file, ini):
            path.chmod(0o700 if path.is_dir() else 0o600)
            if (user := self._run_as()) is not None:
                entry = pwd.getpwnam(user)
                os.chown(path, entry.pw_uid, entry.pw_gid)
        return ini

    def start(self, timeout: float = 60) -> None:
        binary = pgbouncer_binary()
        for _ in range(3):  # a port taken between free_port() and PgBouncer's bind: try another
            self.port = free_port()
            ini = self._write_config()
            user = self._run_as()
            with self.log.open("a") as log:
                self.proc = subprocess.Popen([binary, *(["-u", user] if user else []), str(ini)],
                                             stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
                time.sleep(0.05)
            self.stop()
        raise AssertionError(f"PgBouncer did not start; its log:\n{self.log.read_text()[-3000:]}")

    def url(self, database: str | None = None) -> str:
        """The user's URL through PgBouncer (same user, password and database unless `database` is given)."""
        url = self.user_url.difference_update_query(["host", "port"]).set(host="127.0.0.1", port=self.port)
        return url.set(database=database or self.user_url.database).render_as_string(hide_password=False)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def pgbouncer(user_url: str, **settings: str | int) -> Iterator[PgBouncer]:
    """A started PgBouncer in front of user_url's PostgreSQL, stopped (and its folder removed) afterwards."""
    bouncer = PgBouncer(user_url, **settings)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(bouncer.dir, ignore_errors=True)


@pytest.fixture
def pooled_url(pg_url) -> Iterator[str]:
    """A fresh database on the real PostgreSQL, reached as the password-protected user through a real
    PgBouncer in transaction-pooling mode."""
    with pgbouncer(pg_url) as bouncer:
        yield bouncer.url()


def kill_mid_trial(url: str, name: str, start: Callable[[], subprocess.Popen],
                   running: Callable[[], object | None], process_of: Callable[[object, subprocess.Popen], object],
                   timeout: float = 600) -> tuple[object, subprocess.Popen]:
    """Start a process with `start()` and SIGKILL the one that trains a trial `running()` finds (RUNNING, of the
    kind the test wants; `process_of(trial, started)` is its psutil.Process) while that trial is mid-training.
    Returns (the trial as seen just before the kill, the started process). The study needs a compute budget.

    The condition is made, not hoped for, however fast the machine trains: the test holds the study's budget
    lock and lets it go to one waiter at a time, so each process takes one locked step (an ask, an epoch's
    claim) per round, and a trial that must claim another epoch stays RUNNING until the next round. Once one is
    seen its process is frozen (SIGSTOP) and, if the trial is still RUNNING, killed mid-trial; one that ended
    as it was frozen (a pause claims nothing) is let go, and the next caught."""
    from optuna.trial import TrialState

    deadline = time.monotonic() + timeout
    hold = BudgetLockHold(url, name)
    started = start()
    try:
        while True:
            assert time.monotonic() < deadline, f"no trial was caught mid-training in {timeout} s"
            assert started.poll() is None, f"it exited (code {started.returncode}) before a trial was caught"
            trial = running()
            if trial is not None:
                process = process_of(trial, started)
                process.suspend()
                if load(url, name).get_trials()[trial.number].state == TrialState.RUNNING:
                    process.kill()
                    return trial, started
                process.resume()
            hold.release()  # the waiting step goes through...
            hold = BudgetLockHold(url, name)  # ...and the test queues behind it
    except BaseException:
        started.kill()
        started.wait()
        raise
    finally:
        hold.release()


def kill_worker_while_it_trains(url: str, name: str, env: dict[str, str], log_dir: Path, kind: str,
                                timeout: float = 600) -> tuple[object, int]:
    """Start a worker and SIGKILL it while it trains a trial that continues another (user attribute
    `continues`: an ASHA promotion, a PBT segment), as kill_mid_trial makes certain. Returns that trial (as seen
    just before the kill) and the newest checkpoint epoch of its lineage at the kill."""
    import psutil

    victim, worker = kill_mid_trial(url, name, lambda: start_worker(name, env, log_dir / f"{kind}.log"),
                                    lambda: _running_continuation(url, name),
                                    lambda trial, started: psutil.Process(started.pid), timeout)
    worker.wait()
    folder = checkpoint_dir(url, name) / str(victim.user_attrs["lineage"])
    return victim, max(int(p.stem.split("-")[1]) for p in folder.glob("epoch-*.pt"))


def _running_continuation(url: str, name: str):
    from optuna.trial import TrialState

    return next((t for t in load(url, name).get_trials(states=(TrialState.RUNNING,)) if "continues" in t.user_attrs),
                None)
