"""One snapshot of a study, read once, and the numbers the report shows: counts, best trial, device hours,
failures, learning curves, the Pareto front of accuracy vs model size, and what pruning saved.

Every plot and table of one report is drawn from the same snapshot, so a running study gives a consistent page.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import statistics
from collections.abc import Container
from dataclasses import dataclass

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from tuner.spec.config import StudyConfig
from tuner.fleet.asha import CONTINUED_AT_ATTR, CONTINUES_ATTR
from tuner.fleet.pbt import EXPLOITED_MEMBER_ATTR, MEMBER_ATTR
from tuner.fleet.imported import is_imported
from tuner.fleet.lineage import lineage_number
from tuner.fleet.stopping import stop_reason
from tuner.fleet.study import stored_config

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")  # the order the report lists them in


@dataclass(frozen=True)
class Savings:
    """Epochs (and device seconds) of the finished trials, against the same trials run without pruning."""

    trials: int  # finished (COMPLETE + PRUNED) trials compared
    epochs_per_trial: int  # task.epochs: what every trial trains without pruning
    epochs_trained: int
    seconds_trained: float | None  # None: no trial recorded a usable wall time
    seconds_without_pruning: float | None

    @property
    def epochs_without_pruning(self) -> int:
        return self.trials * self.epochs_per_trial

    @property
    def epochs_saved(self) -> int:
        return self.epochs_without_pruning - self.epochs_trained

    @property
    def seconds_saved(self) -> float | None:
        if self.seconds_trained is None or self.seconds_without_pruning is None:
            return None
        return self.seconds_without_pruning - self.seconds_trained


@dataclass(frozen=True)
class ParetoPoint:
    number: int
    param_count: int
    value: float


@dataclass(frozen=True)
class Curve:
    number: int
    state: str  # COMPLETE | PRUNED | RUNNING | FAIL
    steps: list[int]  # epochs
    values: list[float]

    @property
    def pruned_at(self) -> tuple[int, float] | None:
        """(epoch, value) where the pruner stopped this trial: its last reported epoch."""
        return (self.steps[-1], self.values[-1]) if self.state == "PRUNED" and self.steps else None


@dataclass(frozen=True)
class ReportSnapshot:
    name: str
    config: StudyConfig
    trials: list[FrozenTrial]  # every trial, by number
    taken_at: datetime.datetime  # naive UTC, like Optuna's timestamps
    study: optuna.Study  # in memory: the COMPLETE trials' params and values, for optuna.visualization
    imported: list[FrozenTrial] = dataclasses.field(default_factory=list)  # a warm start's (not in `trials`)
    stopped: str = ""  # the stop condition (target, patience, max_hours) that ended the study, if one did

    @property
    def counts(self) -> dict[str, int]:
        counts = collections.Counter(t.state.name for t in self.trials)
        return {state: counts.get(state, 0) for state in STATES}

    @property
    def complete(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.COMPLETE]

    @property
    def finished(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state in FINISHED]

    def budget(self) -> list[tuple[float, str]]:
        """Each budget the study has: (share spent, "12/20 trials"), from the trials' own records."""
        from tuner.fleet.compute import EPOCHS_ATTR, SECONDS_ATTR, Spent, budget_parts

        used = Spent(sum(t.user_attrs.get(EPOCHS_ATTR, 0) for t in self.trials),
                     sum(t.user_attrs.get(SECONDS_ATTR, 0.0) for t in self.trials))
        # n_trials counts configurations, as the workers and `tuner status` do (tuner.store.budget): an ASHA
        # promotion or a PBT segment continues one and takes no slot
        configs = sum(_starts_a_config(t) for t in self.finished)
        return budget_parts(self.config.study, configs, used)

    @property
    def unfinished(self) -> bool:
        """Trials are running or queued, or no budget is spent yet and no stop condition ended the study (its
        workers may have stopped early)."""
        counts = self.counts
        spent = self.stopped or max(share for share, _ in self.budget()) >= 1
        return bool(counts["RUNNING"] or counts["WAITING"]) or not spent

    @property
    def maximize(self) -> bool:
        return self.config.study.direction == "maximize"

    @property
    def best(self) -> FrozenTrial | None:
        complete = self.complete + (self.imported if self.config.study.warm_start_counts_as_best else [])
        if not complete:
            return None
        sign = -1 if self.maximize else 1
        return min(complete, key=lambda t: (sign * t.value, t.number))  # the earliest of equal bests

    @property
    def retries(self) -> int:
        return sum(1 for t in self.trials if "failed_trial" in t.system_attrs)

    @property
    def searched_params(self) -> list[str]:
        """Params sampled with more than one value among the COMPLETE trials (the ones worth plotting)."""
        seen: dict[str, set] = collections.defaultdict(set)
        for t in self.complete:
            for k, v in t.params.items():
                seen[k].add(v)
        return sorted(k for k, values in seen.items() if len(values) > 1)


