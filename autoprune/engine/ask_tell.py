"""One way to tell: what every backend does around a trial, in one place.

Both backends (:mod:`autoprune.engine.backends.optuna_backend` and :mod:`autoprune.engine.backends.ray_backend`) build their
sampler here, learn what a trial is to run (parameters, cost target, seed) with :func:`ask`, store a trial's
:class:`~autoprune.engine.record.TrialRecord` with :func:`tell_result` or its failure with :func:`tell_failure`, promote
with :func:`enqueue_due`, and fail a trial a dead process left RUNNING with :func:`fail_running`; :func:`records`
(from :mod:`autoprune.engine.storage`) reads a study's trials back as records. Only Optuna's public API is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from autoprune.config import Study
from autoprune.engine.allocation_sampler import Placing
from autoprune.engine.fidelity import due, rung_ladder
from autoprune.engine.record import Failure, TrialRecord
from autoprune.engine.samplers import make_sampler
from autoprune.engine.space import balanced_target, trial_target
from autoprune.engine.storage import records

if TYPE_CHECKING:
    from autoprune.engine.context import StudyContext

_SEED_STRIDE = 7919  # a prime: worker w of a study draws from seed + stride * w + (trials so far)


def study_sampler(ctx: StudyContext, seed: int, ost: optuna.Study | None = None,
                  worker: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded from ``seed``, the worker's index and how far the study already is, so that
    a resumed run or a second worker does not replay the random start-up points of the first (the allocation
    sampler's screen is keyed by the study's own seed instead, and continues its sequence)."""
    done = len(ost.get_trials(deepcopy=False)) if ost is not None else 0
    return make_sampler(ctx.study.config.sampler, seed + _SEED_STRIDE * worker + done, placing(ctx))


def placing(ctx: StudyContext) -> Placing | None:
    """What the allocation sampler needs of a study with cost targets (None without targets)."""
    if not ctx.targets:
        return None
    weights = {n: d for n, d in ctx.distributions().items() if n.startswith("alloc.")}
    return Placing(tuple(float(t) for t in ctx.targets), weights, ctx.placer().ratios, ctx.study.config.seed,
                   tuple(float(t) for t in ctx.turns))


@dataclass(frozen=True)
class Asked:
    """What a backend runs for one Optuna trial.

    ``params``: the sampled parameters, with the trial's cost target as ``target`` in a study with targets (the
    form :func:`autoprune.engine.trial.run_trial` takes); ``seed``: the trial's seed; ``continues``: the trial number of
    the candidate this trial takes one rung further (a deferred promotion), None for a new candidate.
    """

    params: dict[str, Any]
    seed: int
    continues: int | None = None

    @property
    def target(self) -> float | None:
        return self.params.get("target")


def ask(trial: optuna.Trial, dists: dict[str, BaseDistribution], targets: Sequence[float] | None,
        seed: int, balance: bool = False) -> Asked:
    """Everything a running ``trial`` is to do: its parameters (sampled, or an enqueued trial's fixed ones), its
    cost target (stored on the trial as the user attribute ``target``), its seed (``seed`` plus the trial number)
    and the candidate it continues (``balance``: the study's ``targets.balance``). Both backends ask here.

    Example:
        >>> ost = optuna.create_study()
        >>> asked = ask(ost.ask(), {"ratio.g": FloatDistribution(0.0, 0.5)}, [2.0], seed=10)
        >>> sorted(asked.params), asked.target, asked.seed, asked.continues
        (['ratio.g', 'target'], 2.0, 10, None)
    """
    target = _trial_target(trial, targets, balance)  # first: a sampler may read it (the allocation sampler does)
    params = _suggest_all(trial, dists)
    if target is not None:
        params["target"] = target
    return Asked(params, seed + trial.number, _continued(trial))


