"""Paired latency (autoprune.metrics.latency): the pure math, BatchNorm folding, every latency backend, contention, and
how a trial records and the tables show it."""

from __future__ import annotations

import doctest
import io
import math
import multiprocessing
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from torch import nn

from autoprune.cli.display import metrics_table
from autoprune.config import MeasureConfig, load_study
from autoprune.engine.record import Metrics, PlanRecord, TrialRecord
from autoprune.errors import AutopruneError, ConfigError
from autoprune.metrics import latency
from autoprune.metrics.device_lock import NoLock
from autoprune.metrics.latency import (
    LATENCY_BACKENDS,
    NOISY_DISPERSION,
    RETRY_FACTOR,
    Deployed,
    deploy,
    fold_batchnorm,
    is_noisy,
    paired_latency,
    paired_ratios,
    relative_iqr,
    summarise,
)
from autoprune.models.cifar_resnet import cifar_resnet
from autoprune.models.factory import QuickstartCNN

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(latency).failed == 0


# ------------------------------------------------------------------------------------------------ pure math
def test_relative_iqr_is_the_interquartile_range_over_the_median() -> None:
    assert relative_iqr([1.0, 1.0, 1.0, 1.0]) == 0.0
    # inclusive quartiles of 1..5 are 2 and 4, the median 3
    assert relative_iqr([5.0, 1.0, 3.0, 2.0, 4.0]) == pytest.approx(2 / 3)
    # one wild value barely moves it: the quartiles of 9 ones and a 100 are both 1
    assert relative_iqr([1.0] * 9 + [100.0]) == 0.0
    assert math.isnan(relative_iqr([1.0])) and math.isnan(relative_iqr([]))


def test_paired_ratios_divide_each_candidate_time_by_the_base_time_beside_it() -> None:
    assert paired_ratios([2.0, 3.0, 1.0], [1.0, 6.0, 1.0]) == [2.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="unpaired"):
        paired_ratios([1.0, 2.0], [1.0])


def test_noisy_above_the_threshold_or_unknown() -> None:
    assert not is_noisy(0.0) and not is_noisy(NOISY_DISPERSION)
    assert is_noisy(NOISY_DISPERSION + 1e-9) and is_noisy(float("nan")) and is_noisy(float("inf"))
    assert is_noisy(0.1, threshold=0.05)


def test_summarise_takes_medians_and_the_median_paired_ratio() -> None:
    # the third pair ran during a burst of load (both halves 10x slower): the times' medians and the ratio ignore it
    r = summarise([2.0, 2.2, 20.0, 1.8, 2.0], [1.0, 1.1, 10.0, 0.9, 1.0], backend="torchscript")
    assert (r.ms, r.base_ms, r.ratio, r.pairs, r.backend) == (2.0, 1.0, 2.0, 5, "torchscript")
    assert r.dispersion == 0.0 and r.reliable
    # ratios 1, 3, 1, 3: quartiles 1 and 3 around a median of 2 -> dispersion 1, not to be trusted
    noisy = summarise([1.0, 3.0, 1.0, 3.0], [1.0, 1.0, 1.0, 1.0])
    assert noisy.ratio == 2.0 and noisy.dispersion == 1.0 and not noisy.reliable


# ------------------------------------------------------------------------------------ deployment runtimes
def _with_trained_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding has something to get wrong."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model


@pytest.mark.parametrize("make, shape", [(lambda: QuickstartCNN(width=8), (2, 1, 8, 8)),
                                         (lambda: cifar_resnet(20), (2, 3, 32, 32))], ids=["quickstart", "resnet20"])
def test_folded_model_matches_the_unfolded_one_and_has_no_batchnorm(make, shape) -> None:
    torch.manual_seed(0)
    model = _with_trained_bn(make()).train()
    x = torch.randn(*shape)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not folded.training
    with torch.no_grad():
        want = model.eval()(x)
        assert (folded(x) - want).abs().max() < 1e-4
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the model itself must stay unfolded"


