"""Warm start: the hand-set baselines become the study's first trials, so the search can only improve on them.

``uniform r``: every group at ratio r. ``global r``: torch-pruning's global pruning (group magnitude, one
threshold across all groups) at ratio r on the base model, read back as the fraction of each group's channels it
removed. Both are snapped to the search space's ratio grid and enqueued once, when the study is new. With cost
targets, the uniform and global allocations, and one anchor allocation per power in ``warm_start.anchors`` (weights
proportional to a power of each group's MACs per parameter), are placed on every target.
"""

from __future__ import annotations

from typing import Any

import optuna
import torch_pruning as tp
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from torch import nn

from autoprune.engine.ask_tell import enqueued_attrs
from autoprune.engine.context import StudyContext
from autoprune.engine.storage import StudyAttrs
from autoprune.metrics.costs import count_params
from autoprune.models.copying import copy_model
from autoprune.pruning.graph_hints import after_pruning, pruner_kwargs
from autoprune.pruning.structural import out_width, prune_with_plan


def snap(value: float, dist: FloatDistribution) -> float:
    """The value on ``dist``'s grid (its step, if any) nearest ``value``, clipped to its range.

    >>> snap(0.337, FloatDistribution(0.0, 0.7, step=0.05))
    0.35
    """
    v = min(max(value, dist.low), dist.high)
    if dist.step:
        v = dist.low + round((v - dist.low) / dist.step) * dist.step
        v = min(v, dist.high)
    return round(v, 10)


def global_prune(ctx: StudyContext, ratio: float) -> nn.Module:
    """A copy of the base pruned by torch-pruning's global pruning (Group-L1 ranked across all of the layout's
    groups at once) at ``ratio``; the layers the layout keeps whole stay whole."""
    model = copy_model(ctx.base)
    modules = dict(model.named_modules())
    ignored = [modules[n] for n in ctx.layout.ignored if n in modules]
    pruner = tp.pruner.MetaPruner(model, ctx.example, importance=tp.importance.GroupMagnitudeImportance(p=1),
                                  pruning_ratio=ratio, global_pruning=True, ignored_layers=ignored,
                                  **pruner_kwargs(model, ctx.study.space.fixed_round_to))
    pruner.step()
    model.zero_grad(set_to_none=True)
    return after_pruning(model)


def global_ratios(ctx: StudyContext, ratio: float) -> dict[str, float]:
    """Per-group ratios that torch-pruning's global group-magnitude pruning at ``ratio`` arrives at."""
    before = dict(ctx.base.named_modules())
    after = dict(global_prune(ctx, ratio).named_modules())
    out = {}
    for g, roots in ctx.layout.roots.items():
        total = sum(out_width(before[r]) for r in roots)
        kept = sum(out_width(after[r]) for r in roots)
        out[g] = (total - kept) / total if total else 0.0
    return out


def global_at(ctx: StudyContext, target: float, tolerance: float = 0.005,
              steps: int = 20) -> tuple[float, dict[str, float]]:
    """(global ratio, per-group ratios) of torch-pruning's global Group-L1 pruning at the ratio whose predicted
    reduction (MACs, or latency for latency targets: :meth:`StudyContext.reduction`) is ``target``, bisected to
    within ``tolerance`` (else the closest met): the global baseline's own structure at that target
    (:func:`global_prune` at that ratio builds it)."""
    lo, hi, best, miss = 0.0, 0.95, (0.0, {}), float("inf")
    for _ in range(steps):
        mid = (lo + hi) / 2
        ratios = global_ratios(ctx, mid)
        red = ctx.reduction(ratios)
        if abs(red / target - 1) < miss:
            best, miss = (mid, ratios), abs(red / target - 1)
        if miss <= tolerance:
            break
        lo, hi = (mid, hi) if red < target else (lo, mid)
    return best


def _allocation(ratios: dict[str, float], low: float, high: float) -> dict[str, float]:
    """Per-group ratios as allocation weights of the same shape, scaled so the largest is ``high``.

    >>> _allocation({"a": 0.4, "b": 0.2, "c": 0.0}, 0.05, 1.0)
    {'a': 1.0, 'b': 0.5, 'c': 0.05}
    """
    top = max(ratios.values(), default=0.0)
    return {g: (min(max(high * r / top, low), high) if top > 0 else high) for g, r in ratios.items()}