class _ReadOnlyMemory(optuna.storages.InMemoryStorage):
    """optuna.visualization asks for a deep copy of every trial on each of its many reads (seconds for 1,000
    trials); the report only reads them, so it gets the stored ones."""

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return super().get_all_trials(study_id, deepcopy=False, states=states)


def _bare(trial: FrozenTrial) -> FrozenTrial:
    """What optuna.visualization reads of a trial: params and value of a COMPLETE one. It deep-copies every
    trial on each read, so the others become bare FAIL trials (they keep the trial numbers the study's)."""
    if trial.state == TrialState.COMPLETE:
        return optuna.trial.create_trial(params=trial.params, distributions=trial.distributions, value=trial.value)
    return optuna.trial.create_trial(state=TrialState.FAIL)


def _seconds_per_epoch(trial: FrozenTrial) -> float | None:
    wall, epochs = trial.user_attrs.get("wall_time_s"), own_epochs(trial)
    return wall / epochs if wall is not None and epochs else None


def take_snapshot(storage: optuna.storages.BaseStorage, name: str) -> ReportSnapshot:
    """Read the study once (a TunerError if it does not exist or is not tuner's)."""
    config = stored_config(storage, name)
    study_id = storage.get_study_id_from_name(name)
    taken_at = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    trials = sorted(storage.get_all_trials(study_id, deepcopy=False), key=lambda t: t.number)
    # what this study trained: a warm start's imported trials were trained (and pruned, and timed) elsewhere;
    # they stay out of the counts, the curves and the savings, and of the best unless the study counts them
    imported = [t for t in trials if is_imported(t)]
    trials = [t for t in trials if not is_imported(t)]
    memory = optuna.create_study(study_name=name, direction=config.study.direction, storage=_ReadOnlyMemory())
    memory.add_trials([_bare(t) for t in trials])
    stopped = stop_reason(storage, study_id, config.study) if isinstance(storage, RDBStorage) else ""
    return ReportSnapshot(name=name, config=config, trials=trials, taken_at=taken_at, study=memory,
                          imported=imported, stopped=stopped)


def own_epochs(trial: FrozenTrial) -> int:
    """Epochs this attempt trained itself: a retry first re-reports the epochs it resumed from its original."""
    resumed = trial.user_attrs.get("resumed_from_epoch") or 0
    return sum(1 for step in trial.intermediate_values if step > resumed)


def _starts_a_config(t: FrozenTrial) -> bool:
    """False for an ASHA promotion: it continues a paused trial's configuration, counted with that trial."""
    return CONTINUES_ATTR not in t.user_attrs


def _lineage_epochs(t: FrozenTrial) -> int:
    """The epochs a finished trial adds to its configuration: all of its curve, but for a promotion (or its
    retry) only those after the epoch it was promoted at (the paused trial counts the ones before)."""
    promoted_at = t.user_attrs.get(CONTINUED_AT_ATTR) or 0
    return sum(1 for step in t.intermediate_values if step > promoted_at)


def pruning_savings(trials: list[FrozenTrial], epochs_per_trial: int) -> Savings:
    """What pruning saved on the finished trials.

    Each COMPLETE or PRUNED trial counts the epochs of its learning curve. A retry's curve holds the epochs it
    resumed from its failed original, so every retry chain counts its epochs once, like the one trial it would
    be without failures; the failed attempts themselves and RUNNING trials are left out on both sides (pruning
    changes neither). Without pruning each of these trials would have trained `epochs_per_trial` epochs.

    Device time is estimated per configuration (a trial with its retries, promotions and PBT segments, which
    share its lineage): without pruning, its measured seconds per epoch (its attempts' wall time over the epochs
    they trained themselves) times `epochs_per_trial`; a configuration that trained no epoch (infeasible) takes
    the median of the others' seconds per epoch. So a schedule that trains every configuration to the end (PBT)
    saves exactly nothing, however its time splits into segments.
    """
    finished = [t for t in trials if t.state in FINISHED]
    seconds: dict[int, float] = collections.defaultdict(float)  # lineage -> measured seconds of its epochs
    epochs: dict[int, int] = collections.defaultdict(int)  # lineage -> epochs it trained
    for t in finished:
        rate = _seconds_per_epoch(t)
        if rate is not None:
            seconds[lineage_number(t)] += rate * _lineage_epochs(t)
            epochs[lineage_number(t)] += _lineage_epochs(t)
    rates = [seconds[k] / epochs[k] for k in seconds if epochs[k]]
    fallback = statistics.median(rates) if rates else None
    configs = {lineage_number(t) for t in finished}
    without = sum(seconds[k] / epochs[k] if epochs[k] else fallback or 0.0 for k in configs) * epochs_per_trial
    return Savings(trials=sum(_starts_a_config(t) for t in finished), epochs_per_trial=epochs_per_trial,
                   epochs_trained=sum(_lineage_epochs(t) for t in finished),
                   seconds_trained=sum(seconds.values()) if rates else None,
                   seconds_without_pruning=without if rates else None)


