"""The search space as Optuna distributions, and sampled parameters decoded into a trial plan.

Parameter names: ``ratio.<group>`` for each pruning group (or, with cost targets, ``alloc.<group>`` weights;
the trial's ``target`` is given, not sampled), ``scorer``, ``round_to`` (when the space lists several),
``recovery.<name>`` for searchable recovery settings (lr, temperature, alpha; never steps, which the rung ladder
decides), ``drop.<block>`` (true/false) for each residual block depth pruning may drop. The same dict of
distributions serves both backends' ``ask`` (:func:`autoprune.engine.ask_tell.ask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from autoprune.config import ChoiceParam, RangeParam, RecoveryConfig, SearchSpaceConfig
from autoprune.errors import AutopruneError


@dataclass(frozen=True)
class TrialPlan:
    """What a trial runs: per-group ratios, the scorer, the recovery settings, the blocks it drops, and (for a
    study with cost targets) the target its allocation was placed on."""

    ratios: dict[str, float]
    scorer: str
    recovery: RecoveryConfig
    dropped: tuple[str, ...] = ()
    target: float | None = None
    round_to: int | None = None


# (allocation weights, target, round_to) -> per-group ratios placed on the target
Placer = Callable[[Mapping[str, float], float, int | None], Mapping[str, float]]


def trial_target(number: int, user_attrs: Mapping[str, Any], targets: Sequence[float]) -> float:
    """The cost target of trial ``number``: the one it was given (a warm start or continuation is enqueued with
    its own, and :func:`autoprune.engine.ask_tell.ask` stores every trial's as the user attribute ``target``), else
    ``targets`` in turn by trial number (the study's ``targets.turns``): the rule a new trial's target is chosen by
    unless the study sets ``targets.balance`` (then :func:`balanced_target`), and the fallback for a trial another
    worker has just asked for and not yet labelled.

    >>> trial_target(4, {}, [1.5, 2.0, 3.0]), trial_target(4, {"target": 3}, [1.5, 2.0, 3.0])
    (2.0, 3.0)
    """
    given = user_attrs.get("target")
    return float(given if given is not None else targets[number % len(targets)])


def balanced_target(counts: Mapping[float, int], turns: Sequence[float]) -> float:
    """The target a new candidate goes to: the one whose new candidates so far (``counts``) fall furthest short of
    its share of ``turns`` (the study's ``targets.turns``, a target repeated for its share), ties to the earliest in
    ``turns``. Continuations (promotions) are not new candidates and are not counted, so a target whose candidates
    are often promoted does not take the other targets' places: with trial numbers in turn, the continuations of
    benchmark v5 took 16 of the 3x target's places and 8 of the 1.5x target's (17 and 26 candidates).

    With no continuations this is the turn by trial number:

    >>> turns = [3.0, 1.5, 2.0, 3.0]
    >>> picked, counts = [], {}
    >>> for n in range(8):
    ...     t = balanced_target(counts, turns)
    ...     counts[t] = counts.get(t, 0) + 1
    ...     picked.append(t == turns[n % len(turns)])
    >>> all(picked)
    True
    >>> balanced_target({1.5: 9, 2.0: 7, 3.0: 5}, [1.5, 2.0, 3.0])
    3.0
    """
    share = {t: turns.count(t) for t in turns}
    first = {t: turns.index(t) for t in share}
    return min(share, key=lambda t: (counts.get(t, 0) / share[t], first[t]))


def _range(p: RangeParam) -> BaseDistribution:
    return FloatDistribution(p.low, p.high, log=p.log, step=p.step)


def distributions(space: SearchSpaceConfig, groups: list[str], droppable: Sequence[str] = (),
                  highs: Mapping[str, float] | None = None,
                  targets: Sequence[float] | None = None) -> dict[str, BaseDistribution]:
    """Optuna distributions for every searchable parameter (fixed values are not parameters); a ``drop.<block>``
    choice for each block depth pruning may drop. ``highs``: per-group upper ratios from a sensitivity scan.
    With cost ``targets``, each group gets an allocation weight ``alloc.<group>`` instead of a ratio; the
    target is not sampled but given to each trial in turn (:func:`autoprune.engine.ask_tell.ask`), so every
    target gets its share of the trials."""
    out: dict[str, BaseDistribution] = {}
    for g in groups:
        if targets:
            out[f"alloc.{g}"] = FloatDistribution(space.allocation.low, space.allocation.high)
            continue
        high = max(space.ratio.low, min(space.ratio.high, (highs or {}).get(g, space.ratio.high)))
        out[f"ratio.{g}"] = _range(space.ratio.model_copy(update={"high": high}))
    for block in droppable:
        out[f"drop.{block}"] = CategoricalDistribution([False, True])
    if len(space.scorers) > 1:
        out["scorer"] = CategoricalDistribution(space.scorers)
    if space.round_to_choices:
        out["round_to"] = CategoricalDistribution(space.round_to_choices)
    for name, p in space.recovery.items():
        if isinstance(p, RangeParam):
            out[f"recovery.{name}"] = _range(p)
        elif isinstance(p, ChoiceParam):
            out[f"recovery.{name}"] = CategoricalDistribution(p.choices)
    return out


def decode(params: Mapping[str, Any], space: SearchSpaceConfig, groups: list[str], recovery: RecoveryConfig,
           targets: Sequence[float] | None = None, place: Placer | None = None) -> TrialPlan:
    """Sampled parameters -> the plan a trial runs; fixed search-space values fill in the rest. With cost
    ``targets``, the allocation weights are turned into ratios on the trial's target by ``place``."""
    kind = "alloc" if targets else "ratio"
    missing = [g for g in groups if f"{kind}.{g}" not in params]
    if missing:
        raise AutopruneError(f"parameters lack {kind} values for groups {missing}")
    target = None
    round_to = int(params["round_to"]) if "round_to" in params else space.fixed_round_to
    if targets:
        if place is None:
            raise ValueError("a study with targets needs a placer to turn allocations into ratios")
        target = float(params.get("target", targets[0]))
        ratios = dict(place({g: float(params[f"alloc.{g}"]) for g in groups}, target, round_to))
    else:
        ratios = {g: float(params[f"ratio.{g}"]) for g in groups}
    scorer = str(params.get("scorer", space.scorers[0]))
    overrides: dict[str, Any] = {}
    for name, p in space.recovery.items():
        if isinstance(p, (RangeParam, ChoiceParam)):
            overrides[name] = params[f"recovery.{name}"]
        else:
            overrides[name] = p
    rec = recovery.model_copy(update={k: float(v) for k, v in overrides.items()})
    dropped = tuple(k[len("drop."):] for k, v in params.items() if k.startswith("drop.") and bool(v))
    return TrialPlan(ratios, scorer, RecoveryConfig.model_validate(rec.model_dump()), dropped, target, round_to)
