"""Stopping when done: `[study] target`, `patience` and `max_hours` end a study for every worker, the reason is
shown (status, report, history), and `tuner extend` lifts the stop. The rules themselves on trials made by hand
(SQLite, no training), and each stop on a 3-worker PostgreSQL study with real worker processes."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import re

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from conftest import count_studies, load, start_worker, study_file, tuner, tuner_env, wait_all
from test_cli import assert_one_line_error
from test_reliability import assert_clean_logs
from tuner.errors import TunerError
from tuner.fleet.history import append_history
from tuner.fleet.stopping import LIFTED, Leg, holding_stop, stop_reason
from tuner.store.budget import WARM_START_ATTR
from tuner.spec.config import load_config
from tuner.spec.toml_dump import dump_toml
from tuner.store.storage import make_storage

# Workers here kill no one: relaxed heartbeats, so a loaded machine never fails a live trial.
RELAXED = "heartbeat_interval = 2\ngrace_period = 30\nreaper_period = 2"


# --- the study file -------------------------------------------------------------------------------------------

def test_the_stop_conditions_are_read_and_stored_and_left_out_when_unset(tmp_path):
    config = load_config(study_file(tmp_path, "s", extra="target = 0.97\npatience = 12\nmax_hours = 1.5"))
    assert (config.study.target, config.study.patience, config.study.max_hours) == (0.97, 12, 1.5)
    stored = config.to_dict()["study"]
    assert (stored["target"], stored["patience"], stored["max_hours"]) == (0.97, 12, 1.5)
    plain = load_config(study_file(tmp_path, "p"))
    assert (plain.study.target, plain.study.patience, plain.study.max_hours) == (None, 0, 0.0)
    assert "target" not in dump_toml(plain.to_dict())  # TOML has no null: the dashboard's note leaves it out
    assert "target = 0.97" in dump_toml(config.to_dict())


@pytest.mark.parametrize("extra, needles", [
    ("target = 0.9\nobjectives = ['val_accuracy', 'param_count']", ["study.target needs one objective", "0.9"]),
    ("patience = 5\nobjectives = ['val_accuracy', 'param_count']", ["study.patience needs one objective", "5"]),
    ("patience = 0", ["study.patience must be >= 1", "got 0"]),
    ("patience = -2", ["study.patience must be >= 1", "got -2"]),
    ("patience = 1.5", ["study.patience must be an integer", "1.5"]),
    ("max_hours = -1", ["study.max_hours must be > 0", "got -1.0"]),
    ("max_hours = 0", ["study.max_hours must be > 0", "got 0.0"]),
    ("target = 1.5", ["study.target must be between 0 and 1 for val_accuracy", "1.5"]),
    ("target = 'high'", ["study.target must be a number", "'high'"]),
    ("target = -0.1\nmetric = 'val_loss'\ndirection = 'minimize'", ["study.target must be >= 0 for val_loss"]),
])
def test_a_bad_stop_condition_is_one_line_naming_the_field_and_the_value(tmp_path, extra, needles):
    path = study_file(tmp_path, "bad", extra=extra, pruner='type = "none"')
    with pytest.raises(TunerError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"study file {path}: ") and "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_a_bad_stop_condition_is_refused_at_launch_and_nothing_is_stored(pg_url, tmp_path):
    env = tuner_env(pg_url, tmp_path)
    for i, (extra, needle) in enumerate([("patience = 0", "study.patience must be >= 1, got 0"),
                                         ("max_hours = -0.5", "study.max_hours must be > 0 (leave it out for no "
                                                              "time limit), got -0.5")]):
        path = study_file(tmp_path, f"bad{i}", extra=extra)
        assert_one_line_error(tuner("launch-study", str(path), env=env), needle)
    assert count_studies(pg_url) == 0


# --- the rules, on trials made by hand ------------------------------------------------------------------------

def _finished(study: optuna.Study, outcomes: list[float | None], user_attrs: dict | None = None,
              at: datetime.datetime = datetime.datetime(2030, 1, 1)) -> None:
    """Finished trials, one second apart in order of completion: a value is COMPLETE, None is PRUNED."""
    known = len(study.get_trials(deepcopy=False))
    for i, value in enumerate(outcomes):
        done = at + datetime.timedelta(seconds=known + i + 1)
        study.add_trial(FrozenTrial(
            number=0, trial_id=0, state=TrialState.PRUNED if value is None else TrialState.COMPLETE, value=value,
            datetime_start=done - datetime.timedelta(seconds=1), datetime_complete=done, params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)}, user_attrs=dict(user_attrs or {}), system_attrs={},
            intermediate_values={1: 0.1}))


@pytest.fixture
def hand_made(tmp_path):
    url = f"sqlite:///{tmp_path / 'rules.db'}"
    storage = make_storage(url)
    study = optuna.create_study(study_name="rules", storage=storage, direction="maximize")
    config = load_config(study_file(tmp_path, "rules", extra="patience = 3"))
    return storage, study, config.study


def test_patience_counts_finished_trials_after_the_best_in_order_of_completion(hand_made):
    storage, study, rules = hand_made
    sid = study._study_id

    def stop(leg: Leg = Leg()) -> tuple[str, str]:
        return holding_stop(storage, sid, rules, leg)

    _finished(study, [0.5, None, 0.5])  # an equal value is no new best; a PRUNED trial never is one
    assert stop() == ("", "")  # 2 after the best
    _finished(study, [0.6])  # a new best: counting starts again
    assert stop() == ("", "")
    _finished(study, [None, 0.59, 0.6])
    kind, why = stop()
    assert kind == "patience"
    assert why == ("patience spent: 3 finished trials without a new best (best: trial 3, val_accuracy 0.6000), "
                   "patience = 3")
    # after a lift at 7 finished trials only those that finish later count (the best is still the best)
    assert stop(Leg(finished_before=7)) == ("", "")
    _finished(study, [None, None])
    assert stop(Leg(finished_before=7)) == ("", "")
    _finished(study, [0.1])
    assert stop(Leg(finished_before=7))[0] == "patience"


def test_imported_trials_reach_no_target_spend_no_patience_and_start_no_clock(hand_made):
    """A warm start's trials were trained elsewhere: the study stops on its own trials only."""
    storage, study, rules = hand_made
    sid = study._study_id
    imported = {WARM_START_ATTR: "src"}
    _finished(study, [0.9, None, None, None, None], imported, at=datetime.datetime(2000, 1, 1))  # long ago
    strict = dataclasses.replace(rules, target=0.5, patience=3, max_hours=1.0)
    assert holding_stop(storage, sid, strict, Leg()) == ("", "")
    _finished(study, [0.4, None, None])  # own trials: the best (0.4) and two without a new one
    assert holding_stop(storage, sid, strict, Leg()) == ("", "")
    _finished(study, [None])
    assert holding_stop(storage, sid, strict, Leg())[0] == "patience"
    _finished(study, [0.5])
    assert holding_stop(storage, sid, strict, Leg())[1].startswith("target reached: trial 9 ")


