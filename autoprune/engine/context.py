"""Everything a trial needs that does not change between trials, prepared once per worker.

The data splits (on the trial device), the base model (loaded from a checkpoint, or trained once and cached in
the study's folder keyed by its config), the group layout, and the base model's reference measurements.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from autoprune.config import RecoveryConfig, Study
from autoprune.config.study import GIVEN
from autoprune.data.splits import DataSplits, Images, load_splits
from autoprune.device import memory_format, resolve_device, to_device
from autoprune.engine.allocation import Placement, Placer
from autoprune.engine.fidelity import rung_ladder
from autoprune.engine.space import TrialPlan, decode, distributions
from autoprune.errors import AutopruneError
from autoprune.files import checksum_ok, save_checksummed
from autoprune.metrics.costs import accuracy, count_macs, count_params
from autoprune.metrics.device_lock import DeviceLock, NoLock
from autoprune.metrics.latency import Deployed, deploy, paired_latency
from autoprune.metrics.scoring import Score, score_name
from autoprune.models.copying import copy_model
from autoprune.models.factory import create_model, load_checkpoint, resolve_model
from autoprune.models.fit_check import check_model_fits
from autoprune.pruning.depth import droppable_blocks
from autoprune.pruning.graph_hints import pruner_kwargs
from autoprune.pruning.latency_model import LatencyCostModel
from autoprune.pruning.macs_model import CostModel, build_cost_model
from autoprune.pruning.prunability import freeze_unprunable
from autoprune.pruning.structural import GroupLayout, build_layout
from autoprune.train.distill import LossFn, finetune
from autoprune.train.teacher_stream import RecoveryStream, load_or_build_stream, weights_digest

GIVEN_STREAM = ("teacher run in every fine-tune step (data given from Python: its transforms may draw anew on every "
                "read, so no logits are cached)")


@dataclass
class Given:
    """What a search from Python (``autoprune.search``) hands over instead of names in a study file: the trained
    model, the data as splits (:func:`autoprune.data.given.given_splits`) and, optionally, its own score."""

    model: nn.Module
    data: DataSplits
    score: Score | None = None
    loss: LossFn | None = None  # the recovery loss (None: distillation from the base plus cross-entropy)


@dataclass
class StudyContext:
    study: Study
    device: torch.device
    data: DataSplits
    base: nn.Module
    layout: GroupLayout
    example: torch.Tensor  # one preprocessed image, on the device
    latency_input: torch.Tensor  # the latency batch (measure.latency_batch_size copies of example), built once
    reference: dict[str, Any] = field(default_factory=dict)
    calibration: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    lock: Any = field(default_factory=NoLock)  # DeviceLock when several workers share this machine's device
    latency_method: str = "single worker: latency measured in the trial's process"
    stream: RecoveryStream | None = None  # the fine-tune batches with the teacher's cached logits
    droppable: list[str] = field(default_factory=list)  # residual blocks depth pruning may drop
    ratio_highs: dict[str, float] = field(default_factory=dict)  # per-group upper ratios from a sensitivity scan
    cost: CostModel | None = None  # the per-group MACs model, for a study with cost targets
    _costs: dict = field(default_factory=dict, repr=False)  # round_to -> the cost model with that rounding
    latency_cost: LatencyCostModel | None = None  # the per-group latency model, for a study with latency targets
    given: Given | None = None  # the objects a search from Python handed over (None: the study file's names)
    frozen: dict[str, str] = field(default_factory=dict)  # groups kept whole because pruning them breaks the model

    def share_device(self) -> None:
        """Serialise latency measurements with the other workers on this machine (see :mod:`autoprune.metrics.device_lock`)."""
        self.lock = DeviceLock(self.device.type if self.device.index is None else f"{self.device.type}{self.device.index}")
        self.latency_method = "exclusive: device lock held, other workers on this machine paused"

    @functools.cached_property
    def latency_base(self) -> Deployed:
        """The base model as ``measure.latency_backend`` deploys it, prepared once: every trial's latency is
        measured paired with it (:func:`autoprune.metrics.latency.paired_latency`)."""
        return deploy(self.base, self.latency_input, self.study.config.measure.latency_backend)

    @property
    def score(self) -> Score | None:
        """The user's score function (None: top-1 accuracy on the validation split, image by image)."""
        return self.given.score if self.given else None

    @property
    def loss(self) -> LossFn | None:
        """The user's recovery loss (None: distillation from the base plus cross-entropy)."""
        return self.given.loss if self.given else None

    @property
    def score_name(self) -> str:
        return self.score.name if self.score else "accuracy"

    @property
    def groups(self) -> list[str]:
        return self.layout.names

    @functools.cached_property
    def short_val(self) -> Images:
        """The validation images a short recovery is scored on (``fidelity.short_val_images``, a subset seeded by
        the study's seed; the whole split when unset or larger)."""
        n = self.study.config.fidelity.short_val_images
        val = self.data.val
        if n is None or n >= len(val):
            return val
        gen = torch.Generator().manual_seed(self.study.config.seed)
        return val.subset(torch.randperm(len(val), generator=gen)[:n].sort().values)

    @property
    def targets(self) -> list[float] | None:
        """The study's MACs-reduction targets (None: candidates land anywhere on the cost axis)."""
        t = self.study.config.targets
        return t.values if t else None

    @property
    def turns(self) -> list[float] | None:
        """The targets in the order trials take them (``targets.shares``; None without targets)."""
        t = self.study.config.targets
        return t.turns if t else None

    @property
    def balance(self) -> bool:
        """Whether new candidates go to the target furthest below its share (``targets.balance``)."""
        t = self.study.config.targets
        return bool(t and t.balance)

    def distributions(self) -> dict:
        """The Optuna distributions of this study's searchable parameters (see :mod:`autoprune.engine.space`)."""
        return distributions(self.study.space, self.groups, self.droppable, self.ratio_highs, self.targets)

    @functools.cached_property
    def bounds(self) -> dict[str, tuple[float, float]]:
        """Each group's ratio range: the search space's, narrowed by a sensitivity scan (once per study)."""
        r = self.study.space.ratio
        return {g: (r.low, max(r.low, min(r.high, self.ratio_highs.get(g, r.high)))) for g in self.groups}

    def place(self, weights: Mapping[str, float], target: float, round_to: int | None = None) -> Placement:
        """An allocation placed on a cost target (see :func:`autoprune.engine.allocation.place`), channel counts rounded
        to ``round_to`` (None: the search space's fixed one)."""
        return self.placer(round_to)(weights, target)

    def placer(self, round_to: int | None = None) -> Placer:
        """:meth:`place` as a picklable callable (what the allocation sampler holds)."""
        if self.cost is None:
            raise AutopruneError("this study has no cost targets, so allocations cannot be placed", field="targets")
        cost = self._cost_at(self.study.space.fixed_round_to if round_to is None else round_to)
        return Placer(self._reduction_model(round_to).reduction, dict(self.bounds), cost.channel_steps())

    def reduction(self, ratios: Mapping[str, float], round_to: int | None = None) -> float:
        """The predicted reduction of the study's target kind at ``ratios``: MACs (the cost model, channel counts
        rounded to ``round_to``), or latency (the per-group latency model) for latency targets."""
        return self._reduction_model(round_to).reduction(ratios)

    def _reduction_model(self, round_to: int | None) -> CostModel | LatencyCostModel:
        if self.latency_cost is not None:
            return self.latency_cost
        return self._cost_at(self.study.space.fixed_round_to if round_to is None else round_to)

    def _cost_at(self, round_to: int | None) -> CostModel:
        """The cost model with channel counts rounded to ``round_to`` (attention widths kept whole as in pruning)."""
        if round_to not in self._costs:
            rt = pruner_kwargs(self.base, round_to)["round_to"]
            self._costs[round_to] = self.cost if rt == self.cost.round_to else dataclasses.replace(self.cost, round_to=rt)
        return self._costs[round_to]

    def decode(self, params: Mapping[str, Any]) -> TrialPlan:
        """Sampled parameters -> the plan a trial runs (allocations placed on their target)."""
        return decode(params, self.study.space, self.groups, self.study.config.recovery, self.targets,
                      lambda w, t, rt: self.place(w, t, rt).ratios)

    def fresh_model(self) -> nn.Module:
        """An unpruned model of the study's architecture (a pruned model's history is replayed on it)."""
        if self.given is not None:
            return copy_model(self.given.model)
        cfg = self.study.config.model
        return create_model(cfg.name, num_classes=self.data.num_classes, **cfg.kwargs)


