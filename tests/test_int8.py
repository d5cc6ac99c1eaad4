"""Static int8 (ONNX Runtime): convolutions quantised, accuracy run through onnxruntime, one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import onnx.numpy_helper
import pytest
import torch
import yaml
from click.testing import CliRunner

from autoprune.cli import main
from autoprune.config import load_study
from autoprune.data.splits import Split
from autoprune.deliver.export import export_onnx, export_onnx_int8_static, onnx_accuracy
from autoprune.deliver.finalize import CALIBRATION_IMAGES, calibration_batches, static_int8
from autoprune.engine.context import prepare
from autoprune.metrics.costs import accuracy
from tests.conftest import TINY_SPACE, TINY_STUDY


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, one_intra_op_thread):
    """The tiny digits study with its base trained (QuickstartCNN, width 8: three convolutions)."""
    d = tmp_path_factory.mktemp("int8-study")
    (d / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    (d / "study.yaml").write_text(yaml.safe_dump(dict(TINY_STUDY, workdir=str(d / "run"))))
    return prepare(load_study(d / "study.yaml"), measure_reference=False, recovery_stream=False)


@pytest.fixture(scope="module")
def float_onnx(ctx, tmp_path_factory):
    out = tmp_path_factory.mktemp("float") / "model.onnx"
    return export_onnx(ctx.base.cpu().eval(), ctx.data.test.example(8), out)


@pytest.fixture(scope="module")
def int8(ctx, float_onnx, tmp_path_factory):
    return static_int8(ctx, float_onnx, tmp_path_factory.mktemp("int8"))


def _assert_every_conv_quantised(path, activation_type: int, weight_range: int) -> None:
    """Each of the three convolutions reads 8-bit activations (of ``activation_type``) and per-channel int8
    weights, each channel's largest reaching ``weight_range`` (127 for the full range, 64 for a 7-bit range)."""
    graph = onnx.load(path).graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    for conv in convs:
        act, weight = producer[conv.input[0]], producer[conv.input[1]]
        assert act.op_type == weight.op_type == "DequantizeLinear", conv.name
        q_weight, scale = inits[weight.input[0]], inits[weight.input[1]]
        assert q_weight.data_type == onnx.TensorProto.INT8
        assert list(scale.dims) == [q_weight.dims[0]], "one scale per output channel"
        per_channel_max = abs(onnx.numpy_helper.to_array(q_weight).astype(int)).reshape(q_weight.dims[0], -1).max(1)
        assert set(per_channel_max.tolist()) == {weight_range}, "each channel scaled to its own full range"
        assert producer[act.input[0]].op_type == "QuantizeLinear"
        assert inits[act.input[2]].data_type == activation_type, "the activations' 8-bit type"


def test_every_convolution_reads_uint8_activations_and_per_channel_int8_weights(int8):
    assert int8["convs"] == int8["convs_quantized"] == 3
    assert int8["activations"] == "uint8" and int8["reduce_range"] is True
    _assert_every_conv_quantised(int8["file"], onnx.TensorProto.UINT8, weight_range=64)


def test_int8_activations_use_full_range_int8_throughout(ctx, float_onnx, tmp_path):
    out = export_onnx_int8_static(Path(float_onnx["file"]), calibration_batches(ctx)[:2], tmp_path / "q.onnx",
                                  activations="int8")
    assert out["calibration_images"] == 128 and out["reduce_range"] is False
    _assert_every_conv_quantised(out["file"], onnx.TensorProto.INT8, weight_range=127)


def test_an_unknown_activation_scheme_is_refused():
    with pytest.raises(ValueError, match="activations must be one of uint8, int8, not 'int4'"):
        export_onnx_int8_static(Path("model.onnx"), [], Path("q.onnx"), activations="int4")


def test_int8_accuracy_through_onnxruntime_is_within_a_few_points_of_the_float_model(int8, ctx):
    torch_accuracy = accuracy(ctx.base.cpu().eval(), ctx.data.test)
    assert torch_accuracy > 0.8, "the base is trained: the comparison means something"
    assert int8["float_test_accuracy"] == pytest.approx(torch_accuracy, abs=1.5 / len(ctx.data.test))
    assert abs(int8["test_accuracy"] - int8["float_test_accuracy"]) <= 0.05


