"""ASHA with promotion (tuner.fleet.asha): trials are paused at rungs and later resumed from their checkpoints;
budgets stay exact with several workers; bad keys are one line at launch."""

from __future__ import annotations

import json
from collections import defaultdict

import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import kill_worker_while_it_trains, load, start_worker, study_file, tuner, tuner_env, wait_all
from inprocess import serve_in_process
from tuner.fleet.asha import AshaPruner, promotable, rungs, top_lineages

ASHA = 'type = "asha"\nmin_resource = 1\nreduction_factor = 2'
SPACE = 'lr = { low = 1e-3, high = 1e-1, log = true }\nwidth = { low = 4, high = 8 }\ndepth = 1\n'
GOOD, BAD = {"lr": 0.05, "width": 8}, {"lr": 0.001, "width": 4}  # on the digits: ~90% vs ~20% after 1 epoch


def lineages(study: optuna.Study) -> dict[int, list[optuna.trial.FrozenTrial]]:
    from tuner.fleet.lineage import lineage_number

    chains = defaultdict(list)
    for t in study.get_trials():
        chains[lineage_number(t)].append(t)
    return chains


def assert_lineages_are_consistent(study: optuna.Study, epochs: int) -> None:
    """Every segment but a lineage's last is paused; each promotion resumes where its paused trial stopped,
    replays the same curve and trains only the epochs after it; a lineage ends trained to the end or paused."""
    for chain in lineages(study).values():
        chain.sort(key=lambda t: t.number)
        for before, after in zip(chain, chain[1:]):
            assert before.state == TrialState.PRUNED and "paused_at_epoch" in before.user_attrs
            paused = before.user_attrs["paused_at_epoch"]
            assert after.user_attrs["continues"] == before.number
            assert after.user_attrs["resumed_from_epoch"] == paused  # from its checkpoint, not from scratch
            assert after.params == before.params
            assert {s: v for s, v in after.intermediate_values.items() if s <= paused} == \
                before.intermediate_values
            if "epochs_trained" in after.user_attrs:  # a compute budget counts only what this segment trained
                assert after.user_attrs["epochs_trained"] == after.last_step - paused
        last = chain[-1]
        assert last.state == TrialState.COMPLETE and last.last_step == epochs or "paused_at_epoch" in last.user_attrs \
            or last.state == TrialState.PRUNED and "compute budget" in json.dumps(last.user_attrs) or \
            last.state == TrialState.PRUNED and last.user_attrs.get("pruned_at_epoch") is not None


def test_rungs_sit_at_min_resource_times_powers_of_the_factor_below_the_epochs():
    assert rungs(1, 3, 27) == [1, 3, 9]
    assert rungs(2, 2, 16) == [2, 4, 8]
    assert rungs(1, 2, 2) == [1]


def test_the_top_is_one_in_reduction_factor_of_those_that_reached_the_rung():
    assert top_lineages({0: 0.5, 1: 0.9}, 2, maximize=True) == [1]
    assert top_lineages({0: 0.5}, 2, maximize=True) == []  # alone at a rung: no top yet
    assert top_lineages({0: 0.5, 1: 0.9, 2: 0.1, 3: 0.7}, 2, maximize=False) == [2, 0]


def _trial(number: int, state: TrialState, curve: list[float], **attrs) -> optuna.trial.FrozenTrial:
    t = create_trial(state=state, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                     value=curve[-1] if state == TrialState.COMPLETE else None,
                     intermediate_values=dict(enumerate(curve, start=1)), user_attrs=attrs)
    t.number = number
    return t


def test_the_best_paused_trial_of_the_highest_rung_is_promoted_and_only_once():
    pruner = AshaPruner(1, 2, 8)  # rungs 1, 2, 4
    trials = [_trial(0, TrialState.PRUNED, [0.9], paused_at_epoch=1),
              _trial(1, TrialState.PRUNED, [0.5], paused_at_epoch=1),
              _trial(2, TrialState.PRUNED, [0.8, 0.85], paused_at_epoch=2),
              _trial(3, TrialState.PRUNED, [0.7, 0.8], paused_at_epoch=2),
              _trial(4, TrialState.PRUNED, [0.3], paused_at_epoch=1)]
    assert promotable(trials, pruner, maximize=True).number == 2  # rung 2 before rung 1
    trials.append(_trial(5, TrialState.RUNNING, [0.8, 0.85], lineage=2, continues=2))
    assert promotable(trials, pruner, maximize=True).number == 0  # 2 is taken; 0 leads rung 1's top two
    trials.append(_trial(6, TrialState.RUNNING, [0.9], lineage=0, continues=0))
    assert promotable(trials, pruner, maximize=True) is None  # 2 and 0 fill rung 1's top 2 of 5


