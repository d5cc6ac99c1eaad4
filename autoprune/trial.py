"""One trial: sampled parameters -> prune a copy -> recover -> measure. Knows nothing of Optuna or Ray."""

from __future__ import annotations

import copy
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from autoprune.context import StudyContext
from autoprune.depth import drop_blocks
from autoprune.distill import finetune, recalibrate_bn
from autoprune.fidelity import rung_ladder
from autoprune.compare import encode_hits
from autoprune.measure import correct, count_macs, count_params, latency_ms
from autoprune.pruning import PrunePlan, prune_with_plan
from autoprune.record import Fidelity, Metrics, PlanRecord, TrialRecord
from autoprune.saving import save_pruned
from autoprune.space import TrialPlan

Promoter = Callable[[Metrics, int, "float | None"], bool]  # (metrics at a rung, its steps, target) -> go on?


class _Clock:
    """Seconds per phase (prune, bn_calibration, finetune, evaluate, measure), summed over repeated phases."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t

    def done(self) -> dict[str, float]:
        return {**self.timings, "total": time.perf_counter() - self.start}


def run_trial(ctx: StudyContext, params: Mapping[str, Any], seed: int = 0, save_dir: Path | None = None,
              promote: Promoter | None = None) -> TrialRecord:
    """Run one trial with sampled ``params`` (see :mod:`autoprune.space`) and return its record.

    The trial climbs the study's rungs (:func:`autoprune.fidelity.rung_ladder`): BN re-calibration only (with
    ``fidelity.bn_rung``), the short recovery, and ``fidelity.promote_steps`` more steps (continuing the cached
    stream). After each rung but the last, ``promote(metrics at that rung, rung steps, target)`` says whether it
    goes on; the last rung of a ladder of several is scored on the whole validation split, the others on the
    seeded subset. Raises FloatingPointError on a non-finite fine-tune loss and AutopruneError where the plan
    cannot apply; backends record either (and any exception from a user model) as a failed trial.
    """
    cfg = ctx.study.config
    plan: TrialPlan = ctx.decode(params)
    rec = plan.recovery
    clock = _Clock()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    with clock.phase("prune"):
        model, pplan = _prune(ctx, plan)
    with clock.phase("bn_calibration"), ctx.lock.shared():
        recalibrate_bn(model, ctx.data.train, rec.bn_recalibration_batches, rec.batch_size, generator=gen)

    def recover(steps: int, start: int) -> None:
        with clock.phase("finetune"):
            finetune(model, ctx.data.train, steps=steps, settings=rec, teacher=ctx.base, augment=cfg.data.augment,
                     generator=gen, step_guard=ctx.lock.shared, stream=ctx.stream if rec.teacher_cache else None,
                     stream_start=start)

    def evaluate(split) -> tuple[float, str]:
        """Accuracy on ``split`` and which of its images were right (kept, so that two trials can be compared
        image by image at a rung both reached, without their models)."""
        with clock.phase("evaluate"), ctx.lock.shared():
            right = correct(model, split, cfg.data.batch_size)
        return int(right.sum()) / max(1, len(split)), encode_hits(right.tolist())

    ladder = rung_ladder(rec.steps, cfg.fidelity.promote_steps, cfg.fidelity.bn_rung)
    scores: dict[int, float] = {}
    images: dict[int, int | None] = {}
    hits: dict[int, str] = {}
    metrics: Metrics | None = None
    for i, steps in enumerate(ladder):
        done = max(scores, default=0)
        if steps > done:
            recover(steps - done, done)
        split = ctx.data.val if 0 < i == len(ladder) - 1 else ctx.short_val
        (scores[steps], hits[steps]), images[steps] = evaluate(split), len(split)
        if metrics is None:
            with clock.phase("measure"):
                metrics = _measure(ctx, model, scores[steps])
        metrics = replace(metrics, accuracy=scores[steps])
        if i == len(ladder) - 1 or promote is None or not promote(metrics, steps, plan.target):
            break
    fidelity = Fidelity(scores, images, hits)
    model_file = _save(ctx, model, pplan, plan, save_dir)
    recorded = PlanRecord(pplan.scorer, pplan.ratios, pplan.round_to, tuple(plan.dropped), rec.model_dump(),
                          fidelity.steps, fidelity.steps * rec.batch_size, seed, ctx.latency_method,
                          "cached logits" if ctx.stream is not None and rec.teacher_cache
                          else "teacher forward every step", plan.target)
    return TrialRecord(metrics, recorded, fidelity, clock.done(), model_file)


def _prune(ctx: StudyContext, plan: TrialPlan) -> tuple[nn.Module, PrunePlan]:
    """A pruned copy of the base (the plan's dropped blocks replaced by the identity first), trainable."""
    base = drop_blocks(copy.deepcopy(ctx.base), plan.dropped) if plan.dropped else ctx.base
    model, pplan = prune_with_plan(base, ctx.example, plan.ratios, plan.scorer, layout=ctx.layout,
                                   round_to=ctx.study.space.round_to, calibration=ctx.calibration,
                                   inplace=bool(plan.dropped))
    for p in model.parameters():
        p.requires_grad_(True)
    return model, pplan


def _measure(ctx: StudyContext, model: nn.Module, acc: float) -> Metrics:
    m = ctx.study.config.measure
    with ctx.lock.exclusive():
        lat = latency_ms(model, ctx.latency_input, m.latency_repeats, m.latency_warmup)
    return Metrics(acc, count_macs(model, ctx.example), count_params(model), lat)


def _save(ctx: StudyContext, model: nn.Module, pplan: PrunePlan, plan: TrialPlan, save_dir: Path | None) -> str | None:
    if save_dir is None:
        return None
    path = Path(save_dir) / f"{uuid.uuid4().hex}.pt"
    save_pruned(model, pplan.to_dict()["history"], path, {"input_shape": list(ctx.example.shape),
                                                           "ratios": pplan.ratios, "scorer": pplan.scorer,
                                                           "dropped": list(plan.dropped)})
    return str(path)