def test_a_recorded_stop_is_final_until_lifted_and_reads_as_recorded(hand_made):
    storage, study, rules = hand_made
    sid = study._study_id
    _finished(study, [0.5, None, None, None])
    recorded = stop_reason(storage, sid, rules, record=True)
    assert recorded.startswith("patience spent: 3 ")
    _finished(study, [0.9, None])  # a trial still running at the stop ends with a new best, another after it
    assert holding_stop(storage, sid, rules, Leg()) == ("", "")  # the rule alone would let the study go on
    assert stop_reason(storage, sid, rules) == recorded  # but the study stays stopped, for the recorded reason
    append_history(storage, sid, LIFTED, reason=recorded, finished_before=6, since="2031-01-01T00:00:00")
    assert stop_reason(storage, sid, rules) == ""


def test_a_target_is_reached_at_or_above_it_and_for_minimize_at_or_below(hand_made):
    storage, study, rules = hand_made
    _finished(study, [0.4, None, 0.7, 0.9])
    at = dataclasses.replace(rules, patience=0, target=0.7)
    assert holding_stop(storage, study._study_id, at) == (
        "target", "target reached: trial 2 has val_accuracy 0.7000 >= 0.7")  # the first to reach it
    assert holding_stop(storage, study._study_id, dataclasses.replace(at, target=0.95)) == ("", "")
    low = optuna.create_study(study_name="low", storage=storage, direction="minimize")
    _finished(low, [0.9, 0.3])
    loss = dataclasses.replace(at, metric="val_loss", direction="minimize", target=0.3)
    assert holding_stop(storage, low._study_id, loss) == ("target", "target reached: trial 1 has val_loss "
                                                                     "0.3000 <= 0.3")