def test_a_paused_trial_is_promoted_and_resumes_from_its_checkpoint(pg_url, tmp_path, monkeypatch):
    # The good config first: alone at rung 1 it is paused; the bad one then ranks below it and is paused, which
    # puts the good one in the top half of rung 1, so the next worker request promotes it (one worker: this order).
    enqueue = "".join(f"[[enqueue]]\nlr = {p['lr']}\nwidth = {p['width']}\n" for p in (GOOD, BAD))
    text = (f'[study]\nname = "asha-resume"\nn_trials = 4\nseed = 1\nsampler = "random"\n\n[pruner]\n{ASHA}\n\n'
            '[task]\ndataset = "digits"\nmodel = "cnn"\nepochs = 3\nbatch_size = 128\n\n'
            f"[space]\n{SPACE}\n{enqueue}")
    study = serve_in_process(pg_url, tmp_path, monkeypatch, text)
    trials = study.get_trials()
    first, second, third = trials[:3]
    assert first.params == GOOD and first.state == TrialState.PRUNED and first.user_attrs["paused_at_epoch"] == 1
    assert second.params == BAD and second.user_attrs["paused_at_epoch"] == 1
    assert third.user_attrs["continues"] == first.number and third.params == GOOD
    assert third.user_attrs["resumed_from_epoch"] == 1 and min(s for s in third.intermediate_values) == 1
    assert third.intermediate_values[1] == first.intermediate_values[1]
    assert_lineages_are_consistent(study, 3)
    configs = [t for t in trials if "continues" not in t.user_attrs]
    assert len(configs) == 4  # n_trials counts configurations
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert not promotable(trials, AshaPruner(1, 2, 3), maximize=True)  # ended with nothing left to promote
    env = tuner_env(pg_url, tmp_path)
    best = json.loads(tuner("best", "--study", "asha-resume", "--format", "json", env=env).stdout)
    assert best["trial"] == study.best_trial.number and study.best_trial.last_step == 3
    from test_sql_and_dashboard import readme_sql  # the README's best-params SQL picks the same trial

    with sqlalchemy.create_engine(pg_url).connect() as conn:
        rows = conn.execute(sqlalchemy.text(readme_sql("asha-resume", "sql:best"))).all()
    assert {row.trial for row in rows} == {best["trial"]}, rows
    # status tells paused from pruned: PRUNED holds the paused segments, and says how many were promoted
    promoted = sum("continues" in t.user_attrs for t in trials)
    still_paused = sum("paused_at_epoch" in t.user_attrs for t in trials) - promoted
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    from tuner.fleet.study import study_status
    from tuner.store.storage import make_storage

    counts = study_status(make_storage(pg_url), "asha-resume").counts
    assert (counts["PRUNED"], counts["paused"], counts["continued"]) == (pruned, still_paused, promoted)
    status = tuner("status", "--study", "asha-resume", env=env)
    assert f"{pruned} ({still_paused} paused," in status.stdout, status.stdout
    (machine,) = json.loads(tuner("status", "--study", "asha-resume", "--format", "json", env=env).stdout)
    assert machine["best_trial"] == best["trial"] and machine["best_value"] == best["value"]
    assert (machine["states"]["PRUNED"], machine["paused"], machine["continued"]) == (pruned, still_paused, promoted)
    assert machine["ended"] == "4 of 4 trials" and machine["budget"] == "4/4 trials"
    report = tuner("report", "--study", "asha-resume", "--out", str(tmp_path / "r.html"), env=env)
    assert report.returncode == 0 and report.stderr == "", report.stderr
    html = (tmp_path / "r.html").read_text()
    trained = sum(t.user_attrs.get("epochs_run", t.last_step) - t.user_attrs.get("continued_at_epoch", 0)
                  for t in trials)
    assert f'<span id="epochs-trained">{trained}</span>' in html, trained  # each lineage's epochs once
    assert f'<span id="epochs-without-pruning">{4 * 3}</span>' in html  # 4 configurations x 3 epochs


