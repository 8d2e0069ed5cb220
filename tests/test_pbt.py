"""Population-based training (tuner.fleet.pbt): generations decided together, exploit copies the donor's
checkpoint, explore changes only what can change mid-training, exact budgets, the winner's schedule."""

from __future__ import annotations

import json

import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import kill_worker_while_it_trains, load, start_worker, study_file, tuner, tuner_env, wait_all
from tuner.fleet.pbt import next_generation, schedule
from tuner.spec.config import parse_config

SPACE = ('lr = { low = 1e-3, high = 1e-1, log = true }\nwidth = { low = 4, high = 8 }\n'
         'dropout = { low = 0.0, high = 0.3 }\ndepth = 1\n')
PBT = 'type = "pbt"\npopulation = 4\ninterval = 1\nquantile = 0.25'


def config_of(pruner: str = PBT, epochs: int = 4, study: str = ""):
    import tomllib

    text = (f'[study]\nname = "p"\nseed = 5\n{study}\n[pruner]\n{pruner}\n\n'
            f'[task]\ndataset = "digits"\nmodel = "cnn"\nepochs = {epochs}\n\n[space]\n{SPACE}')
    return parse_config(tomllib.loads(text), "t")


def _member(number: int, member: int, values: list[float], lr: float, width: int, **attrs):
    t = create_trial(state=TrialState.PRUNED, params={"lr": lr, "width": width, "dropout": 0.1},
                     distributions={"lr": FloatDistribution(1e-3, 1e-1, log=True), "width": IntDistribution(4, 8),
                                    "dropout": FloatDistribution(0.0, 0.3)},
                     intermediate_values=dict(enumerate(values, start=1)),
                     user_attrs={"pbt_member": member, "paused_at_epoch": len(values), **attrs})
    t.number = number
    return t


def test_the_population_is_the_configurations_and_perturb_defaults_to_what_is_searched():
    config = config_of()
    assert config.study.n_trials == 4
    assert config.pruner["perturb"] == ["lr", "dropout"]  # weight_decay etc. are not searched here


def test_a_generation_waits_for_every_member_then_the_bottom_exploits_the_top():
    config = config_of()
    trials = [_member(0, 0, [0.9], 0.01, 8), _member(1, 1, [0.5], 0.002, 4), _member(2, 2, [0.7], 0.05, 6)]
    assert next_generation(trials, config) == []  # member 3 has not started
    trials.append(_member(3, 3, [0.2], 0.003, 5))
    generation = next_generation(trials, config)
    assert [s.member for s in generation] == [0, 1, 2, 3]
    worst = generation[3]
    assert worst.donor.number == 0  # the top quarter of 4 is member 0
    assert worst.params["width"] == 8  # the donor's architecture, with its weights: never perturbed
    assert worst.params["lr"] != 0.01 or worst.params["dropout"] != 0.1  # explored
    assert 1e-3 <= worst.params["lr"] <= 1e-1 and 0.0 <= worst.params["dropout"] <= 0.3
    assert all(s.donor is None and s.params == s.previous.params for s in generation[:3])
    # the same population, the same decisions (seeded by the study seed and the epoch)
    assert [s.params for s in next_generation(trials, config)] == [s.params for s in generation]
    trials[2] = _member(2, 2, [0.7, 0.8], 0.05, 6)  # a member at another epoch: no generation
    assert next_generation(trials, config) == []


def test_the_schedule_follows_the_weights_through_an_exploit():
    first = _member(0, 0, [0.9], 0.01, 8)
    weak = _member(1, 1, [0.2], 0.002, 4)
    taken = _member(2, 1, [0.9, 0.95], 0.012, 8, continues=1, continued_at_epoch=1, exploited_trial=0, lineage=1)
    steps = schedule(taken, [first, weak, taken])
    assert [(s["trial"], s["member"], s["from_epoch"], s["to_epoch"]) for s in steps] == [(0, 0, 1, 1),
                                                                                            (2, 1, 2, 2)]
    assert steps[1]["params"]["lr"] == 0.012


