"""`tuner copy`: a real 40-trial study, trained here (2 epochs of a tiny CNN: about 30 s on 2 busy cores, so no
synthetic trials are needed), goes SQLite -> PostgreSQL -> SQLite and reads the same everywhere (tuner best, the
README's SQL, the report's numbers, every trial row); each refusal is one line and writes nothing; every copy has
a checkpoint folder of its own, so deleting one study never costs another its checkpoints."""

from __future__ import annotations

import json
import os

import optuna
import sqlalchemy

from conftest import (PASSWORD, checkpoint_dir, count_studies, load, start_worker, study_file, tuner, tuner_env,
                      wait_all)
from test_sql_and_dashboard import readme_sql

# A categorical among the params: the README's SQL decodes it from distribution_json, which must survive the copy.
SPACE = ('lr = { low = 1e-3, high = 1e-1, log = true }\nwidth = { low = 4, high = 8 }\ndepth = { low = 1, high = 2 }\n'
         'dropout = { low = 0.0, high = 0.3 }\noptimizer = { choices = ["adamw", "sgd"] }\n')


def sqlite(tmp_path, name: str) -> str:
    return f"sqlite:///{tmp_path / name}"


def best_json(url: str, name: str, env: dict[str, str]) -> dict:
    result = tuner("best", "--study", name, "--format", "json", "--storage", url, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sql_rows(url: str, name: str) -> list[tuple]:
    """The README's query for that database; values as numbers where they are (PostgreSQL gives text)."""
    marker = "sql:best" if url.startswith("postgresql") else "sql:best-sqlite"
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text(readme_sql(name, marker))).all()
    engine.dispose()

    def number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return v

    return [(r.trial, r.value, r.param_name, number(r.param_value)) for r in rows]


def report_figures(url: str, name: str) -> dict:
    """The numbers `tuner report` draws (tuner/report/data.py), from one snapshot."""
    from tuner.report import data
    from tuner.store.storage import make_storage

    storage = make_storage(url, create=False)
    try:
        s = data.take_snapshot(storage, name)
        return {"counts": s.counts, "best": (s.best.number, s.best.value), "budget": s.budget(),
                "retries": s.retries, "searched": s.searched_params, "unfinished": s.unfinished,
                "savings": data.pruning_savings(s.trials, s.config.task.epochs),
                "front": data.size_front(s.trials, s.maximize), "devices": data.device_seconds(s.trials),
                "failures": data.failures(s.trials), "seconds": data.study_seconds(s),
                "curves": data.learning_curves(s.trials)}
    finally:
        storage.engine.dispose()


def trial_rows(url: str, name: str) -> list[tuple]:
    """Every trial as Optuna reads it back, but its database id."""
    return [(t.number, t.state, t.values, t.params, t.distributions, t.intermediate_values, t.user_attrs,
             t.system_attrs, t.datetime_start, t.datetime_complete)
            for t in load(url, name).get_trials(deepcopy=False)]


def system_attrs(url: str, name: str) -> dict:
    study = load(url, name)
    return study._storage.get_study_system_attrs(study._study_id)


def files_under(folder) -> dict[str, int]:
    """Relative path -> inode of every file under folder."""
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_ino
            for d, _, names in os.walk(folder) for f in names}


