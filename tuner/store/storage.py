"""Storage URL -> Optuna RDBStorage. The only place with engine settings.

The URL's text (precedence, normalising, redaction) is tuner.store.urls.
The URL's password is never printed: every message uses ``redact(url)`` and ``scrub(text, url)``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import optuna
import sqlalchemy

from tuner.store.budget import holds_budget_lock
from tuner.errors import TunerError
from tuner.store.urls import is_sqlite, normalise_url, redact, scrub, shown_url, sqlite_path

# A worker keeps ONE connection open (its pool's); the main loop, the heartbeat and reaper threads and the budget
# lock's transaction (which runs its whole section on that one connection, tuner.store.budget) take it in turn. When two
# need one at the same moment (a heartbeat, or the reaper's lease, while the main loop is in a transaction or
# queueing for the lock), an extra one is opened: up to 1 + MAX_OVERFLOW. So N workers hold about N connections
# (2 each while they queue for the budget lock), not 4 N.
POOL_SIZE = 1
MAX_OVERFLOW = 3
# Seconds a worker waits for a free connection in its own pool before saying so.
POOL_TIMEOUT = 30
# Seconds SQLite waits on a locked database file before "database is locked".
SQLITE_BUSY_TIMEOUT = 60

# Backoff between retries of a failed DB call, seconds: doubles from FIRST up to MAX.
RETRY_FIRST, RETRY_MAX = 0.5, 10.0

_log = logging.getLogger(__name__)
T = TypeVar("T")


def _engine_kwargs(url: str) -> dict[str, Any]:
    if is_sqlite(url):
        # SQLite serialises writers on a file lock; wait for it instead of failing at once.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    # pool_pre_ping: Optuna enables it only for MySQL; without it a PostgreSQL restart or an
    # idle-connection drop surfaces as an error on the next call instead of a fresh connection.
    return {
        "pool_pre_ping": True,
        "pool_size": POOL_SIZE,
        "max_overflow": MAX_OVERFLOW,
        "pool_timeout": POOL_TIMEOUT,
        # the process id lets a DBA (and tests) tell whose connections pg_stat_activity shows
        "connect_args": {"connect_timeout": 10, "application_name": f"tuner:{os.getpid()}"},
    }


def _enable_sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """WAL lets readers run beside the one writer; it is a property of the file, so setting it once is enough."""
    with storage.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")


def call_with_retry(fn: Callable[[], T], *, url: str, retry_seconds: float, what: str) -> T:
    """Call fn; on a connection error wait (0.5 s, 1 s, ... 10 s) and call again, for up to retry_seconds.

    Past that, one TunerError that says how long the database was unreachable (password scrubbed).
    """
    deadline, delay, warned = time.monotonic() + retry_seconds, RETRY_FIRST, False
    while True:
        try:
            result = fn()
            if warned:
                _log.info("database reachable again (%s)", what)
            return result
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            if not warned:  # at once, whatever the deadline: a slow first attempt must not hide the wait
                _log.warning("database error in %s, retrying for up to %.0f s: %s", what, retry_seconds,
                             _reason(exc, url))
                warned = True
            if time.monotonic() + delay > deadline:
                raise TunerError(f"the database at {redact(url)} was unreachable for {retry_seconds:.0f} s "
                                 f"({what}): {_reason(exc, url)}") from None
            time.sleep(delay)
            delay = min(2 * delay, RETRY_MAX)


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose every call rides out connection errors (a PostgreSQL restart, a killed backend,
    a dropped idle connection) by retrying with backoff for up to `retry_seconds`.

    A retried write whose first attempt did commit is harmless here: intermediate values and attributes
    are upserts, a second tell raises UpdateFinishedTrialError (the worker checks the stored state), and a
    duplicate trial from create_new_trial gets a heartbeat from the reaper and is failed after the grace period.
    """

    retry_seconds: float = 600.0


