"""Checks against the shared CIFAR-10 copy and pretrained ResNets (skipped, saying why, where ../shared is absent)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from autoprune.cli import main
from tests.conftest import CIFAR, ROOT, WEIGHTS, need_shared


@pytest.mark.shared
def test_resnet20_base_matches_published_accuracy_on_full_test_split():
    need_shared(CIFAR / "test.npz", WEIGHTS / "resnet20.pt")
    result = CliRunner().invoke(main, [
        "evaluate", str(ROOT / "studies" / "cifar10_resnet20.yaml"), "--base", "--split", "test-full",
        "--checkpoint", str(WEIGHTS / "resnet20.pt"), "--data-root", str(CIFAR), "--json",
        "--set", "measure.latency_batch_size=1", "--set", "data.train_subset=512"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["accuracy"] == pytest.approx(0.9173, abs=0.0005)
    assert out["params"] == 269722
    assert out["macs"] == pytest.approx(41e6, rel=0.01)
    assert out["images"] == 10000
    assert out["data"]["val_source"] == "test" and out["data"]["sizes"]["val"] == 5000