# --- each stop on a 3-worker PostgreSQL study ------------------------------------------------------------------

def _status(env: dict[str, str], name: str) -> dict:
    result = tuner("status", "--study", name, "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


def _run_workers(name: str, env: dict[str, str], tmp_path, n: int = 3, tag: str = "w") -> list:
    logs = [tmp_path / f"{tag}{i}.log" for i in range(n)]
    codes = wait_all([start_worker(name, env, log) for log in logs], timeout=400)
    assert codes == [0] * n, [log.read_text()[-2000:] for log in logs]
    assert_clean_logs(*logs)
    return logs


def _states(url: str, name: str) -> list[str]:
    return [t.state.name for t in load(url, name).get_trials(deepcopy=False)]


def _history(url: str, name: str) -> list[dict]:
    return load(url, name).user_attrs.get("tuner_history", [])


def _assert_shown(url: str, env: dict[str, str], name: str, tmp_path, needle: str) -> None:
    """The reason in `tuner status --format json`, in the status table (as the command draws it: its own
    process is in the target test) and on the report page."""
    from rich.console import Console

    from tuner.cli.ui import status_view
    from tuner.fleet.study import study_status
    from tuner.report.build import build_report

    status = _status(env, name)
    assert needle in status["stopped"] and status["ended"] == status["stopped"], status
    storage = make_storage(url)
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(status_view([study_status(storage, name)]))
    assert f"study {name!r} stopped: {needle}" in console.export_text()
    html = build_report(storage, name, tmp_path / f"{name}.html").html.read_text()
    assert 'id="stopped"' in html and needle in html and 'id="finished"' in html
    storage.engine.dispose()


def test_a_reached_target_ends_a_three_worker_study_and_extend_lets_workers_go_on(pg_url, tmp_path):
    # target 0: the first COMPLETE trial reaches it, so no trial asked for after that one finished may start
    path = study_file(tmp_path, "tgt", n_trials=12, epochs=2, extra="target = 0.0", worker=RELAXED)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    _run_workers("tgt", env, tmp_path)
    states = _states(pg_url, "tgt")
    # one trial per worker at most was asked for before the first finished; running ones were let finish
    assert 1 <= len(states) <= 3 and "COMPLETE" in states
    assert set(states) <= {"COMPLETE", "PRUNED"}, states  # nothing RUNNING or WAITING
    _assert_shown(pg_url, env, "tgt", tmp_path, "target reached: trial ")
    table = tuner("status", "--study", "tgt", env=env)
    assert "study 'tgt' stopped: target reached: trial " in table.stdout, table.stdout
    assert [e["event"] for e in _history(pg_url, "tgt")] == ["stopped"]  # once, by the first worker to see it

    assert_one_line_error(tuner("extend", "--study", "tgt", "--target", "0.0", env=env), "is reached already")
    lifted = tuner("extend", "--study", "tgt", "--n-trials", "5", env=env)
    assert lifted.returncode == 0, lifted.stderr
    assert "target 0 -> none" in lifted.stdout and "stop lifted (target reached" in lifted.stdout, lifted.stdout
    assert _status(env, "tgt")["ended"] is None
    _run_workers("tgt", env, tmp_path, n=1, tag="after")
    assert sorted(_states(pg_url, "tgt")).count("COMPLETE") + _states(pg_url, "tgt").count("PRUNED") == 5
    events = _history(pg_url, "tgt")
    assert [e["event"] for e in events] == ["stopped", "stop lifted", "extend"]
    assert "target" not in load(pg_url, "tgt").user_attrs["tuner_config"]["study"]  # removed: no target now
    assert _status(env, "tgt")["ended"] == "5 of 5 trials"


def test_patience_ends_a_three_worker_study(pg_url, tmp_path):
    # every trial is PRUNED after its first epoch (no value reaches 2), so none sets a best: the study ends
    # once 3 have finished, and only the trials running then may still finish
    path = study_file(tmp_path, "pat", n_trials=12, epochs=3, extra="patience = 3", worker=RELAXED,
                      pruner='type = "threshold"\nlower = 2.0\nn_warmup_steps = 0')
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    _run_workers("pat", env, tmp_path)
    states = _states(pg_url, "pat")
    assert 3 <= len(states) <= 5 and set(states) == {"PRUNED"}, states
    _assert_shown(pg_url, env, "pat", tmp_path, "patience spent: ")
    # status says the stop as it was recorded (trials running then finished after it: they are not recounted)
    (stopped,) = _history(pg_url, "pat")
    assert stopped["event"] == "stopped" and _status(env, "pat")["stopped"] == stopped["reason"]
    counted = int(re.match(r"patience spent: (\d+) finished trials without a new best \(none COMPLETE\)",
                           stopped["reason"]).group(1))
    assert 3 <= counted <= len(states)


def test_max_hours_ends_a_three_worker_study_and_stops_its_running_trials(pg_url, tmp_path):
    # 0.0005 h = 1.8 s from the first trial's start, and trials of 5000 epochs, which no machine trains in that
    # time: every trial that started is stopped at an epoch end by the clock, none finishes on its own
    path = study_file(tmp_path, "hrs", n_trials=12, epochs=5000, extra="max_hours = 0.0005", worker=RELAXED)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    _run_workers("hrs", env, tmp_path)
    trials = load(pg_url, "hrs").get_trials(deepcopy=False)
    assert trials and all(t.state == TrialState.PRUNED for t in trials), [t.state for t in trials]
    for t in trials:
        assert t.user_attrs["stop_reason"].startswith("max_hours reached (")
        assert t.user_attrs["pruned_at_epoch"] == max(t.intermediate_values) < 5000
    _assert_shown(pg_url, env, "hrs", tmp_path, "max_hours reached (")
    assert [e["event"] for e in _history(pg_url, "hrs")] == ["stopped"]
    # a lift restarts the clock: a new worker trains until the time is up again, then stops its trial
    lifted = tuner("extend", "--study", "hrs", env=env)
    assert lifted.returncode == 0 and "stop lifted (max_hours reached" in lifted.stdout, lifted.stderr
    _run_workers("hrs", env, tmp_path, n=1, tag="after")
    again = load(pg_url, "hrs").get_trials(deepcopy=False)
    assert len(again) > len(trials) and all(t.state == TrialState.PRUNED for t in again)
    assert [e["event"] for e in _history(pg_url, "hrs")] == ["stopped", "stop lifted", "stopped"]


# --- tuner extend and launch-study, in-process ---------------------------------------------------------------

def test_extend_checks_its_values_and_the_file_as_launched_is_still_that_study(tmp_path):
    from tuner.fleet.lifecycle import extend_study
    from tuner.fleet.study import launch_study

    storage = make_storage(f"sqlite:///{tmp_path / 'ext.db'}")
    config = load_config(study_file(tmp_path, "ext", extra="target = 0.9\npatience = 4"))
    launch_study(storage, config, check_paths=False)
    for stops, needle in [({"patience": -1}, "tuner extend --study ext: study.patience must be >= 0, got -1"),
                          ({"target": 1.5}, "study.target must be between 0 and 1 for val_accuracy, got 1.5"),
                          ({"max_hours": -2.0}, "study.max_hours must be > 0 (leave it out for no time limit), "
                                                "got -2.0")]:
        with pytest.raises(TunerError, match=re.escape(needle)):
            extend_study(storage, "ext", stops=stops)
    nothing = extend_study(storage, "ext")  # no stop holds, nothing given: nothing changes, nothing recorded
    assert (nothing.changes, nothing.lifted) == ((), "") and "tuner_history" not in load_attrs(storage)
    result = extend_study(storage, "ext", stops={"target": None, "patience": 0, "max_hours": 2.0})
    assert result.changes == (("target", 0.9, None), ("patience", 4, 0), ("max_hours", 0.0, 2.0))
    stored = load_attrs(storage)["tuner_config"]["study"]
    assert "target" not in stored and "patience" not in stored and stored["max_hours"] == 2.0
    assert launch_study(storage, config, check_paths=False).created is False  # the file as launched: reused
    (tmp_path / "v2").mkdir()
    changed = load_config(study_file(tmp_path / "v2", "ext", extra="target = 0.95\npatience = 4"))
    with pytest.raises(TunerError, match=re.escape("and the file says max_hours = 0; patience = 4; target = 0.95: "
                                                   "to change that run `tuner extend --study ext --max-hours 0 "
                                                   "--patience 4 --target 0.95`")):
        launch_study(storage, changed, check_paths=False)
    storage.engine.dispose()


def load_attrs(storage) -> dict:
    return storage.get_study_user_attrs(storage.get_study_id_from_name("ext"))