def _retrying(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        if holds_budget_lock():  # its transaction is the unit: a dropped connection retries the whole section
            return method(self, *args, **kwargs)
        return call_with_retry(lambda: method(self, *args, **kwargs), url=self.url,
                               retry_seconds=self.retry_seconds, what=method.__name__)

    return wrapper


def opens_a_session(method: Callable) -> bool:
    """Whether an RDBStorage method goes to the database on its own: it opens a session. The `*_without_commit`
    helpers run inside another method's session and are retried with it, as a whole."""
    try:
        return "_create_scoped_session(self.scoped_session" in inspect.getsource(method)
    except (OSError, TypeError):
        return False


# Every call that reaches the database, whatever path it takes: the public methods, and the private ones that
# Optuna's _CachedStorage (what optuna.load_study puts in front of an RDBStorage) calls directly —
# _create_new_trial, _set_trial_param, _get_trials, _get_best_trial_id — and the reaper's _get_stale_trial_ids.
RETRIED_METHODS = sorted(
    name for name, method in vars(optuna.storages.RDBStorage).items()
    if callable(method) and not name.startswith("__") and (not name.startswith("_") or opens_a_session(method)))
for _name in RETRIED_METHODS:
    setattr(ResilientRDBStorage, _name, _retrying(vars(optuna.storages.RDBStorage)[_name]))


def make_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    heartbeat_stale_trial_callback: Any = None,
    retry_seconds: float | None = None,
    create: bool = True,
) -> optuna.storages.RDBStorage:
    """Open the storage (creating Optuna's tables if needed); one clear TunerError if it cannot be reached.

    retry_seconds: for long-running workers, ride out DB outages this long (the first connect does not wait:
    a wrong URL should fail at once).
    create: False for commands that only read: a SQLite file that does not exist is an error, not a new,
    empty database (which would hide a wrong path or working directory).
    """
    url = normalise_url(url)
    path = sqlite_path(url)
    if not create and path is not None and not path.exists():
        raise TunerError(f"no database at {path} (storage {shown_url(url)}); launch a study there first, or "
                         "point --storage or TUNER_STORAGE at the database that has it")
    cls = optuna.storages.RDBStorage if retry_seconds is None else ResilientRDBStorage

    def connect() -> optuna.storages.RDBStorage:
        storage = cls(
            url,
            engine_kwargs=_engine_kwargs(url),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=heartbeat_stale_trial_callback,
            skip_compatibility_check=True,  # Optuna's holds a transaction open while it opens a second connection
        )
        _check_schema(storage)
        if is_sqlite(url):
            _enable_sqlite_wal(storage)
        if retry_seconds is not None:
            storage.retry_seconds = retry_seconds
        return storage

    try:
        if retry_seconds is None:
            return connect()
        # a worker may start while the database restarts: its first connection waits like any other call (a
        # wrong password or database name is not an outage, and fails at once)
        return call_with_retry(connect, url=url, retry_seconds=retry_seconds, what="connect")
    except sqlalchemy.exc.ArgumentError:
        raise TunerError(f"storage URL {redact(url)} is not a valid database URL") from None
    except ModuleNotFoundError as exc:
        raise TunerError(f"storage URL {redact(url)} needs the Python package {exc.name!r}") from None
    except ImportError:  # Optuna's "Failed to import DB access module" for a driver that is not installed
        raise TunerError(f"storage URL {redact(url)}: its database driver is not installed; tuner supports "
                         "PostgreSQL (postgresql+psycopg2://) and SQLite (sqlite:///)") from None
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        raise TunerError(f"cannot reach the database at {redact(url)}: {_reason(exc, url)}") from None


def _check_schema(storage: optuna.storages.RDBStorage) -> None:
    """Optuna's schema-version check, one connection at a time. Optuna's own keeps a session's transaction open
    while it opens a second connection: behind a pooler, a few hundred workers starting at once then hold every
    server connection with the first half and wait for ever on the second."""
    current, head = storage.get_current_version(), storage.get_head_version()
    if current != head:
        raise TunerError(f"the database at {redact(str(storage.url))} has Optuna's table schema {current}, this "
                         f"Optuna ({optuna.__version__}) needs {head}: run `optuna storage upgrade --storage URL` "
                         "once (with the URL from the environment), or install the Optuna that made it")


def _reason(exc: BaseException, url: str) -> str:
    """The driver's first line, without the SQL or the password."""
    while exc.__cause__ is not None and not isinstance(exc, sqlalchemy.exc.DBAPIError):
        exc = exc.__cause__  # Optuna's StorageInternalError -> the SQLAlchemy error under it
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    text = lines[0] if lines else type(original).__name__
    return scrub(text, url)


# Errors of the URL itself, not of the database's availability: retrying them only delays the one-line error.
_PERMANENT = re.compile(r"password authentication failed|database \"[^\"]*\" does not exist|"
                        r"role \"[^\"]*\" does not exist|no pg_hba\.conf entry")


def is_connection_error(exc: BaseException | None) -> bool:
    """True for errors that a reconnect can cure: server gone, connection dropped, pool exhausted.

    Follows the cause chain: Optuna re-raises a failed commit as StorageInternalError from the driver error.
    """
    while exc is not None:
        if isinstance(exc, sqlalchemy.exc.OperationalError) and _PERMANENT.search(str(exc)):
            return False  # waiting will not fix the URL
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                            sqlalchemy.exc.TimeoutError)):
            return True
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, sqlalchemy.exc.PendingRollbackError) and "invalid transaction" in str(exc):
            return True  # a statement on a connection that was dropped earlier in the same transaction
        # Optuna's _get_trials runs a second query on the same session after an OperationalError: the driver's
        # error is then only the implicit __context__ of SQLAlchemy's PendingRollbackError ("Can't reconnect until
        # invalid transaction is rolled back"), which Optuna re-raises as the cause of StorageInternalError.
        if exc.__cause__ is None and isinstance(exc, sqlalchemy.exc.PendingRollbackError):
            exc = exc.__context__
        else:
            exc = exc.__cause__
    return False


@contextlib.contextmanager
def brief_storage(url: str, **kwargs: Any) -> Iterator[optuna.storages.RDBStorage]:
    """A storage for a few calls, whose connections are closed afterwards, so that a long-running worker
    holds only its one pool (at most POOL_SIZE connections) and not idle leftovers of set-up steps."""
    storage = make_storage(url, **kwargs)
    try:
        yield storage
    finally:
        storage.engine.dispose()
