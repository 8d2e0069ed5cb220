"""Every storage call rides out a dropped connection, whatever path it takes: a connection error injected into
each RDBStorage method in turn (public and private: optuna.load_study's _CachedStorage calls _create_new_trial,
_set_trial_param, _get_trials and _get_best_trial_id itself) during a real study on the real PostgreSQL.

The fault is injected where every one of those methods enters the database — Optuna's `_create_scoped_session`,
which each calls to open its session — as the OperationalError a dropped connection raises there."""

from __future__ import annotations

import collections
import contextlib
import sys

import psycopg2
import pytest
import sqlalchemy
from optuna.storages._rdb import storage as rdb_storage
from optuna.trial import TrialState

from inprocess import serve_in_process
from tuner.store.storage import RETRIED_METHODS

STUDY = """\
[study]
name = "{name}"
n_trials = 4
sampler = "tpe"
seed = 1

[pruner]
type = "wilcoxon"             # it reads the study's best trial every epoch (_get_best_trial_id)
n_startup_steps = 1

[task]
dataset = "digits"
model = "cnn"
epochs = 3
batch_size = 256

[worker]
heartbeat_interval = 1
grace_period = 30
reaper_period = 1

[space]
lr = {{ low = 1e-3, high = 1e-1, log = true }}
width = {{ low = 4, high = 8 }}
depth = 1
"""


class SessionFaults:
    """Wraps Optuna's _create_scoped_session: counts which storage method opens each session, and makes the
    `nth` session that `method` opens fail as a dropped connection does."""

    def __init__(self, method: str | None = None, nth: int = 1):
        self.method, self.nth = method, nth
        self.calls: collections.Counter[str] = collections.Counter()
        self.injected = 0
        self.original = rdb_storage._create_scoped_session

    def __call__(self, *args, **kwargs):
        caller = sys._getframe(1).f_code.co_name
        self.calls[caller] += 1
        if caller == self.method and self.calls[caller] == self.nth:
            self.injected += 1
            raise sqlalchemy.exc.OperationalError(
                "injected", {}, psycopg2.OperationalError("server closed the connection unexpectedly"))
        return self.original(*args, **kwargs)


def run_with(faults: SessionFaults, pg_url, tmp_path, monkeypatch, name: str):
    """The study launched as usual, then served by a worker whose every session goes through `faults`."""

    @contextlib.contextmanager
    def injecting():
        rdb_storage._create_scoped_session = faults
        try:
            yield
        finally:
            rdb_storage._create_scoped_session = faults.original

    return serve_in_process(pg_url, tmp_path / name, monkeypatch, STUDY.format(name=name), during=injecting)


def test_a_connection_error_in_each_storage_method_in_turn_costs_nothing(pg_url, tmp_path, monkeypatch):
    # a clean run first: which methods a worker's study reaches, and how often
    probe = SessionFaults()
    run_with(probe, pg_url, tmp_path, monkeypatch, "probe")
    reached = sorted(probe.calls)
    # the private methods _CachedStorage calls directly are among them, and all of them are retried
    assert {"_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id"} <= set(reached)
    # the rest are the storage's construction (its schema-version checks), which make_storage retries as a whole
    construction = {"_init_version_info_model", "check_table_schema_compatibility"}
    assert set(reached) - set(RETRIED_METHODS) <= construction, set(reached) - set(RETRIED_METHODS)
    for i, method in enumerate(reached):
        # in the middle of the study where the method is called more than once (its first call otherwise)
        faults = SessionFaults(method, nth=max(1, probe.calls[method] // 2))
        study = run_with(faults, pg_url, tmp_path, monkeypatch, f"f{i}")  # the worker exits 0 (asserted there)
        assert faults.injected == 1, method
        trials = study.get_trials()
        states = [t.state for t in trials]
        assert states.count(TrialState.FAIL) == 0, (method, [t.user_attrs.get("fail_reason") for t in trials])
        assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 4, (method, states)
        assert len(trials) == 4, method


@pytest.mark.parametrize("method", ["_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id"])
def test_the_private_methods_are_retried_by_the_storage_itself(method):
    from tuner.store.storage import ResilientRDBStorage

    assert getattr(ResilientRDBStorage, method) is not getattr(rdb_storage.RDBStorage, method)
    assert getattr(ResilientRDBStorage, method).__wrapped__ is getattr(rdb_storage.RDBStorage, method)
