"""Final retrain of a chosen trial: rebuild its pruned model from the base, distil it longer, evaluate on test.

The pruned structure is rebuilt deterministically: the trial's recorded torch-pruning history is replayed on a
copy of the base model (or, where the trial's saved file is gone, its recorded plan is applied again), and the
rebuilt structure is checked against the trial's. Recovery is a cosine-scheduled distillation from the base on the
full training data with the data's augmentation, one checkpoint per epoch so an interrupted retrain resumes.
An optional progressive schedule prunes the same total ratios in k steps with fine-tuning between.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from autoprune.context import StudyContext
from autoprune.data import Split
from autoprune.distill import recalibrate_bn, train_step
from autoprune.errors import AutopruneError
from autoprune.pruning import prune_with_plan, replay, structure
from autoprune.saving import atomic_save
from autoprune.depth import drop_blocks


@dataclass
class RetrainResult:
    model: nn.Module
    history: list
    epochs: int
    images_seen: int
    seconds: float
    resumed_from_epoch: int
    progressive_steps: int
    structure_matches_trial: bool
    losses: list[float] = field(default_factory=list)


def full_training_split(ctx: StudyContext) -> Split:
    """All training images: train plus validation when validation was carved from train."""
    train, val = ctx.data.train, ctx.data.val
    if ctx.study.config.data.val_source == "train":
        return Split(torch.cat([train.x, val.x]), torch.cat([train.y, val.y]), train.mean, train.std)
    return train


def _trial_blob(frozen) -> dict | None:
    path = frozen.user_attrs.get("model_file")
    if not path or not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _base_copy(ctx: StudyContext, frozen) -> nn.Module:
    """A copy of the base model without the residual blocks the trial dropped (depth pruning)."""
    return drop_blocks(copy.deepcopy(ctx.base), frozen.user_attrs.get("plan", {}).get("dropped", []))


def rebuild(ctx: StudyContext, frozen) -> tuple[nn.Module, list, bool]:
    """The trial's pruned structure with the base model's weights; returns (model, history, matches trial)."""
    blob = _trial_blob(frozen)
    model = _base_copy(ctx, frozen)
    if blob is not None:
        replay(model, ctx.example, blob["history"])
        want = {k: list(v.shape) for k, v in blob["state_dict"].items()}
        if structure(model) != want:
            raise AutopruneError(f"replaying trial {frozen.number}'s pruning history does not rebuild its structure")
        return model, [list(h) for h in blob["history"]], True
    plan = frozen.user_attrs.get("plan", {})
    model, pplan = prune_with_plan(model, ctx.example, plan["ratios"], plan["scorer"], layout=ctx.layout,
                                   round_to=plan.get("round_to"), calibration=ctx.calibration, inplace=True)
    params = sum(p.numel() for p in model.parameters())
    if params != frozen.user_attrs["metrics"]["params"]:
        raise AutopruneError(f"trial {frozen.number}'s saved model is gone and re-applying its plan gives "
                             f"{params} parameters, not the trial's {frozen.user_attrs['metrics']['params']}")
    return model, pplan.to_dict()["history"], True


def _progressive_step(ctx: StudyContext, model: nn.Module, plan: dict, step: int, steps: int) -> list:
    """Prune ``model`` from cumulative ratio r*step/steps to r*(step+1)/steps of the base's channels."""
    rel = {}
    for g, r in plan["ratios"].items():
        kept_now, kept_next = 1 - r * step / steps, 1 - r * (step + 1) / steps
        rel[g] = 0.0 if r == 0 else max(0.0, 1 - kept_next / kept_now)
    pruned, pplan = prune_with_plan(model, ctx.example, rel, plan["scorer"], layout=ctx.layout,
                                    round_to=plan.get("round_to"), calibration=ctx.calibration, inplace=True)
    return pplan.to_dict()["history"]


