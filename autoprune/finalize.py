"""From a chosen trial to a deliverable: retrain, evaluate on test, export with checks, write the final report."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from autoprune.context import StudyContext
from autoprune.export import export_onnx, export_torchscript, quantize_dynamic_int8
from autoprune.measure import accuracy, count_macs, count_params, latency_ms
from autoprune.record import TrialRecord
from autoprune.retrain import RetrainResult
from autoprune.saving import atomic_write_text, save_pruned
from autoprune.storage import entries_at
from autoprune.storage import front as study_front


def _measure(model, ctx: StudyContext, split_name: str, large_batch: int) -> dict[str, Any]:
    split = ctx.data.get(split_name)
    m = ctx.study.config.measure
    x1 = ctx.example
    xb = ctx.example.expand(large_batch, *ctx.example.shape[1:]).contiguous()
    full = ctx.data.test_full
    return {
        "test_accuracy": accuracy(model, split, ctx.study.config.data.batch_size),
        # the whole official test split, for comparing with published numbers (it includes the validation
        # part when validation was carved from the test split)
        "test_full_accuracy": (accuracy(model, full, ctx.study.config.data.batch_size)
                               if len(full) != len(split) else None),
        "macs": count_macs(model, x1),
        "params": count_params(model),
        "latency_ms_b1": latency_ms(model, x1, m.latency_repeats, m.latency_warmup),
        f"latency_ms_b{large_batch}": latency_ms(model, xb, max(3, m.latency_repeats // 2), m.latency_warmup),
    }


def _exports(model: torch.nn.Module, ctx: StudyContext, out_dir: Path, int8: bool) -> dict[str, Any]:
    """TorchScript and ONNX exports (each checked against the model), and the optional dynamic int8 variant."""
    cpu_model = model.cpu()
    check_x = ctx.data.test.example(8).cpu()
    exports = {"torchscript": export_torchscript(cpu_model, check_x, out_dir / "model.torchscript.pt"),
               "onnx": export_onnx(cpu_model, check_x, out_dir / "model.onnx")}
    if int8:
        q = quantize_dynamic_int8(cpu_model)
        exports["int8_dynamic"] = {"test_accuracy": accuracy(q, ctx.data.test.to("cpu"), ctx.study.config.data.batch_size),
                                   "latency_ms_b1": latency_ms(q, ctx.example.cpu(), 10, 2),
                                   "note": "dynamic int8 quantisation of Linear layers (PyTorch quantises Linear, not conv)"}
    model.to(ctx.device)
    return exports


def _speedups(base_m: dict[str, Any], final_m: dict[str, Any], large_batch: int) -> dict[str, float]:
    big = f"latency_ms_b{large_batch}"
    return {"macs_reduction": base_m["macs"] / max(1, final_m["macs"]),
            "params_reduction": base_m["params"] / max(1, final_m["params"]),
            "latency_speedup_b1": base_m["latency_ms_b1"] / max(1e-9, final_m["latency_ms_b1"]),
            f"latency_speedup_b{large_batch}": base_m[big] / max(1e-9, final_m[big])}


def _html_sections(ctx: StudyContext, ost, record: TrialRecord, result: RetrainResult, report: dict[str, Any],
                   large_batch: int) -> list[str]:
    """The report page: base vs retrained, the exports, and (with the study) the front with the chosen trial."""
    from autoprune.report import front_plotly, html_table

    base_m, final_m, speed, exports = report["base"], report["final"], report["speedup"], report["exports"]
    big = f"latency_ms_b{large_batch}"
    rows = [{"": "base", **base_m}, {"": f"trial {record.number} retrained", **final_m},
            {"": "ratio base / final", "macs": speed["macs_reduction"], "params": speed["params_reduction"],
             "latency_ms_b1": speed["latency_speedup_b1"], big: speed[f"latency_speedup_b{large_batch}"]}]
    cols = ["", "test_accuracy", "test_full_accuracy", "macs", "params", "latency_ms_b1", big, "file_bytes"]
    sections = [
        f"<p class='note'>Test accuracy on the held-out test split ({ctx.data.info['sizes']['test']} images; "
        f"{ctx.data.info['note']}). Fine-tune: {result.epochs} epochs, {result.images_seen:,} images, "
        f"{result.seconds:.0f} s on {ctx.device}.</p>",
        "<h2>Base vs retrained</h2>", html_table(rows, cols),
        "<h2>Exports</h2>", html_table([{"export": k, **{kk: vv for kk, vv in v.items() if kk != "note"}}
                                        for k, v in exports.items()],
                                       ["export", "file", "bytes", "max_abs_diff", "test_accuracy", "latency_ms_b1"]),
    ]
    if ost is not None:
        fr, base = study_front(ost), ost.user_attrs.get("base", {})
        rung = fr[0]["rung"] if fr else None  # everything on the plot at the front's rung
        trials, chosen = entries_at(ost, rung), record.entry(rung if record.accuracy_at(rung) is not None else None)
        sections += ["<h2>The front and the chosen trial: accuracy vs MACs</h2>",
                     front_plotly(trials, fr, base, "macs", chosen, "front-macs"),
                     "<h2>Accuracy vs latency</h2>", front_plotly(trials, fr, base, "latency_ms", chosen, "front-latency")]
    return sections


def finalize(ctx: StudyContext, ost, record: TrialRecord, result: RetrainResult, out_dir: Path, *, int8: bool = False,
             large_batch: int = 64, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Evaluate base and retrained model on the held-out test split, save and export, write report.json/html."""
    from autoprune.report import html_page, study_report

    out_dir.mkdir(parents=True, exist_ok=True)
    model = result.model.eval()
    model_path = out_dir / "model.pt"
    save_pruned(model, result.history, model_path, {"input_shape": list(ctx.example.shape),
                                                     "model": ctx.study.config.model.name, "trial": record.number,
                                                     "dropped": list(record.plan.dropped)})
    base_buf = io.BytesIO()  # the base's size as a saved state_dict, without writing a file
    torch.save(ctx.base.state_dict(), base_buf)
    log("measuring the base and the retrained model on the held-out test split")
    base_m, final_m = _measure(ctx.base, ctx, "test", large_batch), _measure(model, ctx, "test", large_batch)
    base_m["file_bytes"], final_m["file_bytes"] = base_buf.getbuffer().nbytes, model_path.stat().st_size
    report = {
        "study": ctx.study.study_name, "trial": record.number, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "split": "test", "data": ctx.data.info, "device": str(ctx.device),
        "base": base_m, "final": final_m, "speedup": _speedups(base_m, final_m, large_batch),
        "search": {"val_accuracy": record.metrics.accuracy, "plan": record.plan.to_dict()},
        "finetune": {"epochs": result.epochs, "images_seen": result.images_seen, "seconds": round(result.seconds, 1),
                     "resumed_from_epoch": result.resumed_from_epoch, "progressive_steps": result.progressive_steps,
                     "epoch_losses": result.losses},
        "structure_matches_trial": result.structure_matches_trial,
        "exports": _exports(model, ctx, out_dir, int8), "files": {"model": str(model_path)},
    }
    if ost is not None:
        report["files"].update(study_report(ost, out_dir / "study", chosen=record.entry()))
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out_dir / "report.html", html_page(f"autoprune: trial {record.number} of {ctx.study.study_name}",
                                                         _html_sections(ctx, ost, record, result, report, large_batch)))
    return report