def test_a_new_lr_takes_effect_at_its_place_on_the_schedule():
    import torch

    from tuner.engine.train import FitConfig, _make_optimizer, _make_scheduler, _set_hyperparameters

    model = torch.nn.Linear(2, 2)
    old = FitConfig(epochs=4, batch_size=8, lr=0.1, weight_decay=0.0, optimizer="adamw", seed=0, precision="fp32")
    opt, sched = _make_optimizer(model, old), _make_scheduler(_make_optimizer(model, old), old)
    sched = _make_scheduler(opt, old)
    opt.step()
    sched.step()
    factor = opt.param_groups[0]["lr"] / 0.1  # cosine after 1 of 4 epochs
    new = FitConfig(epochs=4, batch_size=8, lr=0.05, weight_decay=0.01, optimizer="adamw", seed=0, precision="fp32")
    _set_hyperparameters(opt, sched, new)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * factor)
    assert opt.param_groups[0]["weight_decay"] == 0.01
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5)  # cosine at 2 of 4 epochs, from the new peak


def _assert_population_trained(study: optuna.Study, population: int, epochs: int) -> None:
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    finals = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["pbt_member"] for t in finals) == list(range(population))
    assert all(t.last_step == epochs for t in finals)
    by_number = {t.number: t for t in trials}
    for t in trials:
        if "continues" not in t.user_attrs or t.state == TrialState.FAIL:
            continue
        at = t.user_attrs["continued_at_epoch"]
        assert t.user_attrs["resumed_from_epoch"] >= at  # from a checkpoint, never from scratch
        source = by_number[t.user_attrs.get("exploited_trial", t.user_attrs["continues"])]
        assert {s: v for s, v in t.intermediate_values.items() if s <= at} == \
            {s: v for s, v in source.intermediate_values.items() if s <= at}  # the weights' own history


def test_three_workers_on_postgresql_train_the_population_to_the_exact_epoch_budget(pg_url, tmp_path):
    path = study_file(tmp_path, "pbt-three", epochs=4, pruner=PBT, space=SPACE, extra="max_epochs = 16")
    path.write_text(path.read_text().replace("n_trials = 6\n", ""))
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    procs = [start_worker("pbt-three", env, tmp_path / f"w{i}.log") for i in range(3)]
    assert wait_all(procs, timeout=900) == [0, 0, 0], [(tmp_path / f"w{i}.log").read_text() for i in range(3)]
    study = load(pg_url, "pbt-three")
    assert sum(t.user_attrs.get("epochs_trained", 0) for t in study.get_trials()) == 16  # population x epochs
    _assert_population_trained(study, 4, 4)
    exploits = [t for t in study.get_trials() if "exploited_trial" in t.user_attrs]
    assert len(exploits) == 3  # one bottom member in each of the three generations (epochs 1, 2, 3)
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(3))
    assert "retry of" not in logs  # a segment is not a retry, and its start line says whose weights it took
    for t in exploits:
        assert (f"trial {t.number} started (PBT member {t.user_attrs['pbt_member']}, continues trial "
                f"{t.user_attrs['continues']} after epoch {t.user_attrs['continued_at_epoch']}, weights of member "
                f"{t.user_attrs['exploited_member']})") in logs
    best = json.loads(tuner("best", "--study", "pbt-three", "--format", "json", env=env).stdout)
    assert best["trial"] == study.best_trial.number
    assert [s["to_epoch"] for s in best["schedule"]] == [1, 2, 3, 4]
    assert best["schedule"][-1]["params"] == study.best_trial.params
    from test_sql_and_dashboard import readme_sql  # the README's best-params SQL picks the same trial

    with sqlalchemy.create_engine(pg_url).connect() as conn:
        rows = conn.execute(sqlalchemy.text(readme_sql("pbt-three", "sql:best"))).all()
    assert {row.trial for row in rows} == {best["trial"]}, rows
    table = tuner("best", "--study", "pbt-three", env={**env, "COLUMNS": "200"})
    assert "schedule" in table.stdout and table.returncode == 0
    out = tmp_path / "m.pt"
    assert tuner("export", "--study", "pbt-three", "--out", str(out), env=env).returncode == 0
    import torch

    assert [s["to_epoch"] for s in torch.load(out, weights_only=False)["schedule"]] == [1, 2, 3, 4]
    extend = tuner("extend", "--study", "pbt-three", "--n-trials", "8", env=env)
    assert extend.returncode == 1 and "population" in extend.stderr and len(extend.stderr.splitlines()) == 1
    status = tuner("status", "--study", "pbt-three", env=env)
    assert status.returncode == 0 and "paused" in status.stdout
    report = tuner("report", "--study", "pbt-three", "--out", str(tmp_path / "r.html"), "--png",
                   str(tmp_path / "png"), env=env)
    assert (report.returncode, report.stderr) == (0, "")
    assert "family tree" in (tmp_path / "r.html").read_text() and (tmp_path / "png" / "family_tree.png").is_file()


