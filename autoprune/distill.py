"""Recovery: the distillation loss, BatchNorm re-calibration, and the fine-tune loops."""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.data import Split

if TYPE_CHECKING:
    from autoprune.teacher import RecoveryStream


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)``.

    The KL term is averaged over the batch (``batchmean``), as in Hinton et al. (2015).
    """
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True)
    return alpha * t * t * kl + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: Split, batches: int, batch_size: int,
                   generator: torch.Generator | None = None) -> None:
    """Re-estimate BatchNorm running statistics on ``batches`` training batches (cumulative average, no gradients)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    for i, (x, _) in enumerate(split.batches(batch_size, shuffle=True, generator=generator, drop_last=True)):
        if i >= batches:
            break
        model(x)
    for m, (momentum, _) in zip(bns, saved):
        m.momentum = momentum
    model.eval()


def train_step(student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor, opt, sched,
               temperature: float, alpha: float, where: str, teacher_logits: torch.Tensor | None = None) -> float:
    """One SGD step: distillation from ``teacher`` (or from its cached ``teacher_logits`` on ``x``; plain
    cross-entropy with neither); returns the loss.

    Raises FloatingPointError, naming ``where``, on a non-finite loss (before the weights are touched).
    """
    logits = student(x)
    if teacher_logits is None and teacher is not None:
        with torch.no_grad():
            teacher_logits = teacher(x)
    if teacher_logits is not None:
        loss = kd_loss(logits, teacher_logits, y, temperature, alpha)
    else:
        loss = F.cross_entropy(logits, y)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"non-finite loss {value} at {where}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return value


def _cycle(split: Split, batch_size: int, augment: bool, generator: torch.Generator | None):
    while True:
        yielded = False
        for batch in split.batches(batch_size, shuffle=True, augment=augment, generator=generator, drop_last=True):
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the training split is empty: nothing to fine-tune on")


def finetune(
    student: nn.Module,
    split: Split,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    augment: bool = False,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, float], None] | None = None,
    step_guard: Callable[[], ContextManager] = contextlib.nullcontext,
    stream: "RecoveryStream | None" = None,
    stream_start: int = 0,
) -> float:
    """SGD with a cosine schedule for ``steps`` steps; distillation from ``teacher`` if given, else plain CE.

    With a ``stream`` (:mod:`autoprune.teacher`) the batches are the stream's from ``stream_start`` on and the
    teacher's logits come from its cache (``teacher`` is not run; ``split``, ``batch_size``, ``augment`` and
    ``generator`` are then the stream's business).
    Returns the mean loss over the last tenth of the steps. Raises FloatingPointError on a non-finite loss.
    ``step_guard`` is entered around every step (the device lock's shared side, when workers share a device).
    """
    if steps <= 0:
        return float("nan")
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    if teacher is not None:
        teacher.eval()
    student.train()
    tail, tail_n = 0.0, 0
    if stream is not None:
        batches = stream.batches(split, stream_start)
    else:
        batches = ((x, y, None) for x, y in _cycle(split, batch_size, augment, generator))
    for step in range(steps):
        x, y, t_logits = next(batches)
        with step_guard():
            loss_value = train_step(student, teacher, x, y, opt, sched, temperature, alpha, f"fine-tune step {step}",
                                    teacher_logits=t_logits)
        if step >= steps - max(1, steps // 10):
            tail += loss_value
            tail_n += 1
        if on_step is not None:
            on_step(step, loss_value)
    student.eval()
    return tail / max(1, tail_n)
