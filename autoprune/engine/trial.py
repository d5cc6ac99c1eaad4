"""One trial: sampled parameters -> prune a copy -> recover -> measure. Knows nothing of Optuna or Ray."""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from autoprune.config import RecoveryConfig
from autoprune.device import to_device
from autoprune.engine.context import StudyContext
from autoprune.engine.fidelity import next_rung, rung_ladder
from autoprune.engine.rebuild import rebuild
from autoprune.engine.record import Fidelity, Metrics, PlanRecord, TrialRecord
from autoprune.engine.space import TrialPlan
from autoprune.errors import AutopruneError
from autoprune.metrics.costs import correct, count_macs, count_params
from autoprune.metrics.latency import deploy, paired_latency
from autoprune.metrics.mcnemar import encode_hits
from autoprune.models.copying import copy_model
from autoprune.pruning.depth import drop_blocks
from autoprune.pruning.saving import save_pruned
from autoprune.pruning.structural import PrunePlan, prune_with_plan
from autoprune.train.distill import finetune, recalibrate_bn


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


def run_trial(ctx: StudyContext, params: Mapping[str, Any], seed: int = 0, save_dir: Path | None = None) -> TrialRecord:
    """Run one trial with sampled ``params`` (see :mod:`autoprune.engine.space`) and return its record.

    The candidate is pruned, BN re-calibrated and scored at the first rung of the study's ladder
    (:func:`autoprune.engine.fidelity.rung_ladder`): BN re-calibration only with ``fidelity.bn_rung``, else the short
    recovery. Higher rungs are later trials that continue it (:func:`continue_trial`). Raises FloatingPointError
    on a non-finite fine-tune loss and AutopruneError where the plan cannot apply; backends record either (and
    any exception from a user model) as a failed trial.
    """
    plan: TrialPlan = ctx.decode(params)
    rec = plan.recovery
    clock = _Clock()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    with clock.phase("prune"):
        model, pplan = _prune(ctx, plan)
    with clock.phase("bn_calibration"), ctx.lock.shared():
        recalibrate_bn(model, ctx.data.train, rec.bn_recalibration_batches, rec.batch_size, generator=gen)
    ladder = rung_ladder(ctx.study.config)
    _recover(ctx, model, clock, gen, ladder[0], 0, rec)
    score, images, hits = _evaluate(ctx, model, clock, ladder, ladder[0])
    with clock.phase("measure"):
        metrics = _measure(ctx, model, score)
    fidelity = Fidelity({ladder[0]: score}, {ladder[0]: images}, {ladder[0]: hits} if hits else {})
    model_file = _save(ctx, model, pplan.to_dict()["history"], pplan.ratios, pplan.scorer, plan.dropped, save_dir)
    recorded = PlanRecord(pplan.scorer, pplan.ratios, pplan.round_to, tuple(plan.dropped), rec.model_dump(),
                          fidelity.steps, fidelity.steps * rec.batch_size, seed, ctx.latency_method,
                          "cached logits" if ctx.stream is not None and rec.teacher_cache
                          else "teacher forward every step", plan.target, ctx.study.config.measure.latency_backend)
    return TrialRecord(metrics, recorded, fidelity, clock.done(), model_file)


def continue_trial(ctx: StudyContext, parent: TrialRecord, save_dir: Path | None = None) -> TrialRecord:
    """Take candidate ``parent`` one rung further: its saved model (else its plan re-applied and its recovery
    re-run) fine-tuned from its rung to the next, continuing the cached stream, and scored there (on the whole
    validation split at the top rung, on the seeded subset below it). A rung's fine-tune builds its own optimizer
    and schedule, so this is the computation the candidate would have run had it gone on at once. The record
    holds the parent's scores and the new one; its metrics are the parent's with the new accuracy."""
    ladder = rung_ladder(ctx.study.config)
    done = parent.fidelity.steps
    rung = next_rung(ladder, done)
    if rung is None:
        raise AutopruneError(f"trial {parent.number} is at the study's top rung ({done} steps): nothing to continue")
    clock = _Clock()
    rec = parent.plan.recovery_settings(ctx.study.config.recovery)
    gen = torch.Generator().manual_seed(parent.plan.seed)
    torch.manual_seed(parent.plan.seed)
    with clock.phase("prune"):
        model, history, loaded = _resume(ctx, parent)
    if not loaded:  # the saved model is gone: rebuild the candidate as its trial did
        with clock.phase("bn_calibration"), ctx.lock.shared():
            recalibrate_bn(model, ctx.data.train, rec.bn_recalibration_batches, rec.batch_size, generator=gen)
        _recover(ctx, model, clock, gen, done, 0, rec)
    _recover(ctx, model, clock, gen, rung - done, done, rec)
    score, images, hits = _evaluate(ctx, model, clock, ladder, rung)
    old = parent.fidelity
    fidelity = Fidelity({**old.scores, rung: score}, {**old.images, rung: images},
                        {**old.hits, rung: hits} if hits else old.hits)
    plan = replace(parent.plan, finetune_steps=rung, finetune_images=rung * rec.batch_size)
    model_file = _save(ctx, model, history, plan.ratios, plan.scorer, plan.dropped, save_dir)
    return TrialRecord(replace(parent.metrics, accuracy=score), plan, fidelity, clock.done(), model_file,
                       warm_start=parent.warm_start, continues=parent.number)


