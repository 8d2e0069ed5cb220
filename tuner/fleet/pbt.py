"""Population-based training (Jaderberg et al. 2017) over tuner's checkpoints, one generation at a time.

`population` members train at once across the workers, each in segments of `interval` epochs. A member's segment
ends PRUNED with `paused_at_epoch` (as an ASHA pause) until the last one, which trains to task.epochs and ends
COMPLETE. Once every member has reached epoch e, the first worker to ask for work decides the whole generation
under the budget lock: members are ranked by their value at e; each member in the bottom `quantile` *exploits* a
member drawn from the top `quantile` (its checkpoint at e — weights, optimizer and scheduler state — is copied
over the member's own) and *explores*: each hyperparameter named in `perturb` is resampled from the space with
probability `resample_probability`, else multiplied by 0.8 or 1.2 (within the space's bounds). Architecture
knobs are never perturbed: exploiting takes the donor's along with its weights. Every member's next segment is
then queued: a new trial with its (new) params and the user attributes `pbt_member`, `lineage` (the member's
checkpoint folder), `continues` (the member's previous segment), `continued_at_epoch`, and, after an exploit,
`exploited_trial` (the donor's segment whose weights it took) and `exploited_member`. The curve a segment
replays is the history of the weights it holds, so the winner's trials, followed back through `exploited_trial`
(else `continues`), give its whole hyperparameter schedule (`schedule()`).

Why a generation at a time: every member is compared at the same epoch, and every donor's checkpoint at e is
still on disk when it is copied (no member trains past e before the generation is decided).
"""

from __future__ import annotations

import math
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.fleet.asha import CONTINUED_AT_ATTR, CONTINUES_ATTR, LINEAGE_ATTR, PAUSED_ATTR
from tuner.fleet.lineage import lineage_number
from tuner.spec.config import StudyConfig
from tuner.store.place import StudyPlace

MEMBER_ATTR = "pbt_member"  # user attribute of every PBT trial: its member, 0 .. population-1
EXPLOITED_TRIAL_ATTR = "exploited_trial"  # the donor's segment whose checkpoint this segment resumed
EXPLOITED_MEMBER_ATTR = "exploited_member"
PERTURB_FACTORS = (0.8, 1.2)


class PbtPruner(optuna.pruners.BasePruner):
    """Ends each segment: True after every `interval` epochs below task.epochs (the trial is paused there)."""

    pauses = True

    def __init__(self, interval: int, epochs: int):
        self.interval, self.epochs = interval, epochs

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        return step is not None and step % self.interval == 0 and step < self.epochs


@dataclass(frozen=True)
class Segment:
    """One member's next segment: its params, and the trial whose checkpoint it resumes."""

    member: int
    previous: FrozenTrial  # the member's paused segment
    params: dict[str, Any]
    donor: FrozenTrial | None = None  # exploit: the top member's segment whose weights it takes


def make_pbt_pruner(config: StudyConfig) -> PbtPruner:
    return PbtPruner(config.pruner["interval"], config.task.epochs)


