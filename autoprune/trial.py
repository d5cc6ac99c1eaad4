"""One trial: sampled parameters -> prune a copy -> recover -> measure. Knows nothing of Optuna or Ray."""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from autoprune.context import StudyContext
from autoprune.depth import drop_blocks
from autoprune.saving import save_pruned
from autoprune.distill import finetune, recalibrate_bn
from autoprune.measure import accuracy, count_macs, count_params, latency_ms
from autoprune.pruning import prune_with_plan
from autoprune.space import TrialPlan, decode


@dataclass
class TrialResult:
    metrics: dict[str, float]  # accuracy (val, 0..1), macs, params, latency_ms
    timings: dict[str, float]  # seconds per phase: prune, bn_calibration, finetune, evaluate, measure, total
    plan: dict[str, Any]  # scorer, ratios, recovery settings, fine-tune budget
    model_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_trial(ctx: StudyContext, params: Mapping[str, Any], seed: int = 0, save_dir: Path | None = None,
              promote: Callable[[Mapping[str, float]], bool] | None = None) -> TrialResult:
    """Run one trial with sampled ``params`` (see :mod:`autoprune.space`).

    ``promote``: with ``fidelity.promote_steps`` set, called with the short-recovery metrics; when it answers
    True the trial fine-tunes ``promote_steps`` more steps (a second cosine cycle) and reports that accuracy.
    Raises FloatingPointError on a non-finite fine-tune loss and AutopruneError where the plan cannot apply;
    backends record either (and any exception from a user model) as a failed trial.
    """
    cfg = ctx.study.config
    plan: TrialPlan = decode(params, ctx.study.space, ctx.groups, cfg.recovery)
    rec = plan.recovery
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    stream = ctx.stream if rec.teacher_cache else None

    t = time.perf_counter()
    base = ctx.base
    if plan.dropped:
        base = drop_blocks(copy.deepcopy(base), plan.dropped)
    model, pplan = prune_with_plan(base, ctx.example, plan.ratios, plan.scorer, layout=ctx.layout,
                                   round_to=ctx.study.space.round_to, calibration=ctx.calibration,
                                   inplace=bool(plan.dropped))
    for p in model.parameters():
        p.requires_grad_(True)
    timings["prune"] = time.perf_counter() - t

    t = time.perf_counter()
    with ctx.lock.shared():
        recalibrate_bn(model, ctx.data.train, rec.bn_recalibration_batches, rec.batch_size, generator=gen)
    timings["bn_calibration"] = time.perf_counter() - t

    def recover(steps: int, start: int) -> None:
        t0 = time.perf_counter()
        finetune(model, ctx.data.train, steps=steps, batch_size=rec.batch_size, lr=rec.lr, momentum=rec.momentum,
                 weight_decay=rec.weight_decay, teacher=ctx.base, temperature=rec.temperature, alpha=rec.alpha,
                 augment=cfg.data.augment, generator=gen, step_guard=ctx.lock.shared, stream=stream,
                 stream_start=start)
        timings["finetune"] = timings.get("finetune", 0.0) + time.perf_counter() - t0

    def evaluate(split) -> float:
        t0 = time.perf_counter()
        with ctx.lock.shared():
            acc = accuracy(model, split, cfg.data.batch_size)
        timings["evaluate"] = timings.get("evaluate", 0.0) + time.perf_counter() - t0
        return acc

    recover(rec.steps, 0)
    acc = evaluate(ctx.short_val)

    t = time.perf_counter()
    m = cfg.measure
    with ctx.lock.exclusive():
        lat = latency_ms(model, ctx.latency_input, m.latency_repeats, m.latency_warmup)
    metrics = {"accuracy": acc, "macs": count_macs(model, ctx.example), "params": count_params(model), "latency_ms": lat}
    timings["measure"] = time.perf_counter() - t

    fidelity = {"steps": rec.steps, "short_steps": rec.steps, "short_accuracy": acc, "accuracy": acc, "promoted": False,
                "short_val_images": len(ctx.short_val), "val_images": len(ctx.short_val)}
    extra = cfg.fidelity.promote_steps
    if extra and promote is not None and promote(metrics):
        recover(extra, rec.steps)
        metrics["accuracy"] = evaluate(ctx.data.val)
        fidelity.update(steps=rec.steps + extra, accuracy=metrics["accuracy"], promoted=True,
                        val_images=len(ctx.data.val))

    model_file = None
    if save_dir is not None:
        path = Path(save_dir) / f"{uuid.uuid4().hex}.pt"
        save_pruned(model, pplan.to_dict()["history"], path, {"input_shape": list(ctx.example.shape),
                                                               "ratios": pplan.ratios, "scorer": pplan.scorer,
                                                               "dropped": list(plan.dropped)})
        model_file = str(path)
    timings["total"] = time.perf_counter() - t_start
    plan_record = {"scorer": pplan.scorer, "ratios": pplan.ratios, "round_to": pplan.round_to,
                   "dropped": list(plan.dropped), "recovery": rec.model_dump(),
                   "finetune_images": fidelity["steps"] * rec.batch_size, "finetune_steps": fidelity["steps"],
                   "seed": seed, "latency_method": ctx.latency_method,
                   "teacher": "cached logits" if stream is not None else "teacher forward every step"}
    return TrialResult(metrics, timings, plan_record, model_file, extra={"fidelity": fidelity})
