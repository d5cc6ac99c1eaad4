"""Final retrain of a chosen trial: rebuild its pruned model from the base, distil it longer, evaluate on test.

The pruned structure is rebuilt deterministically: the trial's recorded torch-pruning history is replayed on a
copy of the base model (or, where the trial's saved file is gone, its recorded plan is applied again), and the
rebuilt structure is checked against the trial's. Recovery is the search's own fine-tune
(:func:`autoprune.train.distill.run_steps`) driven by the trial's recorded recovery settings
(:meth:`autoprune.engine.record.PlanRecord.recovery_settings`), longer: a cosine
schedule over all epochs on the full training data with the data's augmentation, one checkpoint per epoch so an
interrupted retrain resumes.
An optional progressive schedule prunes the same total ratios in k steps with fine-tuning between.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from autoprune.config import RecoveryConfig
from autoprune.data.splits import Images, join
from autoprune.device import to_device
from autoprune.engine.context import StudyContext
from autoprune.engine.rebuild import base_copy, rebuild, trial_blob
from autoprune.engine.record import TrialRecord
from autoprune.errors import AutopruneError
from autoprune.files import atomic_save
from autoprune.pruning.structural import prune_with_plan, replay, structure
from autoprune.train.distill import make_optimizer, recalibrate_bn, run_steps


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


def full_training_split(ctx: StudyContext) -> Images:
    """All training images: train plus validation when validation was carved from train."""
    train, val = ctx.data.train, ctx.data.val
    if ctx.study.config.data.val_source == "train":
        return join(train, val)
    return train


def _progressive_step(ctx: StudyContext, model: nn.Module, record: TrialRecord, step: int, steps: int) -> list:
    """Prune ``model`` from cumulative ratio r*step/steps to r*(step+1)/steps of the base's channels."""
    rel = {}
    for g, r in record.plan.ratios.items():
        kept_now, kept_next = 1 - r * step / steps, 1 - r * (step + 1) / steps
        rel[g] = 0.0 if r == 0 else max(0.0, 1 - kept_next / kept_now)
    _, pplan = prune_with_plan(model, ctx.example, rel, record.plan.scorer, layout=ctx.layout,
                               round_to=record.plan.round_to, calibration=ctx.calibration, inplace=True)
    return pplan.to_dict()["history"]


@dataclass
class _State:
    """Where a retrain stands: the model, its pruning history and the epochs done (a checkpoint's contents)."""

    model: nn.Module
    history: list
    epoch: int = 0
    matches: bool = True
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    optimizer: dict | None = None
    scheduler: dict | None = None


def _start(ctx: StudyContext, record: TrialRecord, ckpt_path: Path, key: dict, progressive_steps: int) -> _State:
    """Resume from ``ckpt_path`` when it holds this retrain, else rebuild the trial's structure (or, for a
    progressive retrain, start from the base)."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True) if ckpt_path.is_file() else None
    if state is not None and state.get("key") != key:
        raise AutopruneError(f"{ckpt_path} belongs to another retrain ({state.get('key')}); use another --out",
                             field="--out")
    if state is not None:
        model = base_copy(ctx, record)
        replay(model, ctx.example, state["history"])
        model.load_state_dict(state["model"])
        return _State(model, [list(h) for h in state["history"]], int(state["epoch"]), bool(state["matches"]),
                      list(state.get("losses", [])), float(state.get("seconds", 0.0)), state["optimizer"],
                      state["scheduler"])
    if progressive_steps == 1:
        model, history, matches = rebuild(ctx, record)
        return _State(model, history, matches=matches)
    return _State(base_copy(ctx, record), [])


def _checkpoint(st: _State, key: dict, opt, sched, seconds: float, path: Path) -> None:
    atomic_save({"key": key, "epoch": st.epoch, "history": st.history, "matches": st.matches,
                 "model": {k: v.detach().cpu() for k, v in st.model.state_dict().items()},
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "losses": st.losses,
                 "seconds": seconds}, path)


def retrain(
    ctx: StudyContext,
    record: TrialRecord,
    *,
    epochs: int,
    out_dir: Path,
    progressive_steps: int = 1,
    lr: float | None = None,
    batch_size: int | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> RetrainResult:
    """Retrain trial ``record`` for ``epochs`` epochs, checkpointing to ``out_dir/checkpoint.pt`` every epoch."""
    cfg = ctx.study.config
    settings: RecoveryConfig = record.plan.recovery_settings(cfg.recovery)
    settings = settings.model_copy(update={"lr": lr or settings.lr, "batch_size": batch_size or settings.batch_size})
    if progressive_steps < 1 or progressive_steps > epochs:
        raise AutopruneError(f"--progressive must lie in [1, epochs={epochs}], got {progressive_steps}",
                             field="--progressive")
    train = full_training_split(ctx)
    steps_per_epoch = max(1, len(train) // settings.batch_size)
    total_steps = epochs * steps_per_epoch
    ckpt_path = out_dir / "checkpoint.pt"
    key = {"trial": record.number, "epochs": epochs, "progressive": progressive_steps, "lr": settings.lr,
           "batch_size": settings.batch_size}
    st = _start(ctx, record, ckpt_path, key, progressive_steps)
    st.model = to_device(st.model, ctx.device)
    if st.epoch == 0 and progressive_steps == 1:  # as a trial does: the pruned model's BatchNorm statistics first
        recalibrate_bn(st.model, train, settings.bn_recalibration_batches, settings.batch_size,
                       generator=torch.Generator().manual_seed(cfg.seed))
    for p in st.model.parameters():
        p.requires_grad_(True)
    opt, sched = make_optimizer(st.model, settings, total_steps)
    if st.optimizer is not None:
        opt.load_state_dict(st.optimizer)
        sched.load_state_dict(st.scheduler)
    resumed_from, t0 = st.epoch, time.perf_counter() - st.seconds
    for epoch in range(st.epoch, epochs):
        if progressive_steps > 1 and epoch < progressive_steps:  # one pruning step at the start of each early epoch
            st.history += _progressive_step(ctx, st.model, record, epoch, progressive_steps)
            recalibrate_bn(st.model, train, settings.bn_recalibration_batches, settings.batch_size)
            opt, sched = make_optimizer(st.model, settings, total_steps, epoch * steps_per_epoch)  # new shapes
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        batches = ((x, y, None) for x, y in train.batches(settings.batch_size, shuffle=True, augment=cfg.data.augment,
                                                          generator=gen, drop_last=True))
        losses = run_steps(st.model, batches, opt, sched, settings, ctx.base, where=f"retrain epoch {epoch + 1},",
                           on_step=(lambda i, _v: on_step(i + 1, steps_per_epoch)) if on_step else None,
                           loss_fn=ctx.loss)
        st.losses.append(sum(losses) / max(1, len(losses)))
        st.epoch = epoch + 1
        _checkpoint(st, key, opt, sched, time.perf_counter() - t0, ckpt_path)
        if on_epoch:
            on_epoch(epoch + 1, epochs, st.losses[-1])
    if progressive_steps > 1 and (blob := trial_blob(record)) is not None:
        st.matches = structure(st.model) == {k: list(v.shape) for k, v in blob["state_dict"].items()}
    st.model.eval()
    return RetrainResult(st.model, st.history, epochs, epochs * steps_per_epoch * settings.batch_size,
                         time.perf_counter() - t0, resumed_from, progressive_steps, st.matches, st.losses)