def latest_segments(trials: list[FrozenTrial]) -> dict[int, FrozenTrial]:
    """member -> its newest segment that did not fail (a FAIL's retry, queued or running, stands for it)."""
    latest: dict[int, FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if MEMBER_ATTR in t.user_attrs and t.state != TrialState.FAIL:
            latest[int(t.user_attrs[MEMBER_ATTR])] = t
    return latest


def _waiting_for_decision(t: FrozenTrial) -> bool:
    return t.state == TrialState.PRUNED and PAUSED_ATTR in t.user_attrs


def members_started(trials: list[FrozenTrial]) -> int:
    return len(latest_segments(trials))


def pending(trials: list[FrozenTrial], config: StudyConfig) -> bool:
    """Whether some member still has epochs to train (its segment paused, waiting for the generation)."""
    latest = latest_segments(trials)
    return len(latest) < config.pruner["population"] or any(_waiting_for_decision(t) for t in latest.values())


def _quantile_size(population: int, quantile: float) -> int:
    """How many members are 'bottom' (and 'top'): ceil(population * quantile), at most half (as Ray Tune's)."""
    return min(math.ceil(population * quantile), population // 2)


def _explore(params: Mapping[str, Any], config: StudyConfig, rng: random.Random) -> dict[str, Any]:
    """The donor's params with each `perturb` one resampled or scaled by 0.8 / 1.2, kept inside the space."""
    out = dict(params)
    specs = {p.name: p for p in config.space}
    for name in config.pruner["perturb"]:
        if name not in out:
            continue
        spec = specs[name]
        if spec.choices is not None:
            out[name] = rng.choice(list(spec.choices)) if rng.random() < config.pruner["resample_probability"] \
                else out[name]
            continue
        if rng.random() < config.pruner["resample_probability"]:
            low, high = float(spec.low), float(spec.high)
            value = math.exp(rng.uniform(math.log(low), math.log(high))) if spec.log else rng.uniform(low, high)
        else:
            value = out[name] * rng.choice(PERTURB_FACTORS)
        value = min(max(value, spec.low), spec.high)
        out[name] = round(value) if isinstance(spec.low, int) and isinstance(spec.high, int) else value
    return out


def next_generation(trials: list[FrozenTrial], config: StudyConfig) -> list[Segment]:
    """Every member's next segment, once all members are paused at the same epoch; [] until then."""
    latest = latest_segments(trials)
    population = config.pruner["population"]
    if len(latest) < population or not all(_waiting_for_decision(t) for t in latest.values()):
        return []
    epochs = {t.user_attrs[PAUSED_ATTR] for t in latest.values()}
    if len(epochs) != 1:  # cannot happen with generations; never compare members at different epochs
        return []
    epoch = epochs.pop()
    maximize = config.study.direction == "maximize"
    ranked = sorted(latest, key=lambda m: latest[m].intermediate_values[epoch], reverse=maximize)
    k = _quantile_size(population, config.pruner["quantile"])
    top, bottom = ranked[:k], set(ranked[len(ranked) - k:]) if k else set()
    # seeded by the study seed and the epoch: the same population, the same decisions
    rng = random.Random(f"{config.study.seed}:{epoch}")
    segments = []
    for member in sorted(latest):
        previous = latest[member]
        if member in bottom:
            donor = latest[rng.choice(top)]
            segments.append(Segment(member, previous, _explore(donor.params, config, rng), donor))
        else:
            segments.append(Segment(member, previous, dict(previous.params)))
    return segments


def queue_generation(study: optuna.Study, segments: list[Segment], place: StudyPlace) -> None:
    """Copy each exploiting member's donor checkpoint over its own, and queue every member's next segment (call
    under the budget lock; the copies come first, so a queued segment always finds the weights it should)."""
    for s in segments:
        if s.donor is not None:
            _copy_checkpoint(place, lineage_number(s.donor), lineage_number(s.previous),
                             s.previous.user_attrs[PAUSED_ATTR])
    for s in segments:
        attrs = {MEMBER_ATTR: s.member, LINEAGE_ATTR: lineage_number(s.previous), CONTINUES_ATTR: s.previous.number,
                 CONTINUED_AT_ATTR: s.previous.user_attrs[PAUSED_ATTR]}
        if s.donor is not None:
            attrs |= {EXPLOITED_TRIAL_ATTR: s.donor.number, EXPLOITED_MEMBER_ATTR: int(s.donor.user_attrs[MEMBER_ATTR])}
        study.enqueue_trial(s.params, user_attrs=attrs)


def _copy_checkpoint(place: StudyPlace, donor_lineage: int, member_lineage: int, epoch: int) -> None:
    source = place.trial(donor_lineage).path / f"epoch-{epoch:04d}.pt"
    target_dir = place.trial(member_lineage).path
    target_dir.mkdir(parents=True, exist_ok=True)
    for newer in target_dir.glob("epoch-*.pt"):  # the member's own weights at e (and before) are replaced
        newer.unlink()
    tmp = target_dir / f".tmp-exploit-{epoch:04d}.pt"
    shutil.copyfile(source, tmp)
    os.replace(tmp, target_dir / source.name)  # atomic: a reader sees no file or the whole donor's


def schedule(trial: FrozenTrial, trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """The hyperparameter schedule of the weights `trial` ends with: one entry per segment, first epoch first,
    following each segment back to the one whose checkpoint it resumed (the donor's after an exploit)."""
    by_number = {t.number: t for t in trials}
    chain, t = [], trial
    while t is not None:
        chain.append(t)
        back = t.user_attrs.get(EXPLOITED_TRIAL_ATTR, t.user_attrs.get(CONTINUES_ATTR))
        t = by_number.get(back) if back is not None else None
    out = []
    for seg in reversed(chain):
        start = seg.user_attrs.get(CONTINUED_AT_ATTR, 0)
        end = seg.user_attrs.get(PAUSED_ATTR, seg.last_step)
        out.append({"trial": seg.number, "member": seg.user_attrs.get(MEMBER_ATTR), "from_epoch": start + 1,
                    "to_epoch": end, "params": seg.params})
    return out