def _base_cache_path(study: Study, num_classes: int) -> Path:
    cfg = study.config
    blob = json.dumps({"model": cfg.model.model_dump(exclude={"checkpoint"}), "data": cfg.data.model_dump(exclude={"root"}),
                       "num_classes": num_classes, "seed": cfg.seed}, sort_keys=True, default=str)
    return study.workdir / f"base-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.pt"


def train_base(study: Study, model: nn.Module, data: DataSplits, device: torch.device,
               on_step: Callable[[int, int], None] | None = None) -> nn.Module:
    """Train the base model with plain cross-entropy (used when the study names no checkpoint)."""
    bt = study.config.model.base_training
    steps_per_epoch = max(1, len(data.train) // bt.batch_size)
    total = bt.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(study.config.seed)
    settings = RecoveryConfig(lr=bt.lr, weight_decay=bt.weight_decay, batch_size=bt.batch_size)
    finetune(model, data.train, steps=total, settings=settings, augment=study.config.data.augment, generator=gen,
             on_step=(lambda s, _loss: on_step(s + 1, total)) if on_step else None)
    return model


def _base_weights(study: Study, model: nn.Module, data: DataSplits, device: torch.device, num_classes: int,
                  on_base_step: Callable[[int, int], None] | None, log: Callable[[str], None]) -> tuple[nn.Module, str, bool]:
    """The base model's weights: the study's checkpoint, the cached base, or trained here and cached.
    Returns (model on ``device``, in eval mode; where the weights came from; whether they were trained here)."""
    cfg = study.config
    if cfg.model.checkpoint:
        load_checkpoint(model, cfg.model.checkpoint)
        return to_device(model, device).eval(), str(cfg.model.checkpoint), False
    cache = _base_cache_path(study, num_classes)
    if cache.is_file() and not checksum_ok(cache):
        log(f"cached base model {cache} fails its checksum; retraining it")
        cache.unlink()
    if cache.is_file():
        load_checkpoint(model, cache)
        return to_device(model, device).eval(), f"cached {cache}", False
    t0 = time.perf_counter()
    model = train_base(study, to_device(model, device), data, device, on_step=on_base_step)
    save_checksummed(model.state_dict(), cache)
    # parameters keep requires_grad: torch-pruning traces through autograd
    return to_device(model, device).eval(), f"trained here in {time.perf_counter() - t0:.1f} s, cached at {cache}", True


def _droppable(study: Study, model: nn.Module, example: torch.Tensor) -> list[str]:
    if study.space.depth is None:
        return []
    droppable = droppable_blocks(model, example, study.space.depth.blocks)
    if not droppable:
        raise AutopruneError(f"depth.blocks {study.space.depth.blocks} match no block whose output has its "
                             "input's shape (only such blocks can be replaced by the identity)",
                             source=str(study.space_path), field="depth.blocks")
    return droppable


def _reference(ctx: StudyContext, source: str, trained_here: bool, stream_source: str) -> dict[str, Any]:
    """The base model's measurements every trial is compared with."""
    cfg, m, model = ctx.study.config, ctx.study.config.measure, ctx.base
    # the base paired with itself: its time on the study's backend, and how noisy the machine is right now
    lat = paired_latency(ctx.latency_base, ctx.latency_base, ctx.latency_input, m.latency_repeats, m.latency_warmup,
                         m.latency_backend)
    ref = {"accuracy": ctx.score(model) if ctx.score else accuracy(model, ctx.data.val, cfg.data.batch_size),
           "score_name": ctx.score_name, "recovery_loss": _loss_name(ctx.loss), "macs": count_macs(model, ctx.example),
           "params": count_params(model), "latency_ms": lat.base_ms, "latency_backend": lat.backend,
           "latency_batch_size": m.latency_batch_size,
           "latency_dispersion": lat.dispersion, "latency_reliable": lat.reliable, "source": source,
           "trained_here": trained_here, "split": "val", "data": ctx.data.info,
           "groups": {g: {"roots": r, "channels": ctx.layout.channels.get(g, 0)} for g, r in ctx.layout.roots.items()},
           "device": str(ctx.device), "teacher": stream_source, "frozen": dict(ctx.frozen)}
    if ctx.ratio_highs:
        ref["ratio_highs"] = ctx.ratio_highs
    return ref


def _loss_name(loss: LossFn | None) -> str:
    if loss is None:
        return "distillation from the base + cross-entropy"
    return f"{score_name(loss, 'loss')} (your function)"


def _data_and_model(study: Study, device: torch.device, given: Given | None = None,
                    log: Callable[[str], None] | None = None) -> tuple[DataSplits, nn.Module, GroupLayout, dict[str, str]]:
    """The data on ``device``, a fresh model (or a copy of the given one), its group layout and the groups frozen
    because pruning them breaks the model (with why): the groups and whether torch-pruning can prune them do not
    depend on the weights, so this runs before any training or storage write and a model that cannot be pruned
    costs nothing."""
    if given is not None:
        data, model = given.data, copy_model(given.model)
    else:
        data, model = _registered(study)
    example = data.val.example(1).cpu()
    if given is None:
        check_model_fits(model, example, data.num_classes, study.config.model.name, source=str(study.path))
    layout = build_layout(model, example, by=study.space.groups.by, named=_named_groups(study),
                          prunable=_prunable(study), ignore=study.space.ignore, log=log)
    layout, frozen = freeze_unprunable(model, example, layout, source=str(study.space_path))
    return data.to(device), model, layout, frozen


def _registered(study: Study) -> tuple[DataSplits, nn.Module]:
    """The study file's data set and a fresh model by their registered names."""
    cfg = study.config
    resolve_model(cfg.model.name)  # fail on an unknown model before loading data
    data = load_splits(cfg.data)
    num_classes = cfg.model.num_classes or data.num_classes
    if num_classes != data.num_classes:
        raise AutopruneError(f"the data has {data.num_classes} classes but the model outputs {num_classes} (set "
                             f"model.num_classes: {data.num_classes}, or leave it out)", source=str(study.path),
                             field="model.num_classes")
    torch.manual_seed(cfg.seed)
    return data, create_model(cfg.model.name, num_classes=num_classes, **cfg.model.kwargs)


def prepare(study: Study, device: str | torch.device = "cpu", *, measure_reference: bool = True,
            on_base_step: Callable[[int, int], None] | None = None, log: Callable[[str], None] = lambda s: None,
            on_stream_step: Callable[[int, int], None] | None = None, recovery_stream: bool = True,
            given: Given | None = None) -> StudyContext:
    """Load data and the base model, build the group layout and measure the reference (once per worker).

    ``recovery_stream=False`` skips the cached teacher-logit stream (commands that run no trial). ``given``: the
    model and data a search from Python hands over, instead of the study file's names."""
    cfg = study.config
    device = resolve_device(device) if isinstance(device, str) else device
    threads = cfg.measure.threads or int(os.environ.get("AUTOPRUNE_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    data, model, layout, frozen = _data_and_model(study, device, given, log)
    for line in frozen.values():
        log(line)
    if given is not None:
        model, source, trained_here = to_device(model, device).eval(), "the model given to autoprune.search", False
    else:
        model, source, trained_here = _base_weights(study, model, data, device, data.num_classes, on_base_step, log)
    example = data.val.example(1)
    gen = torch.Generator().manual_seed(cfg.seed)
    calib = [b for _, b in zip(range(2), data.train.batches(min(64, len(data.train)), shuffle=True, generator=gen))]
    lat_x = example.expand(cfg.measure.latency_batch_size, *example.shape[1:]).contiguous(memory_format=memory_format(device))
    highs = _sensitivity(study, model, example, layout, data, log) if study.space.sensitivity else {}
    if given is not None:
        stream, stream_source = None, GIVEN_STREAM
    elif recovery_stream:
        stream, stream_source = _recovery_stream(study, model, data, log, on_stream_step)
    else:
        stream, stream_source = None, "not prepared: this command runs no trial"
    cost = build_cost_model(model, example, layout, study.space.fixed_round_to) if cfg.targets else None
    ctx = StudyContext(study, device, data, model, layout, example, lat_x, calibration=calib, stream=stream,
                       droppable=_droppable(study, model, example), ratio_highs=highs, cost=cost, given=given,
                       frozen=frozen)
    if cfg.targets and cfg.targets.objective == "latency_ms":
        ctx.latency_cost = _latency_model(ctx, log)
    if measure_reference:
        ctx.reference = _reference(ctx, source, trained_here, stream_source)
    return ctx


def _latency_model(ctx: StudyContext, log: Callable[[str], None]) -> LatencyCostModel:
    """The per-group latency model of a study with latency targets (measured once, cached in the study folder)."""
    from autoprune.pruning.latency_model import cache_key, load_or_scan, scan

    m, rt = ctx.study.config.measure, ctx.study.space.fixed_round_to
    key = cache_key(weights_digest(ctx.base), ctx.layout, m.latency_backend, m.latency_batch_size,
                    m.latency_repeats, rt)

    def run() -> LatencyCostModel:
        log(f"latency model: timing {len(ctx.groups)} groups alone on {m.latency_backend}")
        return scan(ctx.base, ctx.latency_base, ctx.example, ctx.latency_input, ctx.layout, m.latency_backend,
                    m.latency_repeats, m.latency_warmup, rt)

    return load_or_scan(ctx.study.workdir, key, run, log)


def stream_steps(study: Study) -> int:
    """Steps the recovery stream must hold: the top rung of the study's ladder."""
    return rung_ladder(study.config)[-1]


def _recovery_stream(study: Study, teacher: nn.Module, data: DataSplits, log: Callable[[str], None],
                     on_step: Callable[[int, int], None] | None) -> tuple[RecoveryStream | None, str]:
    cfg = study.config
    steps = stream_steps(study)
    if not cfg.recovery.teacher_cache or steps <= 0 or len(data.train) < cfg.recovery.batch_size:
        return None, "teacher run in every fine-tune step (recovery.teacher_cache off)"
    key = json.dumps({"teacher": weights_digest(teacher), "data": cfg.data.model_dump(exclude={"root"}),
                      "batch_size": cfg.recovery.batch_size, "seed": cfg.seed}, sort_keys=True, default=str)
    return load_or_build_stream(study.workdir, key, teacher, data.train, steps, cfg.recovery.batch_size,
                                cfg.data.augment, cfg.seed, log=log, on_step=on_step)


def _sensitivity(study: Study, model: nn.Module, example: torch.Tensor, layout: GroupLayout, data: DataSplits,
                 log: Callable[[str], None]) -> dict[str, float]:
    """Per-group upper ratios from the search space's sensitivity scan (cached in the study folder)."""
    from autoprune.engine.sensitivity import cache_key, load_or_scan, narrowed_highs, scan

    cfg, space = study.config, study.space
    rec = cfg.recovery
    key = cache_key(weights_digest(model), layout, space.sensitivity, "l1",
                    [cfg.data.model_dump(exclude={"root"}), rec.bn_recalibration_batches, rec.batch_size, cfg.seed])

    def run() -> dict:
        log(f"sensitivity scan: {len(layout.names)} groups x {len(space.sensitivity.ratios)} ratios")
        return scan(model, example, layout, data, space.sensitivity, "l1", rec.bn_recalibration_batches,
                    rec.batch_size, cfg.seed)

    result = load_or_scan(study.workdir, key, run, log)
    highs = narrowed_highs(result["scores"], result["base"], space.sensitivity.max_drop, space.ratio.high)
    log("sensitivity scan: upper ratios " + ", ".join(f"{g} {h:g}" for g, h in highs.items()))
    return highs


def _named_groups(study: Study) -> dict[str, list[str]] | None:
    g = study.space.groups
    if g.by == "named":
        return g.named
    if g.by == "stage":
        stages = None if study.config.model.name.startswith(GIVEN) else resolve_model(study.config.model.name).stages
        if not stages:
            raise AutopruneError(f"model {study.config.model.name!r} defines no stages; use groups.by: dependency "
                                 "or named", source=str(study.space_path), field="groups.by")
        return stages
    return None


def _prunable(study: Study) -> list[str] | None:
    if study.space.prunable is not None or study.config.model.name.startswith(GIVEN):
        return study.space.prunable
    return resolve_model(study.config.model.name).prunable
