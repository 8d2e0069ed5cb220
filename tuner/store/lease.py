"""Which worker reaps a study: a lease row per study, so one reaper runs per study instead of one per worker.

Every worker's reaper thread wakes each `reaper_period` and asks for the lease with one statement (an upsert
that only takes the row when it is free, expired, or already ours). The holder renews it on each tick; when the
holder dies or freezes, its lease runs out after LEASE_PERIODS periods and the next worker to ask takes over.

One statement in autocommit, no session state: correct behind PgBouncer in transaction mode (a session-level
advisory lock would not be). Expiry uses each worker's clock: two hosts with skewed clocks may both reap for a
while, which only costs work — reaping is idempotent and runs under the study's budget lock.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import sqlalchemy

LEASE_PERIODS = 3  # a lease not renewed for this many reaper periods is free to take

_metadata = sqlalchemy.MetaData()
LEASES = sqlalchemy.Table(
    "tuner_reaper_leases", _metadata,
    sqlalchemy.Column("study_id", sqlalchemy.Integer, primary_key=True),
    sqlalchemy.Column("owner", sqlalchemy.String(255), nullable=False),
    sqlalchemy.Column("expires_at", sqlalchemy.Float, nullable=False),  # seconds since the epoch
)

_TAKE = sqlalchemy.text(
    "INSERT INTO tuner_reaper_leases (study_id, owner, expires_at) VALUES (:sid, :owner, :until) "
    "ON CONFLICT (study_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
    "WHERE tuner_reaper_leases.owner = excluded.owner OR tuner_reaper_leases.expires_at < :now "
    "RETURNING owner")


def create_lease_table(engine: sqlalchemy.Engine) -> None:
    """Idempotent; several workers creating it at once is fine (one wins, the others find it)."""
    try:
        _metadata.create_all(engine, checkfirst=True)
    except sqlalchemy.exc.DBAPIError:  # a concurrent CREATE TABLE won the race (PostgreSQL: duplicate type)
        if not sqlalchemy.inspect(engine).has_table(LEASES.name):
            raise


class ReaperLease:
    """This worker's claim to reap one study."""

    def __init__(self, engine: sqlalchemy.Engine, study_id: int, period: float):
        self.engine, self.study_id = engine, study_id
        self.duration = LEASE_PERIODS * period
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._table_checked = False

    def held(self) -> bool:
        """Take or renew the lease; True while this worker holds it."""
        if not self._table_checked:
            create_lease_table(self.engine)
            self._table_checked = True
        now = time.time()
        with self.engine.begin() as conn:
            row = conn.execute(_TAKE, {"sid": self.study_id, "owner": self.owner, "until": now + self.duration,
                                       "now": now}).first()
        return row is not None

    def release(self) -> None:
        """On a clean exit: let the next worker take over at once instead of after the lease runs out."""
        with self.engine.begin() as conn:
            conn.execute(sqlalchemy.text("DELETE FROM tuner_reaper_leases WHERE study_id = :sid AND owner = :owner"),
                         {"sid": self.study_id, "owner": self.owner})