def retrain(
    ctx: StudyContext,
    frozen,
    *,
    epochs: int,
    out_dir: Path,
    progressive_steps: int = 1,
    lr: float | None = None,
    batch_size: int | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> RetrainResult:
    """Retrain trial ``frozen`` for ``epochs`` epochs, checkpointing to ``out_dir/checkpoint.pt`` every epoch."""
    cfg = ctx.study.config
    rec = frozen.user_attrs.get("plan", {}).get("recovery", {})
    lr = lr or float(rec.get("lr", cfg.recovery.lr))
    batch_size = batch_size or int(rec.get("batch_size", cfg.recovery.batch_size))
    temperature, alpha = float(rec.get("temperature", 4.0)), float(rec.get("alpha", 0.9))
    if progressive_steps < 1 or progressive_steps > epochs:
        raise AutopruneError(f"--progressive must lie in [1, epochs={epochs}], got {progressive_steps}",
                             field="--progressive")
    train = full_training_split(ctx)
    steps_per_epoch = max(1, len(train) // batch_size)
    total_steps = epochs * steps_per_epoch
    ckpt_path = out_dir / "checkpoint.pt"
    key = {"trial": frozen.number, "epochs": epochs, "progressive": progressive_steps, "lr": lr, "batch_size": batch_size}
    plan = frozen.user_attrs.get("plan", {})

    start_epoch, history, matches = 0, [], True
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True) if ckpt_path.is_file() else None
    if state is not None and state.get("key") != key:
        raise AutopruneError(f"{ckpt_path} belongs to another retrain ({state.get('key')}); use another --out",
                             field="--out")
    if state is not None:
        model = _base_copy(ctx, frozen)
        replay(model, ctx.example, state["history"])
        model.load_state_dict(state["model"])
        history, start_epoch, matches = [list(h) for h in state["history"]], int(state["epoch"]), bool(state["matches"])
    elif progressive_steps == 1:
        model, history, matches = rebuild(ctx, frozen)
    else:
        model = _base_copy(ctx, frozen)
    model = model.to(ctx.device)
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)

    def make_opt(m: nn.Module, offset: int = 0):
        """SGD with a cosine schedule over all steps; ``offset`` continues the schedule for a re-made optimizer."""
        opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=cfg.recovery.weight_decay, nesterov=True)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s + offset, total_steps) / total_steps)))
        return opt, sched

    opt, sched = make_opt(model)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    t0 = time.perf_counter() - (float(state.get("seconds", 0.0)) if state is not None else 0.0)
    losses = list(state.get("losses", [])) if state is not None else []
    teacher = ctx.base.eval()
    for epoch in range(start_epoch, epochs):
        if progressive_steps > 1 and epoch < progressive_steps:  # one pruning step at the start of each early epoch
            history += _progressive_step(ctx, model, plan, epoch, progressive_steps)
            recalibrate_bn(model, train, cfg.recovery.bn_recalibration_batches, batch_size)
            opt, sched = make_opt(model, epoch * steps_per_epoch)  # parameters changed shape: fresh optimizer
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        model.train()
        running, n = 0.0, 0
        for i, (x, y) in enumerate(train.batches(batch_size, shuffle=True, augment=cfg.data.augment, generator=gen,
                                                drop_last=True)):
            value = train_step(model, teacher, x, y, opt, sched, temperature, alpha, f"retrain epoch {epoch + 1}, step {i}")
            running, n = running + value, n + 1
            if on_step:
                on_step(i + 1, steps_per_epoch)
        losses.append(running / max(1, n))
        model.eval()
        atomic_save({"key": key, "epoch": epoch + 1, "history": history, "matches": matches,
                     "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "losses": losses,
                     "seconds": time.perf_counter() - t0}, ckpt_path)
        if on_epoch:
            on_epoch(epoch + 1, epochs, losses[-1])
    if progressive_steps > 1:
        blob = _trial_blob(frozen)
        if blob is not None:
            matches = structure(model) == {k: list(v.shape) for k, v in blob["state_dict"].items()}
    model.eval()
    return RetrainResult(model, history, epochs, epochs * steps_per_epoch * batch_size, time.perf_counter() - t0,
                         start_epoch, progressive_steps, matches, losses)