def size_front(trials: list[FrozenTrial], maximize: bool) -> list[ParetoPoint]:
    """COMPLETE trials that no other beats on both value and parameter count, smallest model first."""
    points = [ParetoPoint(t.number, t.user_attrs["param_count"], t.value) for t in trials
              if t.state == TrialState.COMPLETE and t.user_attrs.get("param_count") is not None]
    sign = 1 if maximize else -1
    front: list[ParetoPoint] = []
    for p in sorted(points, key=lambda p: (p.param_count, -sign * p.value, p.number)):
        if not front or sign * p.value > sign * front[-1].value:
            front.append(p)
    return front


def device_seconds(trials: list[FrozenTrial]) -> dict[str, tuple[int, float]]:
    """Device -> (trials, seconds): the sum of the trials' wall times, every attempt included."""
    out: dict[str, tuple[int, float]] = {}
    for t in trials:
        wall = t.user_attrs.get("wall_time_s")
        if wall is not None:
            device = str(t.user_attrs.get("device", "unknown"))
            n, seconds = out.get(device, (0, 0.0))
            out[device] = (n + 1, seconds + wall)
    return dict(sorted(out.items()))


def failures(trials: list[FrozenTrial]) -> dict[str, list[int]]:
    """fail_reason -> numbers of the FAIL trials with it, most frequent reason first."""
    by_reason: dict[str, list[int]] = collections.defaultdict(list)
    for t in trials:
        if t.state == TrialState.FAIL:
            by_reason[str(t.user_attrs.get("fail_reason", "no reason recorded"))].append(t.number)
    return dict(sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def study_seconds(snapshot: ReportSnapshot) -> float | None:
    """From the first trial's start to the last one's end (to now, while trials run)."""
    starts = [t.datetime_start for t in snapshot.trials if t.datetime_start is not None]
    if not starts:
        return None
    ends = [t.datetime_complete for t in snapshot.trials if t.datetime_complete is not None]
    running = any(t.state == TrialState.RUNNING for t in snapshot.trials)
    end = snapshot.taken_at if running or not ends else max(ends)
    return max(0.0, (end - min(starts)).total_seconds())

def learning_curves(trials: list[FrozenTrial]) -> list[Curve]:
    """Every trial that reported an epoch (WAITING ones have not), by number."""
    out = []
    for t in trials:
        if t.intermediate_values:
            steps = sorted(t.intermediate_values)
            out.append(Curve(t.number, t.state.name, steps, [t.intermediate_values[s] for s in steps]))
    return out


@dataclass(frozen=True)
class Segment:
    """One PBT segment as the family tree draws it: a member's epochs after `start` up to `end`."""

    trial: int
    member: int
    start: int  # the epoch it resumed after (0 for a member's first segment)
    end: int
    value: float | None  # the metric at its last epoch
    exploited_member: int | None  # the member whose weights it took at `start`, if any


def family_tree(trials: list[FrozenTrial]) -> list[Segment]:
    """PBT: every finished or running segment of every member, in trial order (FAIL attempts left out: their
    retries stand for them)."""
    out = []
    for t in trials:
        if MEMBER_ATTR not in t.user_attrs or t.state == TrialState.FAIL or not t.intermediate_values:
            continue
        start = t.user_attrs.get(CONTINUED_AT_ATTR, 0)
        end = max(t.intermediate_values)
        out.append(Segment(t.number, int(t.user_attrs[MEMBER_ATTR]), start, end, t.intermediate_values[end],
                           t.user_attrs.get(EXPLOITED_MEMBER_ATTR)))
    return out
