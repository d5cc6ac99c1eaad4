"""Recovery: the distillation loss, BatchNorm re-calibration, and the fine-tune loops."""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Callable, ContextManager, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.data.splits import Images

if TYPE_CHECKING:
    from autoprune.train.teacher_stream import RecoveryStream


class RecoverySettings(Protocol):
    """What the training loop reads (a :class:`~autoprune.config.RecoveryConfig` has all of it)."""

    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    temperature: float
    alpha: float
    precision: str  # "auto" (bf16 autocast on CUDA, fp32 elsewhere), "fp32" or "bf16"


# a user's recovery loss: (student outputs, teacher outputs or None, targets) -> a scalar tensor
LossFn = Callable[[torch.Tensor, "torch.Tensor | None", object], torch.Tensor]

SYNC_EVERY = 50  # on CUDA the losses are read back (and checked) every this many steps: no per-step host sync


def autocast_dtype(precision: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype of a fine-tune step: bfloat16, or None for plain fp32.

    Example:
        >>> [autocast_dtype(p, d) for p, d in (("auto", "cuda"), ("auto", "cpu"), ("bf16", "cpu"), ("fp32", "cuda"))]
        [torch.bfloat16, None, torch.bfloat16, None]
    """
    if precision == "bf16" or (precision == "auto" and device_type == "cuda"):
        return torch.bfloat16
    return None


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)``.

    The KL term is averaged over the batch (``batchmean``), as in Hinton et al. (2015); for dense logits
    ``[N, classes, ...]`` (a segmentation network's) over every position, as the cross-entropy is.

    Example:
        >>> s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
        >>> pixels = kd_loss(s.permute(0, 2, 3, 1).reshape(-1, 3), t.permute(0, 2, 3, 1).reshape(-1, 3),
        ...                  torch.zeros(32, dtype=torch.long))
        >>> bool(torch.isclose(kd_loss(s, t, torch.zeros(2, 4, 4, dtype=torch.long)), pixels))
        True
    """
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="sum", log_target=True) / (student_logits.numel() // student_logits.shape[1])
    return alpha * t * t * kl + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: Images, batches: int, batch_size: int,
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
               temperature: float, alpha: float, where: str, teacher_logits: torch.Tensor | None = None,
               dtype: torch.dtype | None = None, check: bool = True, loss_fn: LossFn | None = None) -> torch.Tensor:
    """One SGD step: distillation from ``teacher`` (or from its cached ``teacher_logits`` on ``x``; plain
    cross-entropy with neither), or ``loss_fn(student outputs, teacher outputs, y)`` when given; the forward under
    ``dtype`` autocast when given; returns the loss (detached).

    With ``check`` a non-finite loss raises FloatingPointError, naming ``where``, before the weights are touched
    (reading the loss waits for the device: on CUDA :func:`run_steps` checks every SYNC_EVERY steps instead).
    """
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = student(x)
        if teacher_logits is None and teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)
        if loss_fn is not None:
            loss = loss_fn(logits, teacher_logits, y)
        elif teacher_logits is not None:
            loss = kd_loss(logits.float(), teacher_logits.float(), y, temperature, alpha)
        else:
            loss = F.cross_entropy(logits.float(), y)
    if check:
        _check_finite(float(loss.detach()), where)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.detach()


def _check_finite(value: float, where: str) -> None:
    if not math.isfinite(value):
        raise FloatingPointError(f"non-finite loss {value} at {where}")


def _cycle(split: Images, batch_size: int, augment: bool, generator: torch.Generator | None):
    while True:
        yielded = False
        for batch in split.batches(batch_size, shuffle=True, augment=augment, generator=generator, drop_last=True):
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the training split is empty: nothing to fine-tune on")


