"""The study's global trial budget, enforced under a lock shared by every worker.

Optuna counts n_trials per process, so N workers overshoot by up to N-1. Here every worker takes the
study's lock, counts trials by state, and only then asks for a trial, so exactly n_trials end
COMPLETE or PRUNED. FAILed trials do not use the budget; their retries (WAITING) do. A trial that continues a
paused one (an ASHA promotion, user attribute `continues`) uses no slot either: n_trials counts
configurations, and such trials are counted apart (Counts.continued). Trials a warm start imported (user
attribute WARM_START_ATTR, tuner.fleet.warm_start) were trained elsewhere: they use no slot and are counted apart
too (Counts.imported).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.orm
from sqlalchemy.engine import make_url

# Two-key advisory lock namespace: (LOCK_CLASS, study_id). Any constant no other app uses.
LOCK_CLASS = 0x7475  # "tu"
# How long a lock holder may stay idle inside its critical section before PostgreSQL ends its session.
# The section itself takes milliseconds; only a frozen process gets near this.
HOLDER_IDLE_LIMIT_MS = 10_000
# How long a waiter blocks for the lock at a time before it gives its connection back and queues again.
WAIT_TURN_MS = 1000
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout
CONTINUATION_ATTR = "continues"  # user attribute of a trial that continues a paused one (tuner.fleet.asha)
WARM_START_ATTR = "tuner_warm_start_from"  # user attribute of a trial a warm start imported: the source study


@dataclass(frozen=True)
class Counts:
    by_state: dict[str, int]  # configurations: trials that start one, and their retries
    continued: dict[str, int] = dataclasses.field(default_factory=dict)  # promotions of paused trials, by state
    imported: int = 0  # COMPLETE trials a warm start added (trained elsewhere: never in a budget)

    def __getitem__(self, state: str) -> int:
        return self.by_state.get(state, 0)

    @property
    def finished(self) -> int:
        return self["COMPLETE"] + self["PRUNED"]

    @property
    def committed(self) -> int:
        """Trials that hold a budget slot: finished, running, or queued for a retry."""
        return self.finished + self["RUNNING"] + self["WAITING"]

    def states(self) -> dict[str, int]:
        """Every trial by state, promotions included (what people see; the budget counts configurations)."""
        return dict(collections.Counter(self.by_state) + collections.Counter(self.continued))

    @property
    def active(self) -> int:
        """Trials running or queued, promotions included: while any is, a paused trial may still be promoted."""
        return (self["RUNNING"] + self["WAITING"] + self.continued.get("RUNNING", 0)
                + self.continued.get("WAITING", 0))


_held = threading.local()  # this thread's budget-lock connection, while it holds the lock


def holds_budget_lock() -> bool:
    """Whether this thread is inside budget_lock (PostgreSQL): its storage calls run in the lock's transaction."""
    return getattr(_held, "conn", None) is not None


@contextlib.contextmanager
def connection(storage: optuna.storages.RDBStorage) -> Iterator[sqlalchemy.Connection]:
    """A connection for a few queries: inside budget_lock, the lock's own (the same transaction); else the pool's."""
    held = getattr(_held, "conn", None)
    if held is not None and getattr(_held, "engine", None) is storage.engine:
        yield held
        return
    with storage.engine.connect() as conn:
        yield conn


_COUNTS = sqlalchemy.text(
    "SELECT t.state, a.trial_id IS NOT NULL AS continued, w.trial_id IS NOT NULL AS imported, COUNT(*) "
    "FROM trials t "
    f"LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = '{CONTINUATION_ATTR}' "
    f"LEFT JOIN trial_user_attributes w ON w.trial_id = t.trial_id AND w.key = '{WARM_START_ATTR}' "
    "WHERE t.study_id = :sid GROUP BY t.state, continued, imported")


def trial_counts(storage: optuna.storages.RDBStorage, study_id: int) -> Counts:
    with connection(storage) as conn:
        rows = conn.execute(_COUNTS, {"sid": study_id}).all()
    # Optuna stores the TrialState name ("COMPLETE"); older SQLite files may hold the enum repr.
    configs, continued, imported = collections.Counter(), collections.Counter(), 0
    for state, is_continued, is_imported, n in rows:
        if is_imported:
            imported += n
            continue
        (continued if is_continued else configs)[str(state).split(".")[-1]] += n
    return Counts(configs, continued, imported)