def _recover(ctx: StudyContext, model: nn.Module, clock: _Clock, gen: torch.Generator, steps: int, start: int,
             rec: RecoveryConfig | None = None) -> None:
    """``steps`` KD steps from position ``start`` of the cached stream (a fresh optimizer and schedule)."""
    if steps <= 0:
        return
    rec = rec or ctx.study.config.recovery
    with clock.phase("finetune"):
        finetune(model, ctx.data.train, steps=steps, settings=rec, teacher=ctx.base,
                 augment=ctx.study.config.data.augment, generator=gen, step_guard=ctx.lock.shared,
                 stream=ctx.stream if rec.teacher_cache else None, stream_start=start, loss_fn=ctx.loss)


def _evaluate(ctx: StudyContext, model: nn.Module, clock: _Clock, ladder: list[int], rung: int) -> tuple[float, int, str]:
    """Accuracy at ``rung`` (the seeded subset at the first rung of a ladder, the whole validation split at every
    later rung: the fine-tune rungs decide promotion and the pick, where a score on 1,000 images is too coarse),
    the images it used and which of them were right (kept, so that two trials can be compared image by image at a
    rung both reached, without their models). A study's own score function (``ctx.score``) is called on every rung
    instead, and leaves no image-by-image record."""
    if ctx.score is not None:
        with clock.phase("evaluate"), ctx.lock.shared():
            return ctx.score(model), len(ctx.data.val), ""
    split = ctx.data.val if len(ladder) > 1 and rung != ladder[0] else ctx.short_val
    with clock.phase("evaluate"), ctx.lock.shared():
        right = correct(model, split, ctx.study.config.data.batch_size)
    return int(right.sum()) / max(1, len(split)), len(split), encode_hits(right.tolist())


def _resume(ctx: StudyContext, parent: TrialRecord) -> tuple[nn.Module, list, bool]:
    """(model, pruning history, whether the saved fine-tuned model was loaded) for continuing ``parent``."""
    loaded = bool(parent.model_file) and Path(parent.model_file).is_file()
    model, history, _ = rebuild(ctx, parent, trained=True)
    for p in model.parameters():
        p.requires_grad_(True)
    return to_device(model, ctx.device), history, loaded


def _prune(ctx: StudyContext, plan: TrialPlan) -> tuple[nn.Module, PrunePlan]:
    """A pruned copy of the base (the plan's dropped blocks replaced by the identity first), trainable."""
    base = drop_blocks(copy_model(ctx.base), plan.dropped) if plan.dropped else ctx.base
    model, pplan = prune_with_plan(base, ctx.example, plan.ratios, plan.scorer, layout=ctx.layout,
                                   round_to=plan.round_to, calibration=ctx.calibration,
                                   inplace=bool(plan.dropped))
    for p in model.parameters():
        p.requires_grad_(True)
    return to_device(model, ctx.device), pplan  # pruned weights are new tensors: the device's layout again


def _measure(ctx: StudyContext, model: nn.Module, acc: float) -> Metrics:
    """Accuracy (given), MACs, params and the latency on the study's backend, measured paired with the base
    (:func:`autoprune.metrics.latency.paired_latency`): absolute ms, the ratio to the base in the same window, its
    dispersion and whether it is reliable."""
    m = ctx.study.config.measure
    with ctx.lock.shared():  # folded, traced or exported (the base once per worker): compute, but not timed
        deployed, base = deploy(model, ctx.latency_input, m.latency_backend), ctx.latency_base
    with ctx.lock.exclusive():
        lat = paired_latency(deployed, base, ctx.latency_input, m.latency_repeats, m.latency_warmup, m.latency_backend)
    return Metrics(acc, count_macs(model, ctx.example), count_params(model), lat.ms, lat.ratio, lat.dispersion,
                   lat.reliable)


def _save(ctx: StudyContext, model: nn.Module, history: list, ratios: Mapping[str, float], scorer: str,
          dropped, save_dir: Path | None) -> str | None:
    if save_dir is None:
        return None
    path = Path(save_dir) / f"{uuid.uuid4().hex}.pt"
    save_pruned(model, history, path, {"input_shape": list(ctx.example.shape), "ratios": dict(ratios),
                                       "scorer": scorer, "dropped": list(dropped)})
    return str(path)