def test_three_workers_on_postgresql_spend_exactly_the_epoch_budget(pg_url, tmp_path):
    path = study_file(tmp_path, "asha-three", n_trials=0, epochs=4, pruner=ASHA, space=SPACE,
                      extra='max_epochs = 18\nsampler = "random"')
    path.write_text(path.read_text().replace("n_trials = 0\n", ""))
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    procs = [start_worker("asha-three", env, tmp_path / f"w{i}.log") for i in range(3)]
    assert wait_all(procs, timeout=900) == [0, 0, 0], [(tmp_path / f"w{i}.log").read_text() for i in range(3)]
    study = load(pg_url, "asha-three")
    trials = study.get_trials()
    assert sum(t.user_attrs.get("epochs_trained", 0) for t in trials) == 18
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.state for t in trials]
    assert_lineages_are_consistent(study, 4)
    # a promotion's start line says what it is; none is called a retry (no worker failed here)
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(3))
    promoted = [t for t in trials if "continues" in t.user_attrs]
    assert promoted and "retry of" not in logs
    for t in promoted:
        assert (f"trial {t.number} started (promoted: continues trial {t.user_attrs['continues']} after epoch "
                f"{t.user_attrs['continued_at_epoch']})") in logs


def test_two_slots_on_sqlite_start_exactly_n_trials_configurations(sqlite_url, tmp_path):
    path = study_file(tmp_path, "asha-slots", n_trials=6, epochs=2, pruner=ASHA, space=SPACE,
                      extra='sampler = "random"')
    env = tuner_env(sqlite_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    proc = start_worker("asha-slots", env, tmp_path / "w.log", "--slots", "2")
    assert wait_all([proc], timeout=900) == [0], (tmp_path / "w.log").read_text()
    study = load(sqlite_url, "asha-slots")
    trials = study.get_trials()
    assert len([t for t in trials if "continues" not in t.user_attrs]) == 6
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert not promotable(trials, AshaPruner(1, 2, 2), maximize=True)
    assert_lineages_are_consistent(study, 2)


@pytest.mark.parametrize("pruner, field, value", [
    ('type = "asha"\nreduction_factor = 1', "pruner.reduction_factor", "1"),
    ('type = "asha"\nmin_resource = 3', "pruner.min_resource", "3"),
    ('type = "asha"\nmin_resource = 0', "pruner.min_resource", "0"),
    ('type = "asha"\ngrace = 2', "pruner.grace", "2"),
])
def test_bad_asha_keys_are_one_line_at_launch_and_nothing_is_stored(pg_url, tmp_path, pruner, field, value):
    path = study_file(tmp_path, "asha-bad", epochs=3, pruner=pruner)
    env = tuner_env(pg_url, tmp_path)
    out = tuner("launch-study", str(path), env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and field in line and value in line, line
    assert optuna.get_all_study_names(storage=pg_url) == []


def test_a_killed_worker_s_promoted_trial_is_retried_from_its_latest_checkpoint(pg_url, tmp_path):
    enqueue = "".join(f"[[enqueue]]\nlr = {p['lr']}\nwidth = {p['width']}\n" for p in (GOOD, BAD))
    path = study_file(tmp_path, "asha-kill", n_trials=6, epochs=4, pruner=ASHA, space=SPACE,
                      extra='max_epochs = 40\nsampler = "random"',
                      worker="heartbeat_interval = 1\ngrace_period = 3\nreaper_period = 1")
    path.write_text(path.read_text() + enqueue)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    victim, newest = kill_worker_while_it_trains(pg_url, "asha-kill", env, tmp_path, "promotion")
    second = start_worker("asha-kill", env, tmp_path / "b.log")
    assert wait_all([second], timeout=900) == [0], (tmp_path / "b.log").read_text()

    study = load(pg_url, "asha-kill")
    trials = study.get_trials()
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == TrialState.FAIL and "no heartbeat" in killed.user_attrs["fail_reason"]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.user_attrs["lineage"] == victim.user_attrs["lineage"] and retry.params == victim.params
    assert retry.user_attrs["resumed_from_epoch"] == newest >= victim.user_attrs["continued_at_epoch"]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert len([t for t in trials if "continues" not in t.user_attrs and t.state != TrialState.FAIL]) == 6
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    promoted = [t.user_attrs["continues"] for t in trials if "continues" in t.user_attrs
                and t.state != TrialState.FAIL]
    assert len(promoted) == len(set(promoted))  # each paused trial continued once (the retry replaced the FAIL)
    assert sum(t.user_attrs.get("epochs_trained", 0) for t in trials) <= 40