def test_a_model_fx_cannot_trace_is_measured_unfolded_with_a_warning() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with pytest.warns(UserWarning, match="not folded"):
        folded = fold_batchnorm(DataDependent())
    assert isinstance(folded.bn, nn.BatchNorm2d) and not folded.training


@pytest.mark.parametrize("backend", LATENCY_BACKENDS.names())
def test_every_backend_gives_positive_times_and_a_ratio(backend: str) -> None:
    torch.manual_seed(0)
    small, big = QuickstartCNN(width=4), QuickstartCNN(width=32)
    r = paired_latency(small, big, torch.randn(1, 1, 8, 8), repeats=5, warmup=2, backend=backend)
    assert r.backend == backend and r.pairs >= 5
    assert r.ms > 0 and r.base_ms > 0 and r.ratio > 0 and r.dispersion >= 0
    assert r.ratio == pytest.approx(r.ms / r.base_ms, rel=1.0)  # the same order as the medians' ratio


@pytest.mark.parametrize("backend", LATENCY_BACKENDS.names())
def test_every_backend_runs_the_deployed_model_to_the_same_outputs(backend: str) -> None:
    torch.manual_seed(0)
    model, x = _with_trained_bn(QuickstartCNN(width=8)).eval(), torch.randn(1, 1, 8, 8)
    run = deploy(model, x, backend).run
    with torch.inference_mode():
        out = run()
    out = torch.as_tensor(out[0] if isinstance(out, list) else out)
    with torch.no_grad():
        assert (out - model(x)).abs().max() < 1e-4


def test_a_deployed_base_is_reused_but_not_under_another_backend() -> None:
    model, x = QuickstartCNN(width=4), torch.randn(1, 1, 8, 8)
    base = deploy(model, x, "torch")
    assert deploy(base, x, "torch") is base
    with pytest.raises(ValueError, match="deployed with 'torch'"):
        paired_latency(model, base, x, repeats=2, warmup=0, backend="torchscript")


def test_an_unknown_backend_is_a_config_error_naming_the_valid_ones(write_study) -> None:
    with pytest.raises(ConfigError) as err:
        load_study(write_study({"measure": {"latency_backend": "tensorrt"}}))
    text = str(err.value)
    assert "measure.latency_backend" in text and "tensorrt" in text
    assert "onnxruntime, torch, torchscript" in text
    assert MeasureConfig().latency_backend == "torch"
    with pytest.raises(AutopruneError, match="valid names: onnxruntime, torch, torchscript"):
        deploy(QuickstartCNN(width=4), torch.randn(1, 1, 8, 8), "tvm")


def test_onnxruntime_missing_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(AutopruneError, match=r"onnxruntime needs onnxruntime: pip install 'autoprune\[export\]'"):
        deploy(QuickstartCNN(width=4), torch.randn(1, 1, 8, 8), "onnxruntime")


def test_onnxruntime_sessions_do_not_spin_between_runs() -> None:
    """Two sessions timed alternately: one's spin-waiting threads would hold the cores during the other's run
    (measured on 2 idle cores: relative IQR of the paired ratios 0.79 with spinning, 0.05-0.12 without)."""
    pytest.importorskip("onnxruntime")
    import io

    from autoprune.metrics.latency import deploy_onnx, onnx_session

    buf = io.BytesIO()
    torch.onnx.export(QuickstartCNN(width=4).eval(), (torch.randn(1, 1, 8, 8),), buf, input_names=["input"],
                      dynamo=False)
    session = onnx_session(buf.getvalue())
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert deploy_onnx(buf.getvalue(), torch.randn(1, 1, 8, 8)) is not None


