"""Exports of a pruned model, each checked against the PyTorch model: TorchScript, ONNX (onnxruntime), int8."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.optional import require
from autoprune.saving import atomic_write


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


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """int8 dynamic quantisation of the Linear layers (PyTorch's dynamic quantisation covers Linear, not conv)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.cpu().eval(), {nn.Linear}, dtype=torch.qint8)
