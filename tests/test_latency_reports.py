"""How the commands report latency: a speed-up is only ever the paired one (model and base timed interleaved, on the
study's backend), an unreliable measurement is marked, and status counts the trials measured on a contended
machine."""

from __future__ import annotations

import doctest
import importlib
from types import SimpleNamespace

import pytest
import torch

from autoprune.cli import display
from autoprune.config import MeasureConfig
from autoprune.deliver import finalize
from autoprune.engine.record import Metrics, TrialRecord
from autoprune.engine.status import latency_unreliable
from autoprune.metrics.device_lock import NoLock
from autoprune.metrics.latency import LatencyResult
from autoprune.models.factory import QuickstartCNN

measure = importlib.import_module("autoprune.metrics.costs")  # the package re-exports the function measure() as its name
pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

NOISY = LatencyResult(ms=0.5, base_ms=1.0, ratio=0.5, dispersion=0.9, reliable=False, backend="torchscript", pairs=80)
QUIET = LatencyResult(ms=0.5, base_ms=1.0, ratio=0.4, dispersion=0.02, reliable=True, backend="torchscript", pairs=10)


def test_the_examples_in_the_docstrings_hold() -> None:
    for module in (measure, display):
        assert doctest.testmod(module).failed == 0


def test_paired_fields_give_the_speed_up_from_the_paired_ratio_not_the_two_medians() -> None:
    f = measure.paired_fields(QUIET)
    assert f["latency_speedup"] == pytest.approx(2.5)  # 1 / 0.4, although base_ms / ms is 2.0
    assert (f["latency_ms"], f["base_latency_ms"], f["latency_dispersion"]) == (0.5, 1.0, 0.02)
    assert f["latency_reliable"] is True and f["latency_backend"] == "torchscript" and f["latency_pairs"] == 10


def test_an_unreliable_latency_is_marked_in_every_figure() -> None:
    text = display.paired_latency_text(measure.paired_fields(NOISY))
    assert "0.500? ms" in text and "2.00x? faster" in text and "(1.000? ms)" in text
    assert "torchscript" in text and "dispersion 0.900" in text
    quiet = display.paired_latency_text(measure.paired_fields(QUIET))
    assert "?" not in quiet and "2.50x faster" in quiet


def test_the_base_against_itself_shows_no_speed_up() -> None:
    text = display.paired_latency_text(measure.paired_fields(QUIET), against_base=False)
    assert "faster" not in text and "paired with itself" in text and "dispersion 0.020" in text


def test_a_speed_up_without_a_paired_ratio_is_marked_unpaired() -> None:
    base = {"accuracy": 0.9, "macs": 100, "params": 10, "latency_ms": 1.0}
    old = {"trial": 0, "accuracy": 0.8, "macs": 50, "params": 5, "latency_ms": 0.8}
    paired = dict(old, trial=1, latency_ratio=0.5)
    assert display._latency_cells(old, base)[1] == "~1.25x"
    assert display._latency_cells(paired, base)[1] == "2.00x"
    assert "~ unpaired" in display._latency_caption(base, [old, paired])
    assert "unpaired" not in display._latency_caption(base, [paired])


def _record(number: int, reliable: bool | None, metrics: bool = True) -> TrialRecord:
    m = Metrics(0.9, 100, 10, 0.5, None if reliable is None else 0.5, None if reliable is None else 0.1, reliable)
    return TrialRecord.from_user_attrs({"metrics": m.to_dict()} if metrics else {}, number=number, state="COMPLETE")


def test_latency_unreliable_counts_only_trials_flagged_unreliable() -> None:
    records = [_record(0, False), _record(1, True), _record(2, None), _record(3, False), _record(4, None, False)]
    assert latency_unreliable(records) == 2
    assert latency_unreliable([]) == 0


def _ctx(backend: str = "torch") -> SimpleNamespace:
    torch.manual_seed(0)
    measure_cfg = MeasureConfig(latency_repeats=3, latency_warmup=1, latency_backend=backend)
    return SimpleNamespace(study=SimpleNamespace(config=SimpleNamespace(measure=measure_cfg)),
                           example=torch.randn(1, 1, 8, 8), base=QuickstartCNN(width=8).eval(), lock=NoLock())


def test_retrain_times_the_model_paired_with_the_base_at_each_batch_size_on_the_study_backend(monkeypatch) -> None:
    ctx, model, calls = _ctx("torchscript"), QuickstartCNN(width=4).eval(), []

    def fake(m, base, x, repeats, warmup, backend):
        calls.append((m, base, tuple(x.shape), repeats, backend))
        return QUIET

    monkeypatch.setattr(finalize, "paired_latency", fake)
    paired = finalize.paired_with_base(model, ctx, 4)
    assert set(paired) == {"b1", "b4"}
    assert [(c[0], c[1], c[2], c[4]) for c in calls] == [(model, ctx.base, (1, 1, 8, 8), "torchscript"),
                                                         (model, ctx.base, (4, 1, 8, 8), "torchscript")]
    speed = finalize._speedups({"macs": 100, "params": 10}, {"macs": 50, "params": 5}, paired)
    assert speed["latency_speedup_b1"] == pytest.approx(2.5) and speed["latency_speedup_b4"] == pytest.approx(2.5)
    section = finalize._latency_section(paired)
    assert section["backend"] == "torchscript"
    assert {"ms", "base_ms", "ratio", "speedup", "dispersion", "reliable", "pairs"} <= set(section["b1"])


def test_retrain_measures_for_real_on_a_tiny_model() -> None:
    ctx = _ctx()
    paired = finalize.paired_with_base(QuickstartCNN(width=4).eval(), ctx, 2)
    assert all(r.backend == "torch" and r.ms > 0 and r.base_ms > 0 and r.ratio > 0 for r in paired.values())


def _report(paired: dict[str, LatencyResult]) -> dict:
    base_m = {"test_accuracy": 0.9, "macs": 100, "params": 10}
    final_m = {"test_accuracy": 0.8, "macs": 50, "params": 5}
    return {"base": base_m, "final": final_m, "speedup": finalize._speedups(base_m, final_m, paired),
            "latency": finalize._latency_section(paired)}


def test_retrain_summary_marks_an_unreliable_speed_up_and_says_why() -> None:
    lines = display.retrain_summary(_report({"b1": NOISY, "b64": QUIET}))
    assert "b1 2.00x?, b64 2.50x faster" in lines[0]
    assert "paired with the base on torchscript" in lines[0]
    assert lines[1] == display.UNRELIABLE_NOTE
    assert display.retrain_summary(_report({"b1": QUIET}))[1:] == []


def test_retrain_summary_of_a_report_without_paired_latency_says_it_is_unpaired() -> None:
    report = {"base": {"test_accuracy": 0.9, "macs": 100}, "final": {"test_accuracy": 0.8, "macs": 50},
              "speedup": {"macs_reduction": 2.0, "latency_speedup_b1": 1.5}}
    (line,) = display.retrain_summary(report)
    assert "b1 ~1.50x" in line and "unpaired" in line


def test_the_report_page_notes_the_backend_dispersion_and_unreliable_batches() -> None:
    note = finalize._latency_note(finalize._latency_section({"b1": NOISY, "b64": QUIET}))
    assert "torchscript" in note and "b1 0.900" in note and "Unreliable at b1:" in note
    assert "Unreliable" not in finalize._latency_note(finalize._latency_section({"b1": QUIET}))
