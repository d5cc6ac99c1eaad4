"""Measurements: MACs (fvcore, per image), parameter count, latency, and accuracy on a hand-built split."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autoprune.data.splits import Split
from autoprune.metrics.costs import accuracy, count_macs, count_params, latency_ms, measure
from autoprune.models.factory import create_model

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def test_resnet18_macs_match_torch_flop_counter_and_the_published_figure() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=1000).eval()
    x = torch.randn(1, 3, 224, 224)
    macs = count_macs(model, x)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    reference = counter.get_total_flops() / 2  # torch counts a multiply-add as two flops
    assert macs == pytest.approx(reference, rel=0.01)
    assert macs == pytest.approx(1.814e9, rel=0.01)
    assert not model.training, "count_macs must restore the model's mode"


def test_macs_are_per_image_whatever_the_batch_size() -> None:
    torch.manual_seed(0)
    model = create_model("quickstart_cnn", num_classes=10)
    x = torch.randn(4, 1, 8, 8)
    one = count_macs(model, x[:1])
    assert one > 0
    assert count_macs(model, x) == one
    # conv layers dominate: 8*8*9*(1*32 + 32*64) + 4*4*9*64*64 = 1_769_472 multiply-adds
    assert one >= 1_769_472
    assert model.training, "count_macs must restore training mode"


def test_count_macs_by_module_breaks_the_total_down() -> None:
    model = create_model("quickstart_cnn", num_classes=10)
    total, breakdown = count_macs(model, torch.randn(1, 1, 8, 8), by_module=True)
    assert breakdown[""] == total
    assert breakdown["features.0"] == 8 * 8 * 9 * 32
    assert breakdown["classifier"] == 64 * 10


def test_count_params_equals_the_sum_of_parameter_sizes() -> None:
    model = create_model("quickstart_cnn", num_classes=10)
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    assert count_params(nn.Linear(5, 3)) == 18


def test_measure_reports_macs_params_and_positive_latency() -> None:
    torch.manual_seed(0)
    model = create_model("quickstart_cnn", num_classes=10)
    x = torch.randn(4, 1, 8, 8)
    result = measure(model, x, repeats=3, warmup=1)
    assert sorted(result) == ["latency_ms", "macs", "params"]
    assert result["macs"] == count_macs(model, x[:1])
    assert result["params"] == count_params(model)
    assert result["latency_ms"] > 0
    with_batch = measure(model, x, latency_batch_size=2, repeats=3, warmup=1)
    assert with_batch["macs"] == result["macs"]


def test_latency_ms_is_positive_and_restores_training_mode() -> None:
    model = create_model("quickstart_cnn", num_classes=10).train()
    assert latency_ms(model, torch.randn(1, 1, 8, 8), repeats=3, warmup=1) > 0
    assert model.training


class _ReadsItsLabel(nn.Module):
    """Predicts the class written in each image's first pixel."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long(), self.num_classes).float()


def test_accuracy_equals_the_hand_computed_fraction() -> None:
    predicted = torch.tensor([0, 1, 2, 2, 1, 0, 3, 3, 2, 1, 0])
    labels = torch.tensor([0, 1, 1, 2, 1, 3, 3, 0, 2, 2, 0])
    correct = 7  # positions 0, 1, 3, 4, 6, 8, 10
    assert int((predicted == labels).sum()) == correct
    x = torch.zeros(len(labels), 1, 2, 2)
    x[:, 0, 0, 0] = predicted.float()
    split = Split(x, labels, torch.zeros(1), torch.ones(1))
    model = _ReadsItsLabel(4).train()
    for batch_size in (256, 4, 1):  # one batch, a ragged last batch, one image at a time
        assert accuracy(model, split, batch_size=batch_size) == pytest.approx(correct / len(labels))
    assert model.training, "accuracy must restore training mode"


def test_accuracy_of_a_constant_classifier_is_the_share_of_that_class() -> None:
    labels = torch.tensor([2, 0, 2, 1, 2, 2, 0, 1, 1, 2])
    split = Split(torch.rand(len(labels), 1, 2, 2), labels, torch.zeros(1), torch.ones(1))

    class AlwaysTwo(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([0.0, 0.0, 1.0]).expand(x.shape[0], 3)

    assert accuracy(AlwaysTwo(), split, batch_size=3) == pytest.approx(5 / 10)