def test_int8_report_entry_has_latency_paired_with_the_float_onnx_model(int8):
    assert {"file", "bytes", "calibration_images", "activations", "reduce_range", "preprocessed", "convs",
            "convs_quantized", "test_accuracy",
            "float_test_accuracy", "latency_ms_b1", "float_latency_ms_b1", "speedup_vs_float", "latency_dispersion",
            "latency_reliable", "latency_backend", "latency_pairs", "note"} <= set(int8)
    assert int8["latency_backend"] == "onnxruntime" and int8["latency_pairs"] >= 1
    assert int8["latency_ms_b1"] > 0 and int8["float_latency_ms_b1"] > 0 and int8["speedup_vs_float"] > 0
    assert int8["calibration_images"] == CALIBRATION_IMAGES and int8["preprocessed"] is True
    assert "3 of 3 convolutions" in int8["note"] and "uint8 activations calibrated on 512 training images" in int8["note"]


def test_calibration_is_a_seeded_subset_of_the_normalised_training_images(ctx):
    batches = calibration_batches(ctx)
    again = calibration_batches(ctx)
    cal = torch.cat(batches)
    assert len(cal) == min(CALIBRATION_IMAGES, len(ctx.data.train))
    assert torch.equal(cal, torch.cat(again))
    train = ctx.data.train.prepare(ctx.data.train.x).cpu()
    nearest = torch.cdist(cal.flatten(1), train.flatten(1)).min(dim=1).values
    assert float(nearest.max()) < 1e-4, "every calibration image is a (normalised) training image"
    assert len(torch.unique(cal.flatten(1), dim=0)) > len(cal) // 2, "a shuffled subset, not one image repeated"


def test_onnx_accuracy_counts_top1_over_batches(tmp_path):
    # the logits are the four pixels, so image i predicts class i; labels 0, 1, 3, 3 make three of four right
    x = torch.eye(4).reshape(4, 1, 1, 4)
    split = Split(x, torch.tensor([0, 1, 3, 3]), torch.zeros(1), torch.ones(1))
    exported = export_onnx(torch.nn.Flatten(), split.example(2), tmp_path / "flat.onnx")
    assert onnx_accuracy(exported["file"], split, batch_size=3) == 0.75


def test_a_model_that_cannot_be_quantised_gives_one_line_error_not_a_traceback(ctx, tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx model")
    direct = export_onnx_int8_static(broken, [torch.zeros(2, 1, 8, 8)], tmp_path / "q.onnx")
    assert direct["file"] is None and direct["error"].startswith(f"static int8 quantisation of {broken} failed: ")
    assert "\n" not in direct["error"]
    via_finalize = static_int8(ctx, {"file": str(broken)}, tmp_path)
    assert via_finalize == {"file": None, "error": direct["error"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"], "no partial or temporary file is left"


def test_static_int8_without_the_float_onnx_export_says_why(ctx, tmp_path):
    out = static_int8(ctx, {"file": None, "error": "the ONNX export check needs onnxruntime"}, tmp_path)
    assert out == {"file": None, "error": "static int8 needs the float ONNX export, which failed: "
                                          "the ONNX export check needs onnxruntime"}


def test_missing_onnxruntime_gives_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # importing it now raises ImportError
    out = export_onnx_int8_static(tmp_path / "model.onnx", [torch.zeros(1, 1, 8, 8)], tmp_path / "q.onnx")
    assert out == {"file": None,
                   "error": "the static int8 export needs onnxruntime.quantization: pip install 'autoprune[export]'"}


def test_no_calibration_images_is_refused_in_one_line(tmp_path):
    out = export_onnx_int8_static(tmp_path / "model.onnx", [], tmp_path / "q.onnx")
    assert out["file"] is None and "needs calibration images" in out["error"]


def test_retrain_help_states_the_calibration_size():
    text = " ".join(CliRunner().invoke(main, ["retrain", "--help"]).output.split())
    assert f"static int8 (ONNX Runtime, calibrated on {CALIBRATION_IMAGES} training images), covering convolutions" \
        in text