def one_line_error(result, *words: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and PASSWORD not in result.stderr + result.stdout
    for word in words:
        assert word in lines[0], lines[0]


def test_a_40_trial_study_copied_sqlite_to_postgresql_and_back_reads_the_same_everywhere(pg_url, tmp_path):
    first, last = sqlite(tmp_path, "first.db"), sqlite(tmp_path, "last.db")
    env = tuner_env(pg_url, tmp_path)  # PostgreSQL is the default storage: its password never goes on argv
    path = study_file(tmp_path, "cp", n_trials=40, epochs=2, space=SPACE)
    ran = tuner("run", str(path), "--workers", "2", "--cpu", "--storage", first, env=env, timeout=600)
    assert ran.returncode == 0, ran.stderr

    there = tuner("copy", "--study", "cp", "--from", first, env=env)  # --to: the default storage, PostgreSQL
    assert there.returncode == 0, there.stderr
    assert "40 trials" in there.stdout and "hard-linked" in there.stdout and PASSWORD not in there.stdout
    back = tuner("copy", "--study", "cp", "--to", last, env=env)
    assert back.returncode == 0, back.stderr

    # Every trial row, the best trial, the README's SQL and the report's numbers: the same in all three.
    rows = trial_rows(first, "cp")
    assert len(rows) == 40 and {r[1].name for r in rows} >= {"COMPLETE", "PRUNED"}
    assert trial_rows(pg_url, "cp") == rows and trial_rows(last, "cp") == rows
    best = best_json(first, "cp", env)
    assert best_json(pg_url, "cp", env) == best and best_json(last, "cp", env) == best
    sql = sql_rows(first, "cp")
    assert sql and sql[0][0] == best["trial"] and {r[2] for r in sql} == set(best["params"])
    assert sql_rows(pg_url, "cp") == sql and sql_rows(last, "cp") == sql
    figures = report_figures(first, "cp")
    assert figures["counts"]["COMPLETE"] + figures["counts"]["PRUNED"] == 40
    assert report_figures(pg_url, "cp") == figures and report_figures(last, "cp") == figures

    # tuner's study attributes: the same config, note and metric names; a history that says where each came
    # from; each copy a checkpoint folder of its own, holding the original's files as hard links.
    original, copied = load(first, "cp"), load(last, "cp")
    assert copied.user_attrs["tuner_config"] == original.user_attrs["tuner_config"]
    assert system_attrs(last, "cp") == system_attrs(first, "cp")  # the dashboard's note, the metric names, the ordinal
    copies = [e for e in copied.user_attrs["tuner_history"] if e["event"] == "copy"]
    assert [e["from_storage"] for e in copies] == [f"sqlite:///{tmp_path / 'first.db'}",
                                                   pg_url.replace(PASSWORD, "***")]
    folders = [checkpoint_dir(u, "cp") for u in (first, pg_url, last)]
    assert len({f.name for f in folders}) == 3 and len({f.parent for f in folders}) == 1
    kept = files_under(folders[0])
    assert kept and files_under(folders[1]) == kept and files_under(folders[2]) == kept

    # Copying onto an existing name: one line, nothing written, no folder made.
    again = tuner("copy", "--study", "cp", "--from", first, env=env)
    one_line_error(again, "'cp' already exists", "--as")
    assert count_studies(pg_url) == 1 and len(list(folders[0].parent.iterdir())) == 3

    # A copy beside one under another name is a study of its own: its name in its config and note, its own folder,
    # which `tuner delete` removes without touching the other's.
    forked = tuner("copy", "--study", "cp", "--from", last, "--to", last, "--as", "fork", env=env)
    assert forked.returncode == 0 and "as 'fork'" in forked.stdout, forked.stderr
    assert best_json(last, "fork", env) == {**best, "study": "fork"}
    assert load(last, "fork").user_attrs["tuner_config"]["study"]["name"] == "fork"  # what its workers read
    assert 'name = "fork"' in system_attrs(last, "fork")["dashboard:note_str:0"]
    fork_folder = checkpoint_dir(last, "fork")
    assert fork_folder not in folders and files_under(fork_folder) == kept
    assert tuner("delete", "--study", "fork", "--yes", "--storage", last, env=env).returncode == 0
    assert not fork_folder.exists() and files_under(folders[2]) == kept

    # Deleting the original (and its folder) leaves the copies whole: the last one still exports its best model.
    assert tuner("delete", "--study", "cp", "--yes", "--storage", first, env=env).returncode == 0
    assert not folders[0].exists() and files_under(folders[2]) == kept
    exported = tuner("export", "--study", "cp", "--storage", last, "--out", str(tmp_path / "best.pt"), env=env)
    assert exported.returncode == 0, exported.stderr
    assert f"trial #{best['trial']}" in exported.stdout

    # The PostgreSQL copy is a working study: two more trials there, numbered on from 40, in its own folder.
    assert tuner("extend", "--study", "cp", "--n-trials", "42", env=env).returncode == 0
    assert wait_all([start_worker("cp", env, tmp_path / "w.log")], timeout=300) == [0]
    numbers = sorted(t.number for t in load(pg_url, "cp").get_trials(deepcopy=False))
    assert numbers == list(range(42)) and len(load(last, "cp").get_trials()) == 40
    assert files_under(folders[2]) == kept  # the SQLite copy's checkpoints are not the PostgreSQL copy's


def test_each_refusal_is_one_line_and_writes_nothing(pg_url, tmp_path):
    url = sqlite(tmp_path, "t.db")
    env = tuner_env(url, tmp_path)
    assert tuner("launch-study", str(study_file(tmp_path, "r", space=SPACE)), env=env).returncode == 0

    one_line_error(tuner("copy", "--study", "nope", "--to", pg_url, env=env), "no study named 'nope'")
    one_line_error(tuner("copy", "--study", "r", "--to", url, env=env), "same database")
    one_line_error(tuner("copy", "--study", "r", "--to", pg_url, "--as", "../x", env=env), "study.name", "'../x'")
    missing = tmp_path / "missing.db"
    one_line_error(tuner("copy", "--study", "r", "--from", f"sqlite:///{missing}", "--to", pg_url, env=env),
                   "no database at")
    assert not missing.exists()

    # A trial still running (taken the way a worker takes one: Optuna's ask) is refused; --force copies it FAIL.
    running = load(url, "r").ask()
    running.suggest_float("lr", 1e-3, 1e-1, log=True)
    refused = tuner("copy", "--study", "r", "--to", pg_url, env=env)
    one_line_error(refused, "1 RUNNING trials (#0)", "--force")
    assert count_studies(pg_url) == 0
    new_file = tmp_path / "new.db"  # a refusal opens no target: no SQLite file is created
    one_line_error(tuner("copy", "--study", "r", "--to", f"sqlite:///{new_file}", env=env), "RUNNING")
    assert not new_file.exists()

    forced = tuner("copy", "--study", "r", "--to", pg_url, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert "1 trials RUNNING in the original are FAIL in the copy" in forced.stdout
    [copied] = load(pg_url, "r").get_trials()
    assert copied.state == optuna.trial.TrialState.FAIL and copied.user_attrs["fail_reason"] == "copied while running"
    assert copied.params == running.params and load(url, "r").get_trials()[0].state.name == "RUNNING"
    assert "checkpoints:" in forced.stdout and "cp -al" in forced.stdout  # no folder here yet: says what to copy


def test_copy_help_names_every_option(tmp_path):
    result = tuner("copy", "--help", env=tuner_env("", tmp_path))
    assert result.returncode == 0
    for option in ("--study", "--from", "--to", "--as", "--force"):
        assert option in result.stdout, option