def make_optimizer(model: nn.Module, settings: RecoverySettings, total_steps: int, offset: int = 0,
                   lr: float | None = None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (Nesterov momentum where momentum > 0) with a cosine schedule over ``total_steps``; ``offset``
    continues the schedule for an optimizer re-made mid-way (the parameters changed shape)."""
    params = [p for p in model.parameters() if p.requires_grad]
    momentum = settings.momentum
    opt = torch.optim.SGD(params, lr=lr or settings.lr, momentum=momentum, weight_decay=settings.weight_decay,
                          nesterov=momentum > 0)
    total = max(1, total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s + offset, total) / total)))
    return opt, sched


def run_steps(student: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
              opt, sched, settings: RecoverySettings, teacher: nn.Module | None = None, *, steps: int | None = None,
              where: str = "fine-tune", step_guard: Callable[[], ContextManager] = contextlib.nullcontext,
              on_step: Callable[[int, float], None] | None = None, sync_every: int | None = None,
              loss_fn: LossFn | None = None) -> list[float]:
    """The one training loop of autoprune (a trial's recovery, the base model's training, the final retrain):
    ``train_step`` over ``(x, y, teacher_logits or None)`` batches, at most ``steps`` of them; returns the losses.
    ``step_guard`` is entered around every step (the device lock's shared side, when workers share a device).
    The losses are read back every ``sync_every`` steps (default: every step on the CPU, SYNC_EVERY on CUDA, so the
    device is not stalled each step); ``on_step`` sees every step, in order, when they are read back."""
    if teacher is not None:
        teacher.eval()
    student.train()
    losses: list[float] = []
    pending: list[torch.Tensor] = []  # losses not yet read back

    def read_back() -> None:
        values = torch.stack(pending).float().tolist() if pending else []
        pending.clear()
        for v in values:
            _check_finite(v, f"{where} step {len(losses)}")
            if on_step is not None:
                on_step(len(losses), v)
            losses.append(v)

    for step, (x, y, t_logits) in enumerate(batches):
        if steps is not None and step >= steps:
            break
        every = sync_every or (SYNC_EVERY if x.is_cuda else 1)
        with step_guard():
            loss = train_step(student, teacher, x, y, opt, sched, settings.temperature, settings.alpha,
                              f"{where} step {step}", teacher_logits=t_logits,
                              dtype=autocast_dtype(settings.precision, x.device.type), check=every == 1,
                              loss_fn=loss_fn)
        pending.append(loss)
        if len(pending) >= every:
            read_back()
    read_back()
    student.eval()
    return losses


def finetune(
    student: nn.Module,
    split: Images,
    *,
    steps: int,
    settings: RecoverySettings,
    teacher: nn.Module | None = None,
    augment: bool = False,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, float], None] | None = None,
    step_guard: Callable[[], ContextManager] = contextlib.nullcontext,
    stream: RecoveryStream | None = None,
    stream_start: int = 0,
    loss_fn: LossFn | None = None,
) -> float:
    """``steps`` steps of :func:`run_steps` under ``settings`` (lr, momentum, weight decay, batch size,
    temperature, alpha: a :class:`~autoprune.config.RecoveryConfig`); distillation from ``teacher`` if given,
    else plain cross-entropy.

    With a ``stream`` (:mod:`autoprune.train.teacher_stream`) the batches are the stream's from ``stream_start`` on and the
    teacher's logits come from its cache (``teacher`` is not run; ``split``, ``augment`` and ``generator`` are
    then the stream's business).
    Returns the mean loss over the last tenth of the steps. Raises FloatingPointError on a non-finite loss.
    """
    if steps <= 0:
        return float("nan")
    opt, sched = make_optimizer(student, settings, steps)
    if stream is not None:
        batches = stream.batches(split, stream_start)
    else:
        batches = ((x, y, None) for x, y in _cycle(split, settings.batch_size, augment, generator))
    losses = run_steps(student, batches, opt, sched, settings, teacher, steps=steps, where="fine-tune",
                       step_guard=step_guard, on_step=on_step, loss_fn=loss_fn)
    tail = losses[-max(1, steps // 10):]
    return sum(tail) / max(1, len(tail))
