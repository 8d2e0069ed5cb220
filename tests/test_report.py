"""`tuner report`: one self-contained HTML page (and PNGs) for finished, running and empty studies."""

from __future__ import annotations

import html
import html.parser
import re
import tomllib

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import create_database, load, start_worker, study_file, tuner, tuner_env, wait_all

SECTIONS = ["summary", "plots", "pruning", "config", "failures", "best-value", "epochs-saved"]
PLOTS = ["history", "learning_curves", "importances", "parallel_coordinates", "slices", "size", "pruning"]
# lr and width are searched; depth, dropout, weight decay fixed: a tiny, fast CNN
SPACE = "lr = { low = 1e-5, high = 1e-1, log = true }\nwidth = { low = 4, high = 12 }\ndepth = 1\n"
DISTRIBUTIONS = {"lr": FloatDistribution(1e-5, 1e-1, log=True), "width": IntDistribution(4, 12)}


class _References(html.parser.HTMLParser):
    """Every src/href of the page's tags and its <style> text (script bodies are data, not tags, to a parser:
    the URLs inside plotly.js's code are not references)."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.styles: list[str] = []
        self.scripts = 0
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.links += [v or "" for k, v in attrs if k in ("src", "href")]
        self._in_style = tag == "style"
        self.scripts += tag == "script"

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)
            self._in_style = False


def assert_self_contained(page: str) -> None:
    refs = _References()
    refs.feed(page)
    external = [link for link in refs.links if re.match(r"\s*(https?:|//|file:)", link, re.I)]
    assert external == []
    assert all(link.startswith("#") for link in refs.links)  # only the page's own anchors
    assert not any("@import" in s or "url(" in s for s in refs.styles)
    assert page.count("plotly.js v") == 1  # plotly.js's banner: the library is embedded once, from the package


def page_text(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S)
    assert match, f"no element with id {element_id!r}"
    return html.unescape(match.group(1))


@pytest.fixture(scope="module")
def finished_study(pg_server, tmp_path_factory):
    """A finished digits study on the real PostgreSQL: 3 good trials, then 2 with a hopeless lr that the median
    pruner stops (n_startup_trials=3, n_warmup_steps=1): PRUNED trials by construction."""
    tmp = tmp_path_factory.mktemp("report")
    url = create_database(*pg_server)
    env = tuner_env(url, tmp)
    path = study_file(tmp, "rep", n_trials=5, epochs=3, space=SPACE)
    assert tuner("launch-study", str(path), env=env).returncode == 0
    study = load(url, "rep")
    for width in (4, 8, 12):
        study.enqueue_trial({"lr": 0.03, "width": width})
    for width in (8, 12):
        study.enqueue_trial({"lr": 1e-5, "width": width})
    assert wait_all([start_worker("rep", env, tmp / "worker.log")], timeout=600) == [0]
    return url, env, tmp


def test_the_report_of_a_finished_study_is_self_contained_and_its_pruning_savings_match_the_curves(
        finished_study):
    url, env, tmp = finished_study
    out = tmp / "report.html"
    result = tuner("report", "--study", "rep", "--out", str(out), env=env)
    assert (result.returncode, result.stderr) == (0, "")
    page = out.read_text()
    assert_self_contained(page)
    for section in SECTIONS:
        assert f'id="{section}"' in page
    for key in PLOTS:  # every plot drawn, in a figure of its own
        assert f'id="plot-{key}"' in page and f'id="figure-{key}"' in page
    assert "Not drawn" not in page and 'id="test-accuracy"' not in page  # no trial measured test accuracy
    assert 'id="finished"' in page and "still running" not in page

    trials = load(url, "rep").get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert [t.state.name for t in trials].count("PRUNED") == 2
    # the savings, independently: epochs each finished trial reported, against 3 epochs each
    trained = sum(len(t.intermediate_values) for t in finished)
    assert int(page_text(page, "epochs-trained")) == trained
    assert int(page_text(page, "epochs-without-pruning")) == 3 * len(finished) == 15
    assert int(page_text(page, "epochs-saved")) == 15 - trained > 0
    assert 'id="hours-saved"' in page

    best = load(url, "rep").best_trial
    assert page_text(page, "best-value") == f"{best.value:.4f}"
    assert f"trial #{best.number}:" in page
    stored = load(url, "rep").user_attrs["tuner_config"]
    assert tomllib.loads(page_text(page, "config")) == stored  # the config, as a study file
    summary = page[page.index('id="summary"'):page.index('id="plots"')]
    assert "<td>3</td><td>2</td><td>0</td><td>0</td><td>0</td>" in summary  # COMPLETE PRUNED FAIL RUNNING WAITING
    assert "<td>cpu</td><td>5</td>" in summary  # device-hours of the 5 trials, on the CPU
    assert "Wall time of the study" in summary


def test_png_writes_one_valid_image_per_plot(finished_study):
    from PIL import Image

    _, env, tmp = finished_study
    png_dir = tmp / "png"
    result = tuner("report", "--study", "rep", "--out", str(tmp / "r.html"), "--png", str(png_dir), env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in png_dir.iterdir()) == sorted(f"{key}.png" for key in PLOTS)
    for path in png_dir.iterdir():
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path
        assert len(data) > 5_000, path
        with Image.open(path) as image:
            image.load()
            assert image.width > 300 and image.height > 200, path
    assert "wrote 7 PNGs" in result.stdout


def test_a_study_with_no_complete_trial_says_so_and_that_it_is_still_running(pg_url, tmp_path):
    env = tuner_env(pg_url, tmp_path)
    assert tuner("launch-study", str(study_file(tmp_path, "zero", n_trials=4, space=SPACE)), env=env).returncode == 0
    study = load(pg_url, "zero")
    params = {"lr": 1e-3, "width": 4}
    study.add_trial(create_trial(state=TrialState.PRUNED, params=params, distributions=DISTRIBUTIONS,
                                 intermediate_values={1: 0.2}, user_attrs={"pruned_at_epoch": 1, "device": "cpu",
                                                                           "wall_time_s": 2.0}))
    study.add_trial(create_trial(state=TrialState.FAIL, params=params, distributions=DISTRIBUTIONS,
                                 user_attrs={"fail_reason": "RuntimeError: <boom>"}))
    study.enqueue_trial(params)  # WAITING
    out = tmp_path / "report.html"
    result = tuner("report", "--study", "zero", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert_self_contained(page)
    assert "This study is still running" in page and "budget spent 1/4 trials (1 trials finished)" in page
    assert 'id="no-complete"' in page
    assert "Not drawn: no COMPLETE trial yet" in page
    assert 'id="figure-learning_curves"' in page  # the pruned trial's curve
    assert "RuntimeError: &lt;boom&gt;" in page  # the failure's reason, escaped
    assert page_text(page, "epochs-saved") == "2"  # pruned at epoch 1 of 3


def test_a_finished_sqlite_study_gets_its_report(sqlite_url, tmp_path):
    env = tuner_env(sqlite_url, tmp_path)
    path = study_file(tmp_path, "lite", n_trials=2, epochs=2, space=SPACE, pruner='type = "none"')
    assert tuner("run", str(path), "--workers", "1", "--cpu", env=env).returncode == 0
    out = tmp_path / "report.html"
    result = tuner("report", "--study", "lite", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert_self_contained(page)
    assert 'id="finished"' in page and 'id="figure-history"' in page
    assert page_text(page, "epochs-saved") == "0"  # no pruner, nothing saved


def test_importances_need_two_complete_trials_and_test_accuracy_shows_where_measured(sqlite_url, tmp_path):
    env = tuner_env(sqlite_url, tmp_path)
    assert tuner("launch-study", str(study_file(tmp_path, "one", n_trials=1, space=SPACE)), env=env).returncode == 0
    study = optuna.load_study(study_name="one", storage=sqlite_url)
    study.add_trial(create_trial(params={"lr": 1e-2, "width": 6}, distributions=DISTRIBUTIONS, value=0.9,
                                 intermediate_values={1: 0.5, 2: 0.8, 3: 0.9},
                                 user_attrs={"param_count": 1234, "test_accuracy": 0.875}))
    out = tmp_path / "report.html"
    assert tuner("report", "--study", "one", "--out", str(out), env=env).returncode == 0
    page = out.read_text()
    assert "Not drawn: not enough trials" in page
    assert 'id="test-accuracy"' in page and "<td>0.8750</td>" in page
    assert 'id="figure-size"' in page  # one trial is a Pareto front of one
    result = tuner("report", "--study", "one", "--out", str(tmp_path), env=env)  # a folder: cannot be written
    assert (result.returncode, result.stderr) == (1, f"error: cannot write the report: {tmp_path}: Is a directory\n")


def test_an_unknown_study_is_one_line_and_exit_code_1(sqlite_url, tmp_path):
    out = tmp_path / "report.html"
    env = tuner_env(sqlite_url, tmp_path)
    assert tuner("launch-study", str(study_file(tmp_path, "other")), env=env).returncode == 0  # a database
    result = tuner("report", "--study", "nope", "--out", str(out), env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: no study named 'nope'")
    assert "Traceback" not in result.stderr and not out.exists()


def _trial(number: int, state: TrialState, curve: list[float], **attrs):
    trial = create_trial(state=state, params={"lr": 1e-2, "width": 6}, distributions=DISTRIBUTIONS,
                         value=curve[-1] if state == TrialState.COMPLETE else None,
                         intermediate_values=dict(enumerate(curve, start=1)), user_attrs=attrs)
    trial.number = number
    return trial


def test_a_retry_chain_counts_its_epochs_once_and_failed_attempts_stay_out_of_the_comparison():
    from tuner.report.data import pruning_savings

    curve = [0.5, 0.6, 0.7, 0.8, 0.9]
    trials = [
        _trial(0, TrialState.FAIL, curve[:2], wall_time_s=2.0),  # died after epoch 2...
        _trial(1, TrialState.COMPLETE, curve, resumed_from_epoch=2, wall_time_s=6.0),  # ...resumed: 3 epochs, 2 s each
        _trial(2, TrialState.PRUNED, curve[:2], pruned_at_epoch=2, wall_time_s=2.0),  # 1 s per epoch
        _trial(3, TrialState.RUNNING, curve[:1]),
    ]
    s = pruning_savings(trials, epochs_per_trial=5)
    assert (s.trials, s.epochs_trained, s.epochs_without_pruning, s.epochs_saved) == (2, 7, 10, 3)
    assert (s.seconds_trained, s.seconds_without_pruning, s.seconds_saved) == (2 * 5 + 1 * 2, 2 * 5 + 1 * 5, 3)


def test_a_schedule_that_trains_every_configuration_to_the_end_saves_no_device_time():
    """PBT: a member's segments are trials of their own, each with its own start-up time, so their seconds per
    epoch differ; the estimate is per configuration (lineage), so training everything to the end saves 0."""
    from tuner.report.data import pruning_savings

    first = _trial(0, TrialState.PRUNED, [0.5], paused_at_epoch=1, wall_time_s=3.0)  # 3 s for its epoch
    second = _trial(1, TrialState.COMPLETE, [0.5, 0.6], lineage=0, continues=0, continued_at_epoch=1,
                    resumed_from_epoch=1, wall_time_s=1.0)  # 1 s for its own epoch
    s = pruning_savings([first, second], epochs_per_trial=2)
    assert (s.trials, s.epochs_trained, s.epochs_saved) == (1, 2, 0)
    assert (s.seconds_trained, s.seconds_without_pruning, s.seconds_saved) == (4.0, 4.0, 0.0)


def test_the_pareto_front_keeps_each_smallest_model_that_is_better_than_every_smaller_one():
    from tuner.report.data import size_front

    points = [(1000, 0.90), (2000, 0.85), (2000, 0.95), (500, 0.80), (4000, 0.95), (8000, 0.97)]
    trials = [_trial(i, TrialState.COMPLETE, [v], param_count=n) for i, (n, v) in enumerate(points)]
    front = size_front(trials, maximize=True)
    assert [(p.param_count, p.value) for p in front] == [(500, 0.80), (1000, 0.90), (2000, 0.95), (8000, 0.97)]
    assert [(p.param_count, p.value) for p in size_front(trials, maximize=False)] == [(500, 0.80)]


def test_the_budget_spent_counts_configurations_as_tuner_status_does(sqlite_url, tmp_path, monkeypatch):
    """An ASHA promotion (or a PBT segment) continues a configuration and takes no slot of n_trials: the report
    said "3/2 trials" where `tuner status` and the workers count "2/2 trials"."""
    from tuner.fleet.study import launch_study, study_status
    from tuner.report.data import take_snapshot
    from tuner.spec.config import load_config
    from tuner.store.storage import make_storage

    monkeypatch.setenv("TUNER_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    path = study_file(tmp_path, "asha", n_trials=2, epochs=3, space=SPACE, pruner='type = "asha"\nmin_resource = 1')
    storage = make_storage(sqlite_url)
    launch_study(storage, load_config(path))
    study = optuna.load_study(study_name="asha", storage=storage)
    study.add_trial(_trial(0, TrialState.COMPLETE, [0.5, 0.6, 0.7]))
    study.add_trial(_trial(1, TrialState.PRUNED, [0.4], paused_at_epoch=1))
    study.add_trial(_trial(2, TrialState.COMPLETE, [0.4, 0.6, 0.8], continues=1, continued_at_epoch=1, lineage=1))
    snapshot = take_snapshot(storage, "asha")
    assert [text for _, text in snapshot.budget()] == ["2/2 trials"] == [study_status(storage, "asha").budget]
    assert not snapshot.unfinished
