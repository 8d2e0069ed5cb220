"""Which plots a report has, and why one is left out; shared by the HTML page (plotly) and the PNGs (matplotlib)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.importance import BaseImportanceEvaluator
from optuna.trial import FrozenTrial

from tuner.report.data import ReportSnapshot

# key (file name of the PNG, id in the page) -> title
PLOT_TITLES = {
    "history": "Optimisation history",
    "learning_curves": "Learning curves",
    "importances": "Parameter importances",
    "parallel_coordinates": "Parallel coordinates",
    "slices": "Slice plots",
    "size": "{metric} vs parameter count",
    "pruning": "Epochs and device time, with and without pruning",
    "family_tree": "The population's family tree (PBT)",
}


@dataclass(frozen=True)
class Plot:
    key: str
    title: str
    caption: str
    missing: str | None = None  # why there is nothing to draw yet; None: drawn


class KnownImportances(BaseImportanceEvaluator):
    """Importances computed once, handed to both optuna.visualization and its matplotlib twin."""

    def __init__(self, importances: dict[str, float]):
        self.importances = importances

    def evaluate(self, study: optuna.Study, params: list[str] | None = None, *,
                 target: Callable[[FrozenTrial], float] | None = None) -> dict[str, float]:
        return dict(self.importances)


def param_importances(snapshot: ReportSnapshot) -> dict[str, float] | None:
    """Optuna's default evaluator on the COMPLETE trials; None when they cannot tell anything apart."""
    params = snapshot.searched_params
    if len(snapshot.complete) < 2 or not params:
        return None
    with warnings.catch_warnings():
        # PED-ANOVA's "Target and region quantiles select the same set of trials" (few trials, equal values):
        # the importances it returns are then equal, which the plot shows; stderr is the user's, not Optuna's
        warnings.simplefilter("ignore", UserWarning)
        return optuna.importance.get_param_importances(snapshot.study, params=params)


def plan_plots(snapshot: ReportSnapshot, importances: dict[str, float] | None) -> list[Plot]:
    metric = snapshot.config.study.metric
    n_complete = len(snapshot.complete)
    none_complete = "no COMPLETE trial yet" if n_complete == 0 else None
    no_params = none_complete or (None if snapshot.searched_params else
                                  "no searched parameter varies across the COMPLETE trials")
    importance_gap = None
    if importances is None:
        importance_gap = (f"not enough trials: importances need at least 2 COMPLETE trials (this study has "
                          f"{n_complete}) and a parameter that varies" if n_complete < 2 else no_params)
    sized = any(t.user_attrs.get("param_count") is not None for t in snapshot.complete)
    curves = any(t.intermediate_values for t in snapshot.trials)
    captions = {
        "history": (f"{metric} of every COMPLETE trial, and the best so far", none_complete),
        "learning_curves": (f"{metric} per epoch of every trial; pruned trials dashed, × where each was pruned",
                            None if curves else "no trial has reported an epoch yet"),
        "importances": ("how much of the variation in the result each parameter explains "
                        "(Optuna's default evaluator, COMPLETE trials)", importance_gap),
        "parallel_coordinates": ("each line is a COMPLETE trial", no_params),
        "slices": (f"{metric} against each parameter", no_params),
        "size": ("which model size is worth it: the line is the Pareto front (no smaller model is better)",
                 none_complete or (None if sized else "no COMPLETE trial recorded param_count")),
        "pruning": ("epochs and device time of the finished trials, against the same trials trained "
                    "to the last epoch", None if snapshot.finished else "no finished trial yet"),
    }
    if snapshot.config.pruner.get("type") == "pbt":
        captions["family_tree"] = (f"each line is a member's segment, coloured by its {metric} at the segment's "
                                   "end; a dotted arrow is an exploit: the member took the weights of the one it "
                                   "comes from", None if curves else "no segment has reported an epoch yet")
    return [Plot(key, PLOT_TITLES[key].format(metric=metric), caption, missing)
            for key, (caption, missing) in captions.items()]
