"""Exports of a pruned model, each checked against the PyTorch model: TorchScript, ONNX (onnxruntime), int8."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
        diff = _max_abs(loaded(example), model(example))
    return {"file": str(path), "bytes": path.stat().st_size, "max_abs_diff": diff}


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> dict[str, Any]:
    """ONNX export (dynamic batch) and an onnxruntime check of the outputs on ``example``."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"file": None, "error": "onnxruntime is not installed: pip install 'autoprune[export]'"}
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        want = model(example)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": example.cpu().numpy()})[0])
    return {"file": str(path), "bytes": path.stat().st_size, "max_abs_diff": _max_abs(got, want.cpu())}


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """int8 dynamic quantisation of the Linear layers (PyTorch's dynamic quantisation covers Linear, not conv)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.cpu().eval(), {nn.Linear}, dtype=torch.qint8)