def _suggest_all(trial: optuna.Trial, dists: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Sample every parameter (an enqueued retry or warm start gets its fixed values back)."""
    for name, d in dists.items():
        if isinstance(d, FloatDistribution):
            trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, IntDistribution):
            trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, CategoricalDistribution):
            trial.suggest_categorical(name, d.choices)
        else:
            raise TypeError(f"unsupported distribution {type(d).__name__} for {name}")
    return dict(trial.params)


def _trial_target(trial: optuna.Trial, targets: Sequence[float] | None, balance: bool = False) -> float | None:
    """The cost target of ``trial``, stored on it as the user attribute ``target``: an enqueued trial's own (a warm
    start, a continuation, a retry), else with ``balance`` the target whose new candidates are furthest below its
    share (:func:`autoprune.engine.space.balanced_target`), without it the targets in turn by trial number
    (:func:`autoprune.engine.space.trial_target`): a sampler told accuracy and MACs would otherwise crowd the
    cheapest target."""
    if not targets:
        return None
    given = trial.user_attrs.get("target")
    if given is not None:
        return float(given)
    if balance:
        target = balanced_target(new_candidates(trial.study.get_trials(deepcopy=False), trial.number), targets)
    else:
        target = trial_target(trial.number, trial.user_attrs, targets)
    trial.set_user_attr("target", target)
    return target


def new_candidates(trials: Sequence[optuna.trial.FrozenTrial], asking: int) -> dict[float, int]:
    """Per cost target, the trials other than ``asking`` that started a candidate there (every state: a failed
    trial had its turn); continuations and trials not yet labelled with a target are not counted."""
    counts: dict[float, int] = {}
    for t in trials:
        target = t.user_attrs.get("target")
        if t.number != asking and target is not None and _continued(t) is None:
            counts[float(target)] = counts.get(float(target), 0) + 1
    return counts


def tell_result(trial: optuna.Trial, record: TrialRecord, study: Study) -> list[float]:
    """Store ``record`` on the running ``trial`` (user attributes and constraint values); return the objective
    values to tell Optuna: accuracy at the first rung, which every trial has, so the sampler learns from scores
    of one rung only (the higher rungs' scores are in the record)."""
    for key, value in record.to_user_attrs().items():
        trial.set_user_attr(key, value)
    for name, value in record.constraint_values(study.config.constraints).items():
        trial.set_constraint(name, value)
    return record.short_point(study.config.objectives)


def tell_failure(trial: optuna.Trial, failure: Failure) -> None:
    """Store why the running ``trial`` failed (the backend then marks it FAIL)."""
    for key, value in TrialRecord(failure=failure).to_user_attrs().items():
        trial.set_user_attr(key, value)


def enqueue_due(ost: optuna.Study, study: Study) -> list[int]:
    """Enqueue a continuation trial for every candidate now due one rung further (:func:`autoprune.engine.fidelity.due`),
    per cost target; returns the candidates' trial numbers. Called after each trial by both backends. A
    continuation has its candidate's parameters and user attributes ``continues`` (the candidate's trial number),
    ``target`` and ``warm_start`` (:func:`enqueued_attrs`); Optuna hands waiting trials out before sampling new
    ones, so a worker that asks for work takes a due promotion first. With the allocation sampler, the first rung
    is ranked on its surrogate's de-noised scores. A candidate already continued by a waiting or
    running trial is skipped."""
    fid = study.config.fidelity
    ladder = rung_ladder(study.config)
    if len(ladder) < 2:
        return []
    pending = ost.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    claimed = {n for t in pending if (n := _continued(t)) is not None}
    done = records(ost)
    targets = study.config.targets.values if study.config.targets else [None]
    pinned = study.config.targets.objective if study.config.targets else None
    denoised = ost.sampler.denoised(ost) if hasattr(ost.sampler, "denoised") else None  # the allocation sampler's
    enqueued = []
    for target in targets:
        target = float(target) if target is not None else None
        while (r := due(done, ladder, list(study.config.objectives), study.directions, fid.eta, target, claimed,
                        pinned, denoised, fid.min_distance)):
            attrs = enqueued_attrs(target, r.warm_start, continues=r.number)
            ost.enqueue_trial(dict(r.params), user_attrs=attrs, skip_if_exists=False)
            claimed.add(r.number)
            enqueued.append(r.number)
    return enqueued


def enqueued_attrs(target: float | None, warm_start: str | None, continues: int | None = None) -> dict[str, Any]:
    """The user attributes a trial is enqueued with, so that :func:`ask` gives them back: its cost target, and
    the baseline it is and the candidate it continues, as its record will store them (a continuation's record
    carries ``continues`` itself, :func:`autoprune.engine.trial.continue_trial`).

    >>> enqueued_attrs(2.0, "uniform", continues=4)
    {'warm_start': 'uniform', 'continues': 4, 'target': 2.0}
    """
    lineage = TrialRecord(warm_start=warm_start, continues=continues).to_user_attrs()
    return {**lineage, **({"target": float(target)} if target is not None else {})}


def _continued(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int | None:
    """The trial number ``trial`` continues (a deferred promotion), or None for a new candidate."""
    return TrialRecord.from_user_attrs(trial.user_attrs).continues


def fail_running(ost: optuna.Study, storage: optuna.storages.BaseStorage, number: int, reason: str,
                 retry: bool = True) -> None:
    """Mark RUNNING trial ``number`` FAIL with ``reason`` (its process is gone) and, with ``retry``, enqueue
    its parameters again."""
    study_id = storage.get_study_id_from_name(ost.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    frozen = storage.get_trial(trial_id)
    storage.set_trial_user_attr(trial_id, "fail_reason", reason)
    ost.tell(number, state=TrialState.FAIL)
    if retry:
        was = TrialRecord.from_user_attrs(frozen.user_attrs)
        kept = enqueued_attrs(frozen.user_attrs.get("target"), was.warm_start, was.continues)
        ost.enqueue_trial(dict(frozen.params), user_attrs={"retry_of": number, **kept}, skip_if_exists=False)


__all__ = ["Asked", "ask", "enqueue_due", "enqueued_attrs", "fail_running", "records", "study_sampler", "tell_failure",
           "tell_result"]
