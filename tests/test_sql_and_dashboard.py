"""Reading results without tuner: the README's SQL on PostgreSQL and SQLite, and optuna-dashboard."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import tomllib
import urllib.request

import optuna
import psutil
import pytest
import sqlalchemy

from conftest import PASSWORD, REPO, free_port, study_file, tuner, tuner_env


def readme_sql(study: str, marker: str) -> str:
    text = (REPO / "README.md").read_text()
    sql = re.search(rf"<!-- {marker} -->\n```sql\n(.*?)```", text, re.S).group(1)
    return sql.replace("'digits-cnn'", f"'{study}'")


@pytest.mark.parametrize("database, marker", [("pg_url", "sql:best"), ("sqlite_url", "sql:best-sqlite")])
def test_the_readme_sql_returns_the_best_params_with_categoricals_decoded(database, marker, request, tmp_path):
    url = request.getfixturevalue(database)
    space = ('lr = { low = 1e-3, high = 1e-2, log = true }\nwidth = { low = 4, high = 6 }\n'
             'optimizer = { choices = ["adamw", "sgd"] }\n')
    env = tuner_env(url, tmp_path)
    path = study_file(tmp_path, "sql", n_trials=4, epochs=2, space=space)
    assert tuner("run", str(path), "--workers", "1", "--cpu", env=env).returncode == 0
    best = json.loads(tuner("best", "--study", "sql", "--format", "json", env=env).stdout)
    with sqlalchemy.create_engine(url).connect() as conn:
        rows = conn.execute(sqlalchemy.text(readme_sql("sql", marker))).all()
    assert {row.trial for row in rows} == {best["trial"]}
    assert rows[0].value == best["value"]
    params = {row.param_name: row.param_value for row in rows}
    assert sorted(params) == sorted(best["params"])
    assert params["optimizer"] == best["params"]["optimizer"]
    assert str(params["width"]) == str(best["params"]["width"])  # PostgreSQL gives text, SQLite an integer
    assert float(params["lr"]) == best["params"]["lr"]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode()


def test_the_dashboard_shows_tuner_studies_on_loopback_without_the_password(pg_url, tmp_path):
    env = tuner_env(pg_url, tmp_path)
    path = study_file(tmp_path, "dash", n_trials=2, epochs=1)
    assert tuner("run", str(path), "--workers", "1", "--cpu", env=env).returncode == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = get(f"http://127.0.0.1:{port}/api/studies")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "dashboard did not start"
                time.sleep(0.5)
        assert '"dash"' in studies
        study_id = json.loads(studies)["study_summaries"][0]["study_id"]
        pages = [studies, get(f"http://127.0.0.1:{port}/dashboard"),
                 get(f"http://127.0.0.1:{port}/api/studies/{study_id}")]
        assert '"tuner_config"' in pages[2]  # the stored study file is browsable
        detail = json.loads(pages[2])
        assert detail["objective_names"] == ["val_accuracy"]  # not "Objective 0"
        note = re.search(r"```toml\n(.*?)```", detail["note"]["body"], re.S)
        assert note, detail["note"]
        storage = optuna.storages.RDBStorage(pg_url)
        stored = storage.get_study_user_attrs(storage.get_study_id_from_name("dash"))["tuner_config"]
        assert tomllib.loads(note.group(1)) == stored  # the note is the study file, as TOML
        for page in pages:
            assert PASSWORD not in page
        listening = {c.laddr.ip for c in psutil.Process(proc.pid).net_connections() if c.status == "LISTEN"}
        assert listening == {"127.0.0.1"}
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert "loopback only" in output
    assert PASSWORD not in output


def test_the_study_file_written_back_as_toml_reads_as_the_same_config(tmp_path):
    from tuner.spec.config import load_config, parse_config
    from tuner.spec.toml_dump import dump_toml

    shipped = sorted((REPO / "studies").glob("*.toml"))
    assert shipped
    for path in shipped + [study_file(tmp_path, "x", extra='metric = "val_loss"\ndirection = "minimize"')]:
        config = load_config(path)
        text = dump_toml(config.to_dict())
        assert tomllib.loads(text) == config.to_dict(), path
        assert parse_config(tomllib.loads(text), str(path)) == config


def test_toml_strings_keep_quotes_backslashes_and_control_characters():
    from tuner.spec.toml_dump import dump_toml

    data = {"task": {"data_dir": 'C:\\data\\"x"\tä\x7f\x01', "odd key": [1, 2.5, True, "a"], "inline": {}}}
    assert tomllib.loads(dump_toml(data)) == data



def test_equal_best_values_give_the_earliest_trial_in_tuner_best_status_the_report_and_the_readme_sql(pg_url,
                                                                                                       tmp_path):
    """Optuna's best_trial takes any of several equal best values, in the database's order (a matrix row on
    PostgreSQL got trial 31 of many at 1.0): tuner best and status said that one where the report and the
    README's SQL say the earliest. Here a storage that answers with the latest of equal bests stands for it."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from tuner.fleet.progress import ProgressWatch
    from tuner.fleet.study import best_trial, study_status

    class LatestOfEqualBests(optuna.storages.RDBStorage):
        def _get_best_trial_id(self, study_id, direction):  # what Optuna's best_trial asks the database
            best = self.get_trial(super()._get_best_trial_id(study_id, direction))
            return max((t for t in self.get_all_trials(study_id, states=(TrialState.COMPLETE,))
                        if t.value == best.value), key=lambda t: t.number)._trial_id

    env = tuner_env(pg_url, tmp_path)
    path = study_file(tmp_path, "tie", n_trials=3, space="lr = { low = 1e-3, high = 1e-1, log = true }\n")
    assert tuner("launch-study", str(path), env=env).returncode == 0
    storage = LatestOfEqualBests(pg_url)
    study = optuna.load_study(study_name="tie", storage=storage)
    for lr, value in ((0.01, 0.9), (0.02, 1.0), (0.03, 1.0)):
        study.add_trial(create_trial(params={"lr": lr}, distributions={"lr": FloatDistribution(1e-3, 1e-1, log=True)},
                                     value=value, intermediate_values={1: value}, user_attrs={"param_count": 100}))
    assert study.best_trial.number == 2  # the storage's pick
    with sqlalchemy.create_engine(pg_url).connect() as conn:
        rows = conn.execute(sqlalchemy.text(readme_sql("tie", "sql:best"))).all()
    assert tuner("report", "--study", "tie", "--out", str(tmp_path / "r.html"), env=env).returncode == 0
    assert "trial #1:" in (tmp_path / "r.html").read_text()
    assert {row.trial for row in rows} == {1}
    assert best_trial(storage, "tie").number == study_status(storage, "tie").best_trial == 1
    assert ProgressWatch(storage, "tie").snapshot().best_trial == 1
    storage.engine.dispose()