def can_start(counts: Counts, n_trials: int) -> bool:
    """A queued retry may always run (it already holds its slot); otherwise only below the budget
    (n_trials 0: the study has no trial budget, only a compute budget, which tuner.fleet.compute enforces)."""
    return counts["WAITING"] > 0 or counts.continued.get("WAITING", 0) > 0 or not n_trials \
        or counts.committed < n_trials


def _wait_for_lock(conn: sqlalchemy.Connection, study_id: int) -> None:
    """Take the study's transaction advisory lock on `conn`, waiting in turns of WAIT_TURN_MS.

    A waiter blocked in pg_advisory_xact_lock holds a server connection. Behind a pooler (PgBouncer in transaction
    mode) hundreds of waiters would hold the whole pool, and every other statement (a starting worker, heartbeats,
    results) would queue until the pooler gave up on it; so a waiter gives its connection back every turn and
    queues again. Each turn also sets a server-side limit on how long the holder may sit idle in the
    transaction: a holder that is frozen (SIGSTOP, a paused VM) inside the critical section has its session ended
    by PostgreSQL after HOLDER_IDLE_LIMIT_MS, which releases the lock for everyone else."""
    while True:
        conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = {HOLDER_IDLE_LIMIT_MS}")
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {WAIT_TURN_MS}")
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:c, :s)"), {"c": LOCK_CLASS, "s": study_id})
        except sqlalchemy.exc.OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) != LOCK_NOT_AVAILABLE:
                raise
            conn.rollback()  # the turn is over: the connection goes back (to the pooler) until the next one
            continue
        conn.exec_driver_sql("SET LOCAL lock_timeout = 0")  # the section's own statements wait as usual
        return


@contextlib.contextmanager
def budget_lock(storage: optuna.storages.RDBStorage, study_id: int) -> Iterator[None]:
    """Serialise count-then-create across all workers of a study.

    PostgreSQL: a transaction advisory lock (released by the server if the holder dies or freezes). Everything
    the holder does inside runs on that one connection, in that one transaction: tuner's own queries (through
    `connection()`) and Optuna's storage calls (its session is bound to the connection for this thread, each call
    a SAVEPOINT), committed together as the lock is released. So a section is atomic (a FAIL and its retry are
    stored together or not at all), and the holder never needs a second connection — which a connection pooler
    full of workers waiting for this very lock could not give it.
    SQLite: an flock on a file beside the database (SQLite means one host).
    """
    url = make_url(str(storage.url))
    if url.get_backend_name() == "postgresql":
        with storage.engine.connect() as conn:
            _wait_for_lock(conn, study_id)
            # Optuna's commits become savepoint releases and its rollbacks roll back to the savepoint: the lock
            # and the rest of the section survive both
            storage.scoped_session.registry.set(
                sqlalchemy.orm.Session(bind=conn, join_transaction_mode="create_savepoint"))
            _held.conn, _held.engine = conn, storage.engine
            failed = True
            try:
                yield
                failed = False
            finally:
                _held.conn = _held.engine = None
                try:
                    storage.scoped_session.remove()  # this thread's next Optuna call gets an ordinary session
                except sqlalchemy.exc.SQLAlchemyError:  # its connection is gone: nothing to release
                    pass
                try:
                    if failed:
                        conn.rollback()  # nothing half-done is stored; the caller retries the section
                    else:
                        conn.commit()  # stores the section and releases the lock
                except sqlalchemy.exc.DBAPIError as exc:
                    # The session died with the lock held (server restart, or the idle limit above);
                    # PostgreSQL released the lock with it, and rolled back the section.
                    if not exc.connection_invalidated and not isinstance(exc, sqlalchemy.exc.OperationalError):
                        raise
                    if not failed:  # the section is not stored: say so, so the caller retries it
                        raise
    elif url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        lock_path = Path(f"{url.database}.tuner-lock")
        with open(lock_path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    else:  # in-memory SQLite: one process, nothing to serialise against
        yield
