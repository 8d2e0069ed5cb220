"""A study's life: launch rules, extend, delete, checkpoints that belong to one study, retention.

Real PostgreSQL, real worker processes, real checkpoint files.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from conftest import (checkpoint_dir, count_studies, load, start_worker, study_file, tuner, tuner_env, wait_all,
                      wait_for)
from test_cli import assert_one_line_error
from test_models import write_digit_folder
from test_reliability import FAST_RECOVERY, assert_clean_logs, long_study, trials
from tuner.spec.config import TaskSection, load_config
from tuner.errors import TunerError
from tuner.spec.preflight import check_task_paths
from tuner.fleet.retention import TrialRow, doomed_lineages

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def finished(url: str, name: str) -> int:
    return sum(t.state in FINISHED for t in trials(url, name))


def study_attrs(url: str, name: str) -> dict:
    storage = optuna.storages.RDBStorage(url)
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    storage.engine.dispose()
    return attrs


def test_a_deleted_study_launched_again_under_its_name_starts_every_trial_from_epoch_one(pg_url, tmp_path):
    env = tuner_env(pg_url, tmp_path)
    first = study_file(tmp_path, "again", n_trials=3, epochs=2, pruner='type = "none"',
                       space="lr = 0.01\nwidth = 12\ndepth = 2\n")
    assert tuner("run", str(first), "--workers", "1", "--cpu", env=env).returncode == 0
    old_folder = checkpoint_dir(pg_url, "again")
    assert old_folder.is_dir()
    # Optuna's own delete removes the rows only: the old trials' checkpoints stay on disk...
    optuna.delete_study(study_name="again", storage=pg_url)
    # ...and the new study, whose trials 0-2 have another architecture, must never resume from them.
    (tmp_path / "v2").mkdir()
    second = study_file(tmp_path / "v2", "again", n_trials=3, epochs=2, pruner='type = "none"',
                        space="lr = 0.01\nwidth = 4\ndepth = 1\n")
    run = tuner("run", str(second), "--workers", "1", "--cpu", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    new = trials(pg_url, "again")
    assert [t.state for t in new] == [TrialState.COMPLETE] * 3
    assert not [t for t in new if "resumed_from_epoch" in t.user_attrs]
    assert [int(n) for n in re.findall(r"trial (\d+) epoch 1/2", run.stderr)] == [0, 1, 2]
    new_folder = checkpoint_dir(pg_url, "again")
    assert new_folder != old_folder and new_folder.parent == old_folder.parent

    deleted = tuner("delete", "--study", "again", "--yes", env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert re.search(r"deleted study 'again': 3 trials, [\d.]+ KiB of checkpoints freed", deleted.stdout)
    assert not new_folder.exists() and count_studies(pg_url) == 0


def test_delete_asks_unless_yes_and_a_missing_study_is_one_line(pg_url, tmp_path):
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(study_file(tmp_path, "keepme")), env=env).returncode == 0
    # stdin is not a terminal: there is no one to answer a prompt, so it says how to go on
    no_tty = subprocess.run([sys.executable, "-m", "tuner", "delete", "--study", "keepme"], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert_one_line_error(no_tty, "--yes")
    assert count_studies(pg_url) == 1
    assert_one_line_error(tuner("delete", "--study", "nope", "--yes", env=env), "no study named 'nope'")


def test_export_finds_the_checkpoints_from_any_working_directory(pg_url, tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    env = tuner_env(pg_url, tmp_path)
    env.pop("TUNER_CHECKPOINT_DIR")  # the default, ./checkpoints of launch-study, stored as an absolute path
    path = study_file(tmp_path, "anywhere", n_trials=2, epochs=1)
    assert tuner("launch-study", str(path), env=env, cwd=here).returncode == 0
    worker = tuner("worker", "--study", "anywhere", "--cpu", "--threads", "1", env=env, cwd=elsewhere)
    assert worker.returncode == 0, worker.stderr[-2000:]
    folder = checkpoint_dir(pg_url, "anywhere")
    assert folder.parent.resolve() == (here / "checkpoints").resolve() and not (elsewhere / "checkpoints").exists()

    out = tmp_path / "model.pt"
    exported = tuner("export", "--study", "anywhere", "--out", str(out), env=env, cwd=elsewhere)
    assert exported.returncode == 0, exported.stderr
    assert out.is_file()
    # A host that mounts the folder somewhere else says where: TUNER_CHECKPOINT_DIR wins over the stored root.
    shutil.move(here / "checkpoints", tmp_path / "mnt")
    moved = tuner("export", "--study", "anywhere", "--out", str(out), cwd=elsewhere,
                  env={**env, "TUNER_CHECKPOINT_DIR": str(tmp_path / "mnt")})
    assert moved.returncode == 0, moved.stderr
    assert_one_line_error(tuner("export", "--study", "anywhere", "--out", str(out), env=env, cwd=elsewhere),
                          "no checkpoint of trial", str(folder), "TUNER_CHECKPOINT_DIR")


def test_a_study_launched_before_study_uuids_keeps_its_name_layout(pg_url, tmp_path):
    env = tuner_env(pg_url, tmp_path)
    config = load_config(study_file(tmp_path, "old", n_trials=2, epochs=1))
    study = optuna.create_study(study_name="old", storage=pg_url, direction="maximize")
    study.set_user_attr("tuner_config", config.to_dict())  # all that launch-study used to store
    assert tuner("worker", "--study", "old", "--cpu", "--threads", "1", env=env).returncode == 0
    assert {p.name for p in (tmp_path / "ckpt" / "old").iterdir()} == {"0", "1"}  # ROOT/NAME/TRIAL, as before
    assert tuner("export", "--study", "old", "--out", str(tmp_path / "m.pt"), env=env).returncode == 0
    assert tuner("delete", "--study", "old", "--yes", env=env).returncode == 0
    assert not (tmp_path / "ckpt" / "old").exists()


def test_extending_a_finished_study_lets_three_workers_finish_exactly_the_new_total(pg_url, tmp_path):
    path = study_file(tmp_path, "ext", n_trials=6, epochs=2, worker=FAST_RECOVERY)  # idle workers look every 1 s
    env = tuner_env(pg_url, tmp_path)
    assert tuner("run", str(path), "--workers", "1", "--cpu", env=env).returncode == 0
    assert finished(pg_url, "ext") == 6

    (tmp_path / "v2").mkdir()
    bigger = study_file(tmp_path / "v2", "ext", n_trials=9, epochs=2, worker=FAST_RECOVERY)
    assert_one_line_error(tuner("launch-study", str(bigger), env=env), "tuner extend --study ext --n-trials 9")
    assert_one_line_error(tuner("extend", "--study", "ext", "--n-trials", "5", env=env),
                          "6 finished trials", ">= 6, got 5")
    extended = tuner("extend", "--study", "ext", "--n-trials", "9", env=env)
    assert extended.returncode == 0, extended.stderr
    assert "n_trials 6 -> 9 (6 finished)" in extended.stdout
    assert tuner("launch-study", str(bigger), env=env).returncode == 0  # the file now matches: reused
    original = tuner("launch-study", str(path), env=env)  # and the file as first launched is still that study
    assert original.returncode == 0 and "reusing" in original.stdout, original.stderr

    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    assert wait_all([start_worker("ext", env, log) for log in logs], timeout=400) == [0, 0, 0]
    all_trials = trials(pg_url, "ext")
    assert finished(pg_url, "ext") == 9 and sorted(t.number for t in all_trials) == list(range(9))
    attrs = study_attrs(pg_url, "ext")
    assert attrs["tuner_config"]["study"]["n_trials"] == 9
    assert [(e["event"], e["old"], e["new"]) for e in attrs["tuner_history"]] == [("extend", 6, 9)]
    status = tuner("status", "--study", "ext", env=env)
    assert re.search(r"9/9 trials .*\d+\.\d KiB", status.stdout), status.stdout  # budget spent, checkpoint disk use
    assert_clean_logs(*logs)


def test_an_extension_made_while_workers_run_is_picked_up_without_restarting_them(pg_url, tmp_path):
    from tuner.fleet.lifecycle import extend_study

    path = long_study(tmp_path, "live", n_trials=3, epochs=4)
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    procs = [start_worker("live", env, log) for log in logs]
    wait_for(lambda: len(trials(pg_url, "live")) == 3, 120, "the whole budget of 3 trials to be started")
    storage = optuna.storages.RDBStorage(pg_url)
    result = extend_study(storage, "live", 6)
    storage.engine.dispose()
    # Counted under the budget lock: with fewer than 3 finished no worker can have seen the old budget spent
    # (a worker exits only then), so all three are still there and decide about their next trial with the new
    # budget. Trials of 4 long epochs (seconds) make this the case, and the assert proves it was.
    assert result.finished < 3 and all(p.poll() is None for p in procs)
    assert wait_all(procs, timeout=400) == [0, 0, 0]
    assert finished(pg_url, "live") == 6 and len(trials(pg_url, "live")) == 6
    assert_clean_logs(*logs)


def test_retention_keeps_only_the_best_complete_trials_and_no_pruned_ones(pg_url, tmp_path):
    good, bad = 3e-2, 1e-5  # lr: a bad one is far behind at epoch 1, so the median rule stops it
    path = study_file(tmp_path, "keep", n_trials=6, epochs=4, space="lr = { low = 1e-5, high = 1e-1, log = true }\n"
                      "width = 8\ndepth = 1\n", extra='metric = "val_loss"\ndirection = "minimize"\nkeep_best = 2',
                      pruner='type = "median"\nn_startup_trials = 3\nn_warmup_steps = 1')
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    # Fixed params, run in this order by one worker: 3 trials complete before the pruner may act, then two
    # bad ones are pruned. val_loss (continuous) has no ties, so exactly keep_best folders stay.
    study = load(pg_url, "keep")
    for lr in (good, good * 0.5, good * 2, bad, good, bad):
        study.enqueue_trial({"lr": lr})
    assert tuner("worker", "--study", "keep", "--cpu", "--threads", "1", env=env).returncode == 0

    all_trials = trials(pg_url, "keep")
    complete = sorted((t for t in all_trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    pruned = [t.number for t in all_trials if t.state == TrialState.PRUNED]
    assert len(complete) > 2 and pruned  # more COMPLETE trials than keep_best, and pruned ones
    folders = {int(p.name): p for p in checkpoint_dir(pg_url, "keep").iterdir()}
    assert set(folders) == {complete[0].number, complete[1].number}  # the best two; nothing of the pruned
    assert all([f.name for f in p.iterdir()] == ["epoch-0004.pt"] for p in folders.values())  # final weights
    assert tuner("export", "--study", "keep", "--out", str(tmp_path / "m.pt"), env=env).returncode == 0


def _rows(*spec: tuple[int, str, float | None, int | None]) -> list[TrialRow]:
    return [TrialRow(n, state, value, n if original is None else original) for n, state, value, original in spec]


def test_retention_never_deletes_what_a_retry_or_export_needs():
    rows = _rows(
        (0, "FAIL", None, None), (1, "WAITING", None, 0),  # a retry is queued: keep
        (2, "FAIL", None, None), (3, "RUNNING", None, 2),  # its retry runs: keep
        (4, "FAIL", None, None), (5, "FAIL", None, 4), (6, "FAIL", None, 4),  # 2 retries made, max 2: delete
        (7, "FAIL", None, None),  # no retry made yet (the tell and the retry are one step): keep
        (8, "PRUNED", None, None),  # delete
        (9, "COMPLETE", 0.9, None), (10, "COMPLETE", 0.8, None), (11, "COMPLETE", 0.8, None),  # ties at the cut
        (12, "COMPLETE", 0.7, None),  # below the best 2 (and the tie with the 2nd): delete
        (13, "FAIL", None, None), (14, "COMPLETE", 0.95, 13),  # a retry that completed: its lineage is 13
    )
    assert doomed_lineages(rows, keep_best=2, max_retries=2, maximize=True) == {4, 8, 10, 11, 12}
    assert doomed_lineages(rows, keep_best=3, max_retries=2, maximize=True) == {4, 8, 12}  # 10 and 11 tie 3rd
    assert doomed_lineages(rows, keep_best=2, max_retries=2, maximize=False) == {4, 8, 9, 13}
    # interruptions do not use up retries: three FAILs of which two were signals leave one retry to come
    interrupted = [TrialRow(20, "FAIL", None, 20, True), TrialRow(21, "FAIL", None, 20, True),
                   TrialRow(22, "FAIL", None, 20)]
    assert doomed_lineages(rows + interrupted, keep_best=2, max_retries=2, maximize=True) == {4, 8, 10, 11, 12}


def test_a_study_with_no_finished_trial_takes_a_changed_config(pg_url, tmp_path):
    env = tuner_env(pg_url, tmp_path)

    def launch_with(data_dir: str, *extra: str):
        path = study_file(tmp_path, "moved")
        path.write_text(path.read_text().replace('dataset = "digits"', f'dataset = "imagefolder"\n'
                                                                        f'data_dir = "{data_dir}"'))
        return tuner("launch-study", str(path), *extra, env=env, cwd=tmp_path)

    # a relative data_dir is where the user launches from, stored absolute (workers may run elsewhere)
    a, b = tmp_path / "a", tmp_path / "b"
    assert_one_line_error(launch_with("a"), f"study file {tmp_path / 'moved.toml'}: task.data_dir: '{a}' is not a "
                          "directory on this host", "--no-check")
    assert count_studies(pg_url) == 0  # checked before anything is stored
    assert launch_with("a", "--no-check").returncode == 0
    replaced = launch_with("b", "--no-check")
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.splitlines()[0] == ("replaced the config of study 'moved' (no trial had finished): "
                                               f"task.data_dir ('{a}' -> '{b}')")
    attrs = study_attrs(pg_url, "moved")
    assert attrs["tuner_config"]["task"]["data_dir"] == str(b)
    assert [e["event"] for e in attrs["tuner_history"]] == ["replace"]
    # Optuna fixes a study's direction at creation: that change is refused even here
    from tuner.fleet.study import launch_study

    flipped = study_file(tmp_path, "moved", extra='metric = "val_loss"\ndirection = "minimize"')
    storage = optuna.storages.RDBStorage(pg_url)
    with pytest.raises(TunerError, match="direction of a study cannot change"):
        launch_study(storage, load_config(flipped), check_paths=False)
    storage.engine.dispose()


def test_replacing_the_config_of_a_study_whose_trials_failed_starts_it_afresh(pg_url, tmp_path):
    # lr 1e38 with SGD: NaN in epoch 1. The worker stops at max_failures = 1 with the retry still queued.
    diverging = study_file(tmp_path, "fix", n_trials=2, epochs=1, space='lr = 1e38\noptimizer = "sgd"\nwidth = 4\n'
                           'depth = 1\n', worker=FAST_RECOVERY, extra="max_failures = 1")
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(diverging), env=env).returncode == 0
    assert tuner("worker", "--study", "fix", "--cpu", "--threads", "1", env=env).returncode == 1
    assert [t.state for t in trials(pg_url, "fix")] == [TrialState.FAIL, TrialState.WAITING]

    fixed = study_file(tmp_path, "fix", n_trials=2, epochs=1, space='lr = 0.01\noptimizer = "sgd"\nwidth = 4\n'
                       'depth = 1\n', worker=FAST_RECOVERY, extra="max_failures = 1")
    relaunch = tuner("launch-study", str(fixed), env=env)
    assert relaunch.returncode == 0 and "space.lr (1e+38 -> 0.01)" in relaunch.stdout, relaunch.stderr
    # The queued retry had the old params: it is failed, not run. The old failures do not count any more.
    again = tuner("worker", "--study", "fix", "--cpu", "--threads", "1", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    states = [(t.state, t.user_attrs.get("fail_reason")) for t in trials(pg_url, "fix")]
    assert states[1] == (TrialState.FAIL, "config replaced")
    assert [s for s, _ in states[2:]] == [TrialState.COMPLETE] * 2


@pytest.mark.parametrize("task, message", [
    (dict(model="resnet18", weights="nope.pt"), "task.weights: 'nope.pt' is not a file on this host"),
    (dict(dataset="imagefolder", data_dir="{tmp}/missing"), "task.data_dir: '{tmp}/missing' is not a directory"),
    (dict(dataset="imagefolder", data_dir="{tmp}/one"), "needs one sub-folder per class (at least two), found 1"),
    (dict(dataset="imagefolder", data_dir="{tmp}/empty"), "has no image files"),
    (dict(dataset="cifar10", data_dir="{tmp}"), "has no cifar-10-batches-py/"),
])
def test_launch_checks_that_data_and_weights_are_there(tmp_path, task, message):
    (tmp_path / "one" / "only").mkdir(parents=True)
    for label in ("0", "1"):
        (tmp_path / "empty" / label).mkdir(parents=True)
    task = {k: v.format(tmp=tmp_path) for k, v in task.items()}
    with pytest.raises(TunerError) as info:
        check_task_paths(TaskSection(**task))
    assert message.format(tmp=tmp_path) in str(info.value) and "--no-check" in str(info.value)


def test_real_data_and_weights_pass_the_launch_check(tmp_path):
    write_digit_folder(tmp_path / "digits", per_class=1, classes=2)
    for split in ("train", "val"):  # the user's own split
        write_digit_folder(tmp_path / "split" / split, per_class=1, classes=2)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"checked for existence only")
    check_task_paths(TaskSection(dataset="imagefolder", data_dir=str(tmp_path / "digits")))
    check_task_paths(TaskSection(dataset="imagefolder", data_dir=str(tmp_path / "split")))
    check_task_paths(TaskSection(model="resnet18", weights=str(weights)))
    check_task_paths(TaskSection(dataset="cifar10", data_dir=str(tmp_path / "nothing"), download=True))


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "a\\b"])
def test_a_study_name_that_is_a_path_is_refused_at_launch(pg_url, tmp_path, name):
    path = study_file(tmp_path, "s")
    out = tuner("launch-study", str(path), "--name", name, env=tuner_env(pg_url, tmp_path))
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "study.name" in out.stderr
    assert optuna.get_all_study_names(storage=pg_url) == []


def test_removing_a_folder_outside_the_checkpoint_root_is_refused(tmp_path):
    from tuner.errors import TunerError
    from tuner.store.place import StudyPlace

    outside = tmp_path / "x"
    (outside / "0").mkdir(parents=True)
    (tmp_path / "root").mkdir()
    with pytest.raises(TunerError, match="not inside the checkpoint root"):
        StudyPlace(tmp_path / "root", "../x").remove()  # an old study's name as its folder key
    with pytest.raises(TunerError, match="not inside the checkpoint root"):
        StudyPlace(tmp_path / "root", ".").remove()
    assert (outside / "0").is_dir()
    assert StudyPlace(tmp_path / "root", "inside").remove() == 0  # inside the root: removed (here: nothing there)


def test_delete_of_a_study_whose_folder_is_outside_the_root_refuses_before_removing_anything(sqlite_url, tmp_path):
    """A tampered (or pre-check legacy) folder key: `tuner delete` says so in one line, and the study stays in the
    database as well as the outside folder on disk, so nothing is half deleted."""
    env = tuner_env(sqlite_url, tmp_path)
    assert tuner("launch-study", str(study_file(tmp_path, "tampered")), env=env).returncode == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "SENTINEL").write_text("keep me")
    storage = optuna.storages.RDBStorage(sqlite_url)
    storage.set_study_user_attr(storage.get_study_id_from_name("tampered"), "tuner_uuid", "../victim")
    storage.engine.dispose()
    assert_one_line_error(tuner("delete", "--study", "tampered", "--yes", env=env), "not inside the checkpoint root")
    assert optuna.get_all_study_names(storage=sqlite_url) == ["tampered"]
    assert (victim / "SENTINEL").read_text() == "keep me"
    status = tuner("status", "--study", "tampered", "--format", "json", env=env)
    assert status.returncode == 0 and json.loads(status.stdout)[0]["checkpoint_bytes"] is None  # not measured there


def test_extending_a_study_whose_compute_budget_is_spent_is_one_line_and_changes_nothing(sqlite_url, tmp_path,
                                                                                          monkeypatch):
    """More trials would never start once max_epochs (or max_gpu_hours) is spent: extend used to add a trial
    budget anyway and say that running workers take the new trials."""
    from optuna.distributions import FloatDistribution

    from tuner.fleet.lifecycle import extend_study
    from tuner.fleet.study import launch_study, stored_config
    from tuner.store.storage import make_storage

    monkeypatch.setenv("TUNER_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    storage = make_storage(sqlite_url)
    launch_study(storage, load_config(study_file(tmp_path, "spent", n_trials=2, epochs=2, extra="max_epochs = 3",
                                                 space="lr = { low = 1e-3, high = 1e-1, log = true }\n")))
    study = optuna.load_study(study_name="spent", storage=storage)
    lr = FloatDistribution(1e-3, 1e-1, log=True)
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, distributions={"lr": lr}, value=0.9,
                                              user_attrs={"epochs_trained": 2}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={"lr": 0.02}, distributions={"lr": lr},
                                              user_attrs={"epochs_trained": 1}))
    with pytest.raises(TunerError, match=r"study 'spent' is complete \(max_epochs reached \(3 of 3 epochs trained\)\)"
                                         ": more trials would not run"):
        extend_study(storage, "spent", 4)
    assert stored_config(storage, "spent").study.n_trials == 2
    assert "tuner_history" not in study.user_attrs


def test_enqueueing_into_a_full_population_says_so_instead_of_pointing_at_extend(sqlite_url, tmp_path, monkeypatch):
    """PBT's configurations are its population and `tuner extend` refuses it: enqueue used to answer a full
    population with "`tuner extend --study S --n-trials 3` first"."""
    from optuna.distributions import FloatDistribution

    from tuner.fleet.lifecycle import enqueue_params
    from tuner.fleet.study import launch_study
    from tuner.store.storage import make_storage

    monkeypatch.setenv("TUNER_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    storage = make_storage(sqlite_url)
    launch_study(storage, load_config(study_file(tmp_path, "pbt", n_trials=2, epochs=2,
                                                 pruner='type = "pbt"\npopulation = 2\ninterval = 1',
                                                 space="lr = { low = 1e-3, high = 1e-1, log = true }\n")))
    assert enqueue_params(storage, "pbt", ["lr=0.01"]) == 0  # an empty place in the population: a first member
    study = optuna.load_study(study_name="pbt", storage=storage)
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.02}, value=0.5,
                                              distributions={"lr": FloatDistribution(1e-3, 1e-1, log=True)}))
    with pytest.raises(TunerError, match=r"study 'pbt' has started every member of its population \(2\)") as caught:
        enqueue_params(storage, "pbt", ["lr=0.03"])
    assert "extend" not in str(caught.value)


@pytest.mark.parametrize("name", ["a/b", "a\\b", ".."])
def test_a_path_like_name_stored_before_the_check_stays_readable(name):
    """Studies stored before names were checked must still load (so `tuner delete` can remove them); the
    exemption holds for every path-like name, not only for one with a /."""
    from tuner.spec.config import parse_config

    data = {"study": {"name": name, "n_trials": 1}, "space": {"lr": 0.01}}
    assert parse_config(data, f"stored config of study {name!r}").study.name == name
    with pytest.raises(TunerError, match="study.name"):
        parse_config(data, "study file s.toml")
