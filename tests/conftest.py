"""Shared fixtures: a real PostgreSQL with a real password, real worker processes, small study files.

PostgreSQL: $TUNER_TEST_DATABASE_URL if set (its user needs CREATEDB), else a throwaway server started
here with pgserver (no root, no Docker). Every test gets its own database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
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


# The suite runs in parallel (pytest-xdist, see pyproject.toml), so its wall time is at least its longest test's:
# these start first, spread over the parallel workers, instead of last.
LONGEST_FIRST = (
    "test_the_chaos_soak_holds_every_invariant",
    "test_the_digits_demo_finds_a_good_model_and_prunes",
    "test_a_killed_workers_trial_is_failed_while_others_are_busy_and_resumed_once",
    "test_eight_workers_finish_exactly_the_budget_even_when_stopped_and_restarted",
    "test_a_long_trial_under_cpu_load_is_never_falsely_failed",
    "test_fine_tuning_a_backbone_from_a_local_weights_file_on_an_imagefolder",
    "test_a_finished_sqlite_study_gets_its_report",
    "test_a_retry_with_a_corrupt_newest_checkpoint_resumes_from_the_previous_and_completes",
    "test_extending_a_finished_study_lets_three_workers_finish_exactly_the_new_total",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; deselected where there is none")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests and not _cuda_available():
        config.hook.pytest_deselected(items=gpu_tests)
        items[:] = [item for item in items if item not in gpu_tests]
    items.sort(key=lambda item: item.originalname not in LONGEST_FIRST)  # a stable sort: the rest keep their order


def pytest_report_header(config: pytest.Config) -> str:
    return "gpu tests: " + ("run (CUDA present)" if _cuda_available() else "deselected (no CUDA here)")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def new_pgdata() -> Path:
    """An empty folder for a throwaway server, outside pytest's temporary tree: as root, pgserver runs PostgreSQL
    as another user and opens the folders on the way up for it, and every new pytest session (a second suite on
    the same machine) closes /tmp/pytest-of-USER again (mode 0700), which killed the first session's server."""
    return Path(tempfile.mkdtemp(prefix="tuner-test-pg-"))


def start_pgserver(pgdata: Path) -> str:
    """Start PostgreSQL in pgdata with a `tuner` role that must log in with PASSWORD; returns an admin URL.
    The server is stopped and pgdata removed when the test session's process exits."""
    import pgserver

    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    hba = pgdata / "pg_hba.conf"
    # First matching line wins: the tuner role must authenticate, everyone else stays on trust.
    hba.write_text("local all tuner scram-sha-256\n" + hba.read_text())
    server.psql(f"CREATE ROLE tuner LOGIN CREATEDB PASSWORD '{PASSWORD}'; SELECT pg_reload_conf();")
    return server.get_uri()


def admin_and_user_urls(admin_uri: str) -> tuple[str, str]:
    admin = make_url(admin_uri.replace("postgresql://", "postgresql+psycopg2://", 1))
    user = admin.set(username="tuner", password=PASSWORD)
    return admin.render_as_string(hide_password=False), user.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory) -> tuple[str, str]:
    """(admin URL, password-protected user URL) of the session's PostgreSQL, database 'postgres'."""
    env_url = os.environ.get("TUNER_TEST_DATABASE_URL")
    if env_url:
        return env_url, env_url
    return admin_and_user_urls(start_pgserver(new_pgdata()))


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
        from tuner.budget import LOCK_CLASS

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
        self.conn.commit()  # ends the transaction: the lock goes to the first waiter
        self.conn.close()
        self.watch.close()
        self.engine.dispose()


def checkpoint_dir(url: str, name: str) -> Path:
    """The study's checkpoint folder as stored at launch: ROOT/<study uuid> (see tuner/place.py)."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    storage.engine.dispose()
    return Path(attrs["tuner_checkpoint_root"]) / attrs["tuner_uuid"]