def intensity(ctx: StudyContext) -> dict[str, float]:
    """Per group, the MACs per parameter its pruning saves (the group pruned alone at half its channels): high for
    the early, high-resolution layers, where a parameter costs the most compute."""
    base_params = count_params(ctx.base)
    out = {}
    for g in ctx.groups:
        macs = ctx.cost.base - ctx.cost.macs({g: 0.5})
        pruned = prune_with_plan(ctx.base, ctx.example, {g: 0.5}, "l1", layout=ctx.layout,
                                 round_to=ctx.study.space.fixed_round_to)[0]
        out[g] = macs / max(1, base_params - count_params(pruned))
    return out


def anchor(weights_from: dict[str, float], power: float, low: float, high: float) -> dict[str, float]:
    """Allocation weights proportional to ``weights_from ** power``, the largest ``high``, none below ``low``.

    >>> anchor({"a": 4.0, "b": 1.0}, 0.5, 0.0, 1.0)
    {'a': 1.0, 'b': 0.5}
    """
    raised = {g: v**power for g, v in weights_from.items()}
    top = max(raised.values())
    return {g: min(high, max(low, high * v / top)) for g, v in raised.items()}


def _baselines(ctx: StudyContext, dists: dict[str, BaseDistribution]) -> list[tuple[dict[str, Any], str, str]]:
    """(ratio or allocation parameters, preferred scorer, "uniform" or "global") of each configured baseline.

    With cost targets, the uniform allocation and torch-pruning's global Group-L1 allocation bisected to each
    target (:func:`global_at`; its own structure there where the allocation's bounds allow it) are placed on
    every target, whatever ``warm_start`` lists; without targets, each configured ratio is one baseline."""
    ws, targets = ctx.study.space.warm_start, ctx.targets
    if targets:
        a = ctx.study.space.allocation
        uniform = {g: a.high for g in ctx.groups}
        per_mac = intensity(ctx) if ws.anchors and ctx.cost is not None else {}
        anchors = [(anchor(per_mac, p, a.low, a.high), f"anchor {p:g}") for p in ws.anchors if per_mac]
        return [p for t in targets for p in (
            ({**{f"alloc.{g}": w for g, w in uniform.items()}, "target": t}, "l1", "uniform"),
            ({**{f"alloc.{g}": w for g, w in _allocation(global_at(ctx, t)[1], a.low, a.high).items()}, "target": t},
             "group_l1", "global"),
            *(({**{f"alloc.{g}": w for g, w in weights.items()}, "target": t}, "l1", kind) for weights, kind in anchors))]
    out = []
    for kind, ratios, scorer in (("uniform", ws.uniform, "l1"), ("global", ws.global_, "group_l1")):
        for r in ratios:
            per_group = {g: r for g in ctx.groups} if kind == "uniform" else global_ratios(ctx, r)
            out.append(({f"ratio.{g}": snap(v, dists[f"ratio.{g}"]) for g, v in per_group.items()}, scorer, kind))
    return out


def warm_starts(ctx: StudyContext, dists: dict[str, BaseDistribution]) -> list[tuple[dict[str, Any], str]]:
    """(parameters, kind) of the configured baselines: only the ratio or allocation, target, scorer and
    round_to parameters (Optuna samples any other searchable parameter); kind is "uniform" or "global"."""
    scorers = ctx.study.space.scorers
    out = []
    for params, scorer, kind in _baselines(ctx, dists):
        if isinstance(dists.get("scorer"), CategoricalDistribution):
            params["scorer"] = scorer if scorer in scorers else scorers[0]
        if "round_to" in dists:  # the hand-set baseline rounds as the space's fixed value does
            params["round_to"] = ctx.study.space.fixed_round_to
        for name in dists:
            if name.startswith("drop."):
                params[name] = False
        out.append((params, kind))
    return out


def warm_start_params(ctx: StudyContext, dists: dict[str, BaseDistribution]) -> list[dict[str, Any]]:
    """The parameter sets of :func:`warm_starts`."""
    return [params for params, _ in warm_starts(ctx, dists)]


def enqueue_warm_start(ost: optuna.Study, ctx: StudyContext, dists: dict[str, BaseDistribution]) -> int:
    """Enqueue the baselines as the first trials of a new study (idempotent across workers); returns how many."""
    if StudyAttrs.from_study(ost).warm_started or ost.get_trials(deepcopy=False):
        return 0
    baselines = warm_starts(ctx, dists)
    ost.set_user_attr("warm_started", len(baselines))
    for params, kind in baselines:  # the target is the trial's, not a sampled parameter (telling.ask)
        target = params.pop("target", None)
        # one allocation at several targets: several trials
        ost.enqueue_trial(params, user_attrs=enqueued_attrs(target, kind), skip_if_exists=False)
    return len(baselines)
