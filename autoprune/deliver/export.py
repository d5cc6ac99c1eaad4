"""Exports of a pruned model, each checked: TorchScript, ONNX (onnxruntime), static int8 ONNX; ONNX accuracy."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.data.splits import Images
from autoprune.errors import AutopruneError, first_line
from autoprune.files import atomic_write
from autoprune.metrics.latency import onnx_session
from autoprune.optional import require


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
    """TorchScript (traced), checked by reloading it; written to a temporary file and renamed into place."""
    model = model.eval()
    out: dict[str, Any] = {}

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.trace(model, example).save(tmp)
            out["max_abs_diff"] = _max_abs(torch.jit.load(tmp)(example), model(example))

    atomic_write(path, write)
    return {"file": str(path), "bytes": Path(path).stat().st_size, "max_abs_diff": out["max_abs_diff"]}


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
    """ONNX export (dynamic batch) and an onnxruntime check of the outputs on ``example``."""
    try:
        ort = require("onnxruntime", "export", "the ONNX export check")
    except AutopruneError as err:  # the other exports still go ahead; the report says what is missing
        return {"file": None, "error": err.message}
    model = model.eval()
    out: dict[str, Any] = {}

    def write(tmp: str) -> None:  # checked on the temporary file, then renamed into place
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), tmp, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
            want = model(example)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": example.cpu().numpy()})[0])
        out["max_abs_diff"] = _max_abs(got, want.cpu())

    atomic_write(path, write)
    return {"file": str(path), "bytes": Path(path).stat().st_size, "max_abs_diff": out["max_abs_diff"]}


def _preprocessed(qz, src: Path, dst: Path) -> Path:
    """onnxruntime's pre-processing for quantisation (graph optimisation: BatchNorm folded into the convolution
    before it; shape inference) written to ``dst``; ``src`` itself where it fails."""
    try:
        qz.shape_inference.quant_pre_process(str(src), str(dst))
        return dst
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation: quantise the model as exported
        return src


def _calibration_reader(qz, input_name: str, batches: list):
    """A ``CalibrationDataReader`` that hands onnxruntime the calibration batches one by one."""

    class Batches(qz.CalibrationDataReader):
        def __init__(self) -> None:
            self._left = iter(batches)

        def get_next(self) -> dict | None:
            x = next(self._left, None)
            return None if x is None else {input_name: x}

    return Batches()


def quantized_convs(path: Path) -> tuple[int, int]:
    """(convolutions, convolutions whose input and weight both come from a DequantizeLinear) in an ONNX file:
    in onnxruntime's QDQ format a quantised convolution reads int8 tensors through DequantizeLinear nodes."""
    onnx = require("onnx", "export", "counting quantised convolutions")
    graph = onnx.load(str(path)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    return len(convs), sum(1 for n in convs if n.input[0] in dequantized and n.input[1] in dequantized)


# Activation schemes, after onnxruntime's guidance for CPUs (quantize_static's docstring): "uint8" is uint8
# activations with int8 weights in a 7-bit range (reduce_range), for x86 CPUs, whose AVX2 kernels without VNNI
# saturate on full-range int8 weights; "int8" is int8 activations and weights, full range, for ARM CPUs and GPUs.
# Measured on ResNet-20 / CIFAR-10 (an AVX2 EPYC, one thread, batch 1): "uint8" 1.5x faster than float with test
# accuracy 0.920 (float 0.918), "int8" 0.76x (slower than float), 0.919.
ACTIVATIONS = {"uint8": ("QUInt8", True), "int8": ("QInt8", False)}


def _quantize(qz, src: Path, dst: str, batches: list, input_name: str, activations: str) -> None:
    """onnxruntime's static quantisation of ``src`` into ``dst``: QDQ, per-channel int8 weights, activation
    ranges calibrated (min/max) on ``batches``."""
    activation_type, reduce_range = ACTIVATIONS[activations]
    qz.quantize_static(str(src), dst, _calibration_reader(qz, input_name, batches), quant_format=qz.QuantFormat.QDQ,
                       per_channel=True, reduce_range=reduce_range,
                       activation_type=getattr(qz.QuantType, activation_type), weight_type=qz.QuantType.QInt8)


def export_onnx_int8_static(onnx_path: Path, calibration: Iterable[torch.Tensor], out_path: Path,
                            input_name: str = "input", activations: str = "uint8") -> dict[str, Any]:
    """Static int8 quantisation of an ONNX model by onnxruntime, convolutions included: QDQ format, per-channel
    int8 weights, 8-bit activations (:data:`ACTIVATIONS`) whose ranges are calibrated on the ``calibration``
    batches (inputs as the model sees them, already normalised). onnxruntime's pre-processing (BatchNorm folded,
    shapes inferred) runs first where it can. The file is checked by running it on the first batch, then renamed
    into place. A model that cannot be quantised gives ``{"file": None, "error": <one line>}``.

    Example:
        >>> export_onnx_int8_static(Path("model.onnx"), [x[:64], x[64:128]], Path("model.int8.onnx"))  # doctest: +SKIP
        {'file': 'model.int8.onnx', 'bytes': 13836, 'calibration_images': 128, 'activations': 'uint8', ...}
    """
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {', '.join(ACTIVATIONS)}, not {activations!r}")
    try:
        qz = require("onnxruntime.quantization", "export", "the static int8 export")
    except AutopruneError as err:  # the other exports still go ahead; the report says what is missing
        return {"file": None, "error": err.message}
    batches = [x.detach().cpu().numpy() for x in calibration]
    if not batches:
        return {"file": None, "error": "the static int8 export needs calibration images; none were given"}
    out: dict[str, Any] = {}

    def write(tmp: str) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            src = _preprocessed(qz, Path(onnx_path), Path(scratch) / "preprocessed.onnx")
            out["preprocessed"] = src != Path(onnx_path)
            _quantize(qz, src, tmp, batches, input_name, activations)
        onnx_session(tmp).run(None, {input_name: batches[0]})  # the quantised model loads and runs

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atomic_write(out_path, write)
    except Exception as exc:  # noqa: BLE001 - a model that cannot be quantised: said in one line, exports go on
        return {"file": None, "error": f"static int8 quantisation of {onnx_path} failed: {first_line(exc, 300)}"}
    convs, quantized = quantized_convs(out_path)
    return {"file": str(out_path), "bytes": Path(out_path).stat().st_size,
            "calibration_images": sum(len(b) for b in batches), "activations": activations,
            "reduce_range": ACTIVATIONS[activations][1], "preprocessed": out["preprocessed"],
            "convs": convs, "convs_quantized": quantized}


def onnx_accuracy(path: Path, split: Images, batch_size: int = 256) -> float:
    """Top-1 accuracy (0..1) of an ONNX model on ``split``, run by onnxruntime over ``split.batches(batch_size)``."""
    session = onnx_session(path, "evaluating an ONNX model")
    name = session.get_inputs()[0].name
    correct = 0
    for x, y in split.batches(batch_size):
        logits = session.run(None, {name: x.detach().cpu().numpy()})[0]
        correct += int((logits.argmax(1) == y.cpu().numpy()).sum())
    return correct / max(1, len(split))


class OnnxModule(nn.Module):
    """An ONNX file run by onnxruntime, called as a torch module (so a study's own score function can score an
    export as it scores the model)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.session = onnx_session(Path(path), "scoring an ONNX model")
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.detach().cpu().numpy()})[0])