# ------------------------------------------------------------------------------------------------ contention
def _spin(started, seconds: float) -> None:
    started.set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_model_against_itself_on_a_contended_machine_is_near_1_or_flagged() -> None:
    """A process spinning on a core and a thread of matmuls compete with the measurement: the paired ratio of a
    model with itself must stay near 1, or the result must say it cannot be trusted; never a wild value."""
    mp = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    started = mp.Event()
    spinner = mp.Process(target=_spin, args=(started, 30.0), daemon=True)
    spinner.start()
    assert started.wait(20), "the spinning process did not start"
    stop = threading.Event()

    def matmuls() -> None:
        a = torch.randn(192, 192)
        while not stop.is_set():
            a @ a

    thread = threading.Thread(target=matmuls, daemon=True)
    thread.start()
    try:
        model, x = QuickstartCNN(width=16), torch.randn(1, 1, 8, 8)
        deployed = deploy(model, x, "torch")
        results = [paired_latency(deployed, deployed, x, repeats=8, warmup=1) for _ in range(3)]
    finally:
        stop.set()
        thread.join(5)
        spinner.terminate()
        spinner.join(5)
    for r in results:
        assert (0.5 <= r.ratio <= 2.0) or not r.reliable, r
        assert r.reliable == (r.dispersion <= NOISY_DISPERSION)


def test_a_noisy_measurement_is_repeated_with_more_pairs_then_flagged() -> None:
    """A candidate whose passes take 0.2 ms or 3 ms at random, against a steady base: the ratios scatter, so the
    measurement is retried once with RETRY_FACTOR times the pairs and then recorded as unreliable."""
    gen = torch.Generator().manual_seed(0)

    def erratic() -> None:
        time.sleep(0.003 if torch.rand(1, generator=gen).item() < 0.5 else 0.0002)

    a, b = Deployed("torch", erratic), Deployed("torch", lambda: time.sleep(0.001))
    r = paired_latency(a, b, torch.zeros(1), repeats=6, warmup=0)
    assert not r.reliable and r.dispersion > NOISY_DISPERSION
    assert r.pairs == 6 * RETRY_FACTOR


# ------------------------------------------------------------------------------------- trials and tables
def test_a_trial_records_the_paired_latency_and_the_backend() -> None:
    from autoprune.engine.trial import _measure

    x = torch.randn(1, 1, 8, 8)
    base = QuickstartCNN(width=16)
    ctx = SimpleNamespace(study=SimpleNamespace(config=SimpleNamespace(measure=MeasureConfig(
        latency_repeats=4, latency_warmup=1, latency_backend="torchscript"))), lock=NoLock(), latency_input=x,
        example=x, latency_base=deploy(base, x, "torchscript"))
    model = QuickstartCNN(width=4).train()
    m = _measure(ctx, model, 0.9)
    assert m.latency_ms > 0 and m.latency_ratio > 0 and m.latency_dispersion >= 0
    assert isinstance(m.latency_reliable, bool)
    assert model.training, "measuring must leave the trial's model as it was"


def test_paired_latency_fields_survive_the_store_and_old_records_stay_as_they_were() -> None:
    new = TrialRecord(Metrics(0.9, 100, 10, 0.5, 0.8, 0.03, False), PlanRecord("l1", {"g": 0.3},
                                                                               latency_backend="onnxruntime"))
    back = TrialRecord.from_user_attrs(new.to_user_attrs())
    assert back.metrics == new.metrics and back.plan.latency_backend == "onnxruntime"
    entry = TrialRecord.from_user_attrs(new.to_user_attrs(), number=3).entry()
    assert (entry["latency_ratio"], entry["latency_dispersion"], entry["latency_reliable"]) == (0.8, 0.03, False)
    old = TrialRecord(Metrics(0.9, 100, 10, 0.5), PlanRecord("l1", {"g": 0.3}))
    attrs = old.to_user_attrs()
    assert set(attrs["metrics"]) == {"accuracy", "macs", "params", "latency_ms"}
    assert "latency_backend" not in attrs["plan"]
    read = TrialRecord.from_user_attrs(attrs)
    assert read.metrics.latency_ratio is None and read.metrics.latency_reliable is None
    assert read.plan.latency_backend is None and "latency_ratio" not in read.entry()


def _render(table) -> str:
    out = Console(file=io.StringIO(), width=200, color_system=None)
    out.print(table)
    return out.file.getvalue()


