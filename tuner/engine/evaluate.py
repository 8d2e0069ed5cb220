"""The held-out test score: the best trials' final models, scored once on the test split.

The sampler and the pruner never see it (they see val_accuracy only), and nothing selects on it: it is stored as
the trial's `test_accuracy` user attribute for people to read (`tuner best`, the report, the dashboard, SQL).
"""

from __future__ import annotations

import json
import logging

import optuna
import sqlalchemy
import torch

from tuner.data.loader import open_batches
from tuner.engine.device import resolve_precision
from tuner.errors import TunerError
from tuner.engine.models import build_model
from tuner.fleet.lineage import lineage_number
from tuner.spec.space import hparams_from_params
from tuner.fleet.study import checkpoint_place, stored_config
from tuner.fleet.imported import candidates, front_of, no_weights_here
from tuner.engine.train import evaluate

_log = logging.getLogger(__name__)


def _store(storage: optuna.storages.RDBStorage, trial_id: int, key: str, value: float) -> None:
    """A user attribute on a finished trial: Optuna refuses to update those, so it is written here, the way
    Optuna stores it (value_json), where every reader of the trial finds it."""
    with storage.engine.begin() as conn:
        conn.execute(sqlalchemy.text("DELETE FROM trial_user_attributes WHERE trial_id = :t AND key = :k"),
                     {"t": trial_id, "k": key})
        conn.execute(sqlalchemy.text("INSERT INTO trial_user_attributes (trial_id, key, value_json) "
                                     "VALUES (:t, :k, :v)"), {"t": trial_id, "k": key, "v": json.dumps(value)})


def score_on_test(storage: optuna.storages.RDBStorage, name: str, top: int = 1,
                  device: torch.device = torch.device("cpu")) -> list[tuple[int, float]]:
    """Score the `top` best COMPLETE trials on the test split; returns [(trial number, test_accuracy)]."""
    config = stored_config(storage, name)
    study = optuna.load_study(study_name=name, storage=storage)
    done = candidates(study)  # imported trials only where they count as best (tuner.fleet.imported)
    if not done:
        raise TunerError(f"study {name!r} has no COMPLETE trial to score yet")
    if config.study.multi_objective:  # no single ranking: the Pareto front's trials, by number
        done = sorted(front_of(study), key=lambda t: t.number)
    else:
        done.sort(key=lambda t: t.value, reverse=config.study.direction == "maximize")
    data = open_batches(config.task, device)
    if len(data.prepared.splits["test"]) == 0:
        raise TunerError(f"study {name!r} has no test split: its data has no test/ folder or test set, and "
                         "task.test_fraction is 0")
    place = checkpoint_place(storage, name)
    scores = []
    for trial in done[:top]:
        if no_weights_here(trial):
            _log.warning("trial %d: %s; not scored", trial.number, no_weights_here(trial))
            continue
        trained_on = trial.user_attrs.get("data", {}).get("key")
        if trained_on not in (None, data.record["key"]):
            raise TunerError(f"study {name!r}: the data changed since trial {trial.number} trained (prepared data "
                             f"{trained_on}, now {data.record['key']}: files of task.data_dir were added, removed "
                             "or modified); a test score now would not measure what it trained on")
        state = place.trial(lineage_number(trial)).load_latest()
        if state is None:  # retention keeps the best keep_best trials' weights; or another host has them
            _log.warning("trial %d: no final checkpoint under %s; not scored", trial.number, place.root)
            continue
        hp = hparams_from_params(config.space, trial.params)
        # every weight is in the checkpoint: build without pretrained weights, then load them all
        model = build_model(config.task.model, "none", hp, data.image_shape, data.num_classes)
        model.load_state_dict(state["model"])
        precision = resolve_precision(config.task.precision, device)  # as the trial was validated
        accuracy = evaluate(model.to(device), data, "test", precision)["test_accuracy"]
        _store(storage, trial._trial_id, "test_accuracy", accuracy)
        scores.append((trial.number, accuracy))
    return scores