def test_two_slots_on_sqlite_train_a_population_of_three(sqlite_url, tmp_path):
    path = study_file(tmp_path, "pbt-slots", epochs=2, space=SPACE,
                      pruner='type = "pbt"\npopulation = 3\ninterval = 1\nquantile = 0.34')
    path.write_text(path.read_text().replace("n_trials = 6\n", ""))
    env = tuner_env(sqlite_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    proc = start_worker("pbt-slots", env, tmp_path / "w.log", "--slots", "2")
    assert wait_all([proc], timeout=900) == [0], (tmp_path / "w.log").read_text()
    _assert_population_trained(load(sqlite_url, "pbt-slots"), 3, 2)


def test_a_killed_worker_s_segment_is_retried_from_its_latest_checkpoint(pg_url, tmp_path):
    # max_epochs leaves room for the killed segment's epochs (failed work used the device too): 12 + 4
    path = study_file(tmp_path, "pbt-kill", epochs=4, space=SPACE, extra="max_epochs = 16",
                      pruner='type = "pbt"\npopulation = 3\ninterval = 2\nquantile = 0.34',
                      worker="heartbeat_interval = 1\ngrace_period = 3\nreaper_period = 1")
    path.write_text(path.read_text().replace("n_trials = 6\n", ""))
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    victim, newest = kill_worker_while_it_trains(pg_url, "pbt-kill", env, tmp_path, "segment")
    second = start_worker("pbt-kill", env, tmp_path / "b.log")
    assert wait_all([second], timeout=900) == [0], (tmp_path / "b.log").read_text()
    study = load(pg_url, "pbt-kill")
    trials = study.get_trials()
    assert next(t for t in trials if t.number == victim.number).state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.user_attrs["pbt_member"] == victim.user_attrs["pbt_member"] and retry.params == victim.params
    assert retry.user_attrs["resumed_from_epoch"] == newest >= victim.user_attrs["continued_at_epoch"]
    trained = sum(t.user_attrs.get("epochs_trained", 0) for t in trials if t.state != TrialState.FAIL)
    # each member trains 4 epochs once; what the killed segment had checkpointed its retry did not train again
    assert trained == 12 - (retry.user_attrs["resumed_from_epoch"] - victim.user_attrs["continued_at_epoch"])
    _assert_population_trained(study, 3, 4)


@pytest.mark.parametrize("pruner, study, field, value", [
    ('type = "pbt"\npopulation = 1', "", "pruner.population", "1"),
    ('type = "pbt"\nquantile = 0.7', "", "pruner.quantile", "0.7"),
    ('type = "pbt"\nperturb = ["width"]', "", "pruner.perturb", "width"),
    ('type = "pbt"\nperturb = ["weight_decay"]', "", "pruner.perturb", "weight_decay"),  # not searched
    ('type = "pbt"\ninterval = 4', "", "pruner.interval", "4"),
    ('type = "pbt"\npopulation = 4', "n_trials = 10", "study.n_trials", "10"),
])
def test_bad_pbt_keys_are_one_line_at_launch_and_nothing_is_stored(pg_url, tmp_path, pruner, study, field, value):
    path = study_file(tmp_path, "pbt-bad", epochs=4, pruner=pruner, space=SPACE)
    text = path.read_text().replace("n_trials = 6\n", study + "\n" if study else "")
    path.write_text(text)
    out = tuner("launch-study", str(path), env=tuner_env(pg_url, tmp_path))
    line = out.stderr.strip()
    assert out.returncode == 1 and len(line.splitlines()) == 1 and field in line and value in line, line
    assert optuna.get_all_study_names(storage=pg_url) == []