def test_the_table_shows_the_paired_speed_up_the_backend_and_unreliable_latencies() -> None:
    base = {"accuracy": 0.95, "macs": 1000, "params": 100, "latency_ms": 1.0, "latency_backend": "torchscript",
            "latency_reliable": True}
    plan = {"scorer": "l1", "latency_backend": "torchscript"}
    rows = [{"trial": 1, "accuracy": 0.9, "macs": 500, "params": 50, "latency_ms": 0.7, "latency_ratio": 0.5,
             "latency_reliable": True, "plan": plan},
            {"trial": 2, "accuracy": 0.8, "macs": 250, "params": 25, "latency_ms": 0.4, "latency_ratio": 0.25,
             "latency_reliable": False, "plan": plan},
            {"trial": 3, "accuracy": 0.7, "macs": 200, "params": 20, "latency_ms": 0.8, "plan": {"scorer": "l1"}}]
    text = _render(metrics_table("front", base, rows))
    assert "2.00x" in text and "1.43x" not in text, "trial 1: the paired ratio 0.5, not base ms / trial ms"
    assert "0.400?" in text and "4.00x?" in text
    assert "2.00x?" not in text and "0.700?" not in text
    assert "~1.25x" in text  # an older record without a ratio: base ms / trial ms, marked unpaired
    assert "latency on torchscript" in text and "unreliable" in text and "~ unpaired" in text


def test_a_study_on_torchscript_records_the_backend_in_its_reference_and_every_trial(write_study, tmp_path) -> None:
    from autoprune.engine.context import prepare
    from autoprune.engine.trial import run_trial

    torch.manual_seed(0)
    checkpoint = tmp_path / "base.pt"
    torch.save(QuickstartCNN(width=8).state_dict(), checkpoint)
    study = load_study(write_study({
        "model": {"name": "quickstart_cnn", "kwargs": {"width": 8}, "checkpoint": str(checkpoint)},
        "recovery": {"bn_recalibration_batches": 1, "steps": 1, "batch_size": 32, "teacher_cache": False},
        "measure": {"latency_repeats": 3, "latency_warmup": 1, "latency_backend": "torchscript"}}))
    ctx = prepare(study)
    assert ctx.reference["latency_backend"] == "torchscript" and ctx.reference["latency_ms"] > 0
    record = run_trial(ctx, {"ratio.features.0": 0.5, "ratio.features.3": 0.5, "ratio.features.7": 0.0,
                             "scorer": "l1"})
    assert record.plan.latency_backend == "torchscript"
    assert record.metrics.latency_ratio is not None and record.metrics.latency_ratio > 0
    assert TrialRecord.from_user_attrs(record.to_user_attrs()).plan.latency_backend == "torchscript"


def test_a_resumed_study_must_measure_latency_as_its_reference_was(write_study, tmp_path) -> None:
    import optuna

    from autoprune.engine.storage import create_or_load

    url, sampler = f"sqlite:///{tmp_path / 'lat.db'}", optuna.samplers.RandomSampler()
    study = lambda **m: load_study(write_study({"measure": m}))  # noqa: E731
    create_or_load(study(), url, "s", sampler, {"latency_backend": "torch", "latency_batch_size": 1})
    create_or_load(study(latency_repeats=7), url, "s", sampler, {})  # repeats change noise, not the meaning
    with pytest.raises(AutopruneError, match="latency_backend 'torch', this file asks for 'torchscript'") as err:
        create_or_load(study(latency_backend="torchscript"), url, "s", sampler, {})
    assert err.value.field == "measure.latency_backend"
    with pytest.raises(AutopruneError, match="latency_batch_size 1, this file asks for 8") as err:
        create_or_load(study(latency_batch_size=8), url, "s", sampler, {})
    assert err.value.field == "measure.latency_batch_size"
    # a study whose reference predates the settings is not checked on them
    create_or_load(study(), url, "old", sampler, {"latency_ms": 1.0})
    create_or_load(study(latency_backend="torchscript", latency_batch_size=8), url, "old", sampler, {})
