"""The CUDA path's parts that run on a CPU: which device a worker gets, bf16 autocast in the fine-tune (CPU bf16),
the precision setting's place in the study fingerprint, and the errors for a missing or unknown device."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from autoprune.cli import main
from autoprune.config import RecoveryConfig, load_study
from autoprune.data.splits import Split
from autoprune.device import gpu_for_worker, memory_format, resolve_device, to_device
from autoprune.errors import AutopruneError
from autoprune.train.distill import autocast_dtype, finetune


def test_workers_take_the_gpus_in_turn():
    assert [gpu_for_worker(i, 3) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert gpu_for_worker(None, 8) == 0
    with pytest.raises(AutopruneError, match="CUDA is not available"):
        gpu_for_worker(0, 0)


def test_resolve_device_gives_worker_i_gpu_i_mod_count_and_turns_on_cudnn_benchmark(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert resolve_device("cuda", 3) == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert chosen == [torch.device("cuda", 1), torch.device("cuda", 0)] and torch.backends.cudnn.benchmark


def test_missing_cuda_and_unknown_devices_are_one_line_errors(monkeypatch, write_study):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AutopruneError, match="--device cuda was asked for but CUDA is not available here"):
        resolve_device("cuda", 1)
    with pytest.raises(AutopruneError, match="unknown device 'tpu'; expected cpu or cuda"):
        resolve_device("tpu")
    result = CliRunner().invoke(main, ["search", str(write_study()), "--device", "cuda"])
    assert result.exit_code == 2 and "CUDA is not available" in result.stderr
    assert [ln for ln in result.stderr.splitlines() if ln.strip()] == [
        "autoprune: error: device: --device cuda was asked for but CUDA is not available here"]


def test_channels_last_only_on_cuda():
    assert memory_format(torch.device("cpu")) == torch.contiguous_format
    assert memory_format(torch.device("cuda", 0)) == torch.channels_last
    conv = to_device(nn.Conv2d(3, 4, 3), torch.device("cpu"))
    assert conv.weight.is_contiguous()


def test_precision_auto_is_bf16_on_cuda_only():
    assert autocast_dtype("auto", "cuda") is torch.bfloat16 and autocast_dtype("auto", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16 and autocast_dtype("fp32", "cuda") is None


def _run(precision: str) -> tuple[list[torch.dtype], nn.Module, float]:
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    split = Split(x, (x[:, 0].mean((1, 2)) > 0).long(), torch.zeros(3), torch.ones(3))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 2))
    seen: list[torch.dtype] = []
    model[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    loss = finetune(model, split, steps=6, settings=RecoveryConfig(batch_size=16, lr=0.05, precision=precision),
                    generator=torch.Generator().manual_seed(0))
    return seen, model, loss


def test_bf16_fine_tune_runs_convolutions_in_bf16_and_keeps_fp32_weights():
    seen_bf16, model_bf16, loss_bf16 = _run("bf16")
    seen_auto, model_auto, loss_auto = _run("auto")  # on the CPU: fp32
    assert set(seen_bf16) == {torch.bfloat16} and len(seen_bf16) == 6
    assert set(seen_auto) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in model_bf16.parameters())
    assert torch.isfinite(torch.tensor(loss_bf16)) and loss_bf16 != loss_auto  # really another arithmetic
    assert loss_bf16 == pytest.approx(loss_auto, abs=0.05)


def test_precision_enters_the_fingerprint_only_when_set(write_study):
    auto = load_study(write_study()).fingerprint()
    assert load_study(write_study({"recovery": {**_tiny_recovery(), "precision": "auto"}})).fingerprint() == auto
    assert load_study(write_study({"recovery": {**_tiny_recovery(), "precision": "bf16"}})).fingerprint() != auto


def _tiny_recovery() -> dict:
    from tests.conftest import TINY_STUDY

    return dict(TINY_STUDY["recovery"])


def test_losses_read_back_in_batches_reach_on_step_in_order_and_a_non_finite_one_names_its_step():
    """The CUDA loop (losses read back every few steps, not every step), run on the CPU with sync_every=4."""
    from autoprune.train.distill import make_optimizer, run_steps

    torch.manual_seed(0)
    model, settings = nn.Linear(4, 2), RecoveryConfig(batch_size=8, lr=0.1)
    x, y = torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
    seen = []
    opt, sched = make_optimizer(model, settings, 10)
    losses = run_steps(model, ((x, y, None) for _ in range(10)), opt, sched, settings, sync_every=4,
                       on_step=lambda i, v: seen.append((i, v)))
    assert [i for i, _ in seen] == list(range(10)) and [v for _, v in seen] == losses
    assert losses[-1] < losses[0]
    bad = [(x if i != 6 else x * float("nan"), y, None) for i in range(10)]
    with pytest.raises(FloatingPointError, match="non-finite loss nan at fine-tune step 6"):
        run_steps(model, iter(bad), *make_optimizer(model, settings, 10), settings, sync_every=4)
