"""Recovery: the distillation loss against hand computations, BN re-calibration, and the fine-tune loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.config import RecoveryConfig
from autoprune.data.splits import Split
from autoprune.metrics.costs import accuracy
from autoprune.train.distill import finetune, kd_loss, recalibrate_bn

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


# ----------------------------------------------------------------------------------------------------- kd_loss
STUDENT = [[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]
TEACHER = [[0.5, 3.0, -1.0], [2.0, 0.5, 1.0]]
LABELS = [1, 0]



def _sgd(lr: float, temperature: float = 4.0, alpha: float = 0.9) -> RecoveryConfig:
    """Fine-tune settings for the tiny separable problem: batches of 16 at learning rate ``lr``."""
    return RecoveryConfig(lr=lr, batch_size=16, temperature=temperature, alpha=alpha)

def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _hand_kd(student, teacher, labels, t: float, alpha: float) -> float:
    kl = 0.0
    ce = 0.0
    for s_row, t_row, y in zip(student, teacher, labels):
        p_t = _softmax([v / t for v in t_row])
        p_s = _softmax([v / t for v in s_row])
        kl += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
        ce += -math.log(_softmax(s_row)[y])
    n = len(labels)
    return alpha * t * t * kl / n + (1 - alpha) * ce / n


def test_kd_loss_matches_hand_computation() -> None:
    s = torch.tensor(STUDENT, dtype=torch.float64)
    t = torch.tensor(TEACHER, dtype=torch.float64)
    y = torch.tensor(LABELS)
    got = kd_loss(s, t, y, temperature=2.0, alpha=0.7)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(_hand_kd(STUDENT, TEACHER, LABELS, 2.0, 0.7), rel=1e-10)


def test_kd_loss_with_alpha_zero_is_cross_entropy() -> None:
    s = torch.tensor(STUDENT, dtype=torch.float64)
    t = torch.tensor(TEACHER, dtype=torch.float64)
    y = torch.tensor(LABELS)
    expected = sum(-math.log(_softmax(row)[c]) for row, c in zip(STUDENT, LABELS)) / 2
    got = kd_loss(s, t, y, temperature=4.0, alpha=0.0)
    assert float(got) == pytest.approx(expected, rel=1e-10)
    assert torch.allclose(got, F.cross_entropy(s, y))


def test_kd_loss_is_zero_when_student_equals_teacher_and_alpha_is_one() -> None:
    s = torch.tensor(STUDENT, dtype=torch.float64)
    got = kd_loss(s, s.clone(), torch.tensor(LABELS), temperature=3.0, alpha=1.0)
    assert float(got) == pytest.approx(0.0, abs=1e-12)


def test_kd_loss_scales_the_kl_term_by_temperature_squared() -> None:
    s = torch.tensor(STUDENT, dtype=torch.float64)
    t = torch.tensor(TEACHER, dtype=torch.float64)
    y = torch.tensor(LABELS)
    for temperature in (1.0, 4.0):
        got = float(kd_loss(s, t, y, temperature=temperature, alpha=1.0))
        assert got == pytest.approx(_hand_kd(STUDENT, TEACHER, LABELS, temperature, 1.0), rel=1e-10)


# ----------------------------------------------------------------------------------------------- recalibrate_bn
def _gaussian_split(n: int, channel_means: list[float], seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    c = len(channel_means)
    x = torch.randn(n, c, 4, 4, generator=g) + torch.tensor(channel_means).view(1, c, 1, 1)
    y = torch.zeros(n, dtype=torch.long)
    return Split(x, y, torch.zeros(c), torch.ones(c))


def test_recalibrate_bn_replaces_stale_running_stats_with_the_data_statistics() -> None:
    split = _gaussian_split(64, [0.3, -0.2, 0.1], seed=0)
    model = nn.Sequential(nn.BatchNorm2d(3))
    bn = model[0]
    with torch.no_grad():
        bn.running_mean.fill_(100.0)
        bn.running_var.fill_(50.0)

    # 4 batches of 16 cover all 64 images once: the cumulative average of batch means is the data mean
    recalibrate_bn(model, split, batches=4, batch_size=16, generator=torch.Generator().manual_seed(0))

    data = split.prepare(split.x)
    assert torch.allclose(bn.running_mean, data.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, data.var(dim=(0, 2, 3)), rtol=0.1)
    assert bn.momentum == 0.1, "the BN momentum must be restored after recalibration"
    assert not model.training


def test_recalibrate_bn_with_zero_batches_leaves_stats_alone() -> None:
    split = _gaussian_split(32, [0.0, 0.0], seed=1)
    model = nn.Sequential(nn.BatchNorm2d(2))
    with torch.no_grad():
        model[0].running_mean.fill_(100.0)
    recalibrate_bn(model, split, batches=0, batch_size=16)
    assert torch.equal(model[0].running_mean, torch.full((2,), 100.0))


# ------------------------------------------------------------------------------------------------- finetune
def _separable_split(n: int = 64, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (2.0 * y.float() - 1.0)[:, None] * torch.tensor([1.5, -1.0]) + 0.3 * torch.randn(n, 2, generator=g)
    return Split(x[:, :, None, None], y, torch.zeros(2), torch.ones(2))


def _linear_classifier(wrong_way_round: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    if wrong_way_round:  # start confidently wrong, so there is a lot of loss to remove
        with torch.no_grad():
            model[1].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
            model[1].bias.zero_()
    return model


def _ce(model: nn.Module, split: Split) -> float:
    model.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(split.prepare(split.x)), split.y))


def test_finetune_reduces_cross_entropy_on_a_separable_problem() -> None:
    split = _separable_split()
    model = _linear_classifier()
    before = _ce(model, split)
    assert before > 1.0
    tail = finetune(model, split, steps=40, settings=_sgd(0.1), generator=torch.Generator().manual_seed(0))
    after = _ce(model, split)
    assert after < 0.1 * before
    assert tail < before
    assert accuracy(model, split) == 1.0
    assert not model.training


def test_finetune_distils_from_a_teacher() -> None:
    split = _separable_split()
    teacher = _linear_classifier(wrong_way_round=False)
    finetune(teacher, split, steps=40, settings=_sgd(0.1), generator=torch.Generator().manual_seed(0))
    assert accuracy(teacher, split) == 1.0
    student = _linear_classifier()
    teacher_before = copy.deepcopy(teacher.state_dict())
    before = _ce(student, split)
    finetune(student, split, steps=40, settings=_sgd(0.1, temperature=2.0), teacher=teacher,
             generator=torch.Generator().manual_seed(1))
    assert _ce(student, split) < 0.5 * before
    assert accuracy(student, split) == 1.0
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), "the teacher must not be trained"


def test_finetune_with_zero_steps_returns_nan_and_leaves_weights() -> None:
    split = _separable_split()
    model = _linear_classifier()
    before = copy.deepcopy(model.state_dict())
    assert math.isnan(finetune(model, split, steps=0, settings=_sgd(0.1)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_finetune_raises_floating_point_error_when_a_huge_lr_blows_the_loss_up() -> None:
    split = _separable_split()
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        finetune(_linear_classifier(), split, steps=10, settings=_sgd(1e30),
                 generator=torch.Generator().manual_seed(0))


def test_finetune_raises_floating_point_error_on_infinite_inputs() -> None:
    split = _separable_split(n=16)
    split.x[3, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="step 0"):
        finetune(_linear_classifier(), split, steps=5, settings=_sgd(0.1))


def test_finetune_on_an_empty_split_raises_instead_of_looping_forever() -> None:
    # (a non-empty split smaller than one batch trains on the short batch: Split.batches yields it)
    split = _separable_split(n=8).subset(torch.arange(0))
    with pytest.raises(ValueError, match="training split is empty"):
        finetune(_linear_classifier(), split, steps=5, settings=_sgd(0.1))
