"""From a chosen trial to a deliverable: retrain, evaluate on test, export with checks, write the final report."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from autoprune.deliver.export import (
    OnnxModule,
    export_onnx,
    export_onnx_int8_static,
    export_torchscript,
    onnx_accuracy,
)
from autoprune.deliver.retrain import RetrainResult
from autoprune.engine.context import StudyContext
from autoprune.engine.record import TrialRecord
from autoprune.engine.storage import StudyAttrs, entries_at
from autoprune.engine.storage import front as study_front
from autoprune.files import atomic_write_text
from autoprune.metrics.costs import accuracy, count_macs, count_params
from autoprune.metrics.latency import LatencyResult, deploy_onnx, paired_latency
from autoprune.pruning.saving import save_pruned


def _measure(model, ctx: StudyContext, split_name: str) -> dict[str, Any]:
    """Test accuracy (or the study's own score, under the same key), MACs and parameters."""
    split = ctx.data.get(split_name)
    full = ctx.data.test_full
    if ctx.score is not None:
        return {"test_accuracy": ctx.score(model), "test_full_accuracy": None, "macs": count_macs(model, ctx.example),
                "params": count_params(model)}
    return {
        "test_accuracy": accuracy(model, split, ctx.study.config.data.batch_size),
        # the whole official test split, for comparing with published numbers (it includes the validation
        # part when validation was carved from the test split)
        "test_full_accuracy": (accuracy(model, full, ctx.study.config.data.batch_size)
                               if len(full) != len(split) else None),
        "macs": count_macs(model, ctx.example),
        "params": count_params(model),
    }


def paired_with_base(model: torch.nn.Module, ctx: StudyContext, large_batch: int) -> dict[str, LatencyResult]:
    """The model's latency at batch 1 and ``large_batch``, each timed paired with the base on the study's
    ``measure.latency_backend`` (:func:`autoprune.metrics.latency.paired_latency`), while other workers on this device
    pause (``ctx.lock``). Keys ``"b1"`` and ``"b<large_batch>"``."""
    m = ctx.study.config.measure
    xs = {"b1": ctx.example, f"b{large_batch}": ctx.example.expand(large_batch, *ctx.example.shape[1:]).contiguous()}
    repeats = {"b1": m.latency_repeats, f"b{large_batch}": max(3, m.latency_repeats // 2)}
    with ctx.lock.exclusive():
        return {k: paired_latency(model, ctx.base, x, repeats[k], m.latency_warmup, m.latency_backend)
                for k, x in xs.items()}


CALIBRATION_IMAGES = 512  # training images the static int8 export calibrates its activation ranges on


def calibration_batches(ctx: StudyContext, images: int = CALIBRATION_IMAGES, batch_size: int = 64
                        ) -> list[torch.Tensor]:
    """A seeded subset (the study's seed) of ``images`` training images, normalised as the model sees them, in
    batches on the CPU: the static int8 export's calibration data."""
    train = ctx.data.train
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(ctx.study.config.seed))[:images]
    return [x.cpu() for x, _ in train.subset(pick).batches(batch_size)]


def _onnx_latency(int8_file: str, float_file: str, ctx: StudyContext) -> dict[str, Any]:
    """The int8 file's latency at batch 1 on onnxruntime, timed paired with the float ONNX file."""
    m, x = ctx.study.config.measure, ctx.example.cpu()
    with ctx.lock.exclusive():
        lat = paired_latency(deploy_onnx(int8_file, x), deploy_onnx(float_file, x), x, m.latency_repeats,
                             m.latency_warmup, "onnxruntime")
    return {"latency_ms_b1": lat.ms, "float_latency_ms_b1": lat.base_ms, "speedup_vs_float": lat.speedup,
            "latency_dispersion": lat.dispersion, "latency_reliable": lat.reliable, "latency_backend": lat.backend,
            "latency_pairs": lat.pairs}


def static_int8(ctx: StudyContext, onnx_export: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """report.json's ``exports.int8_static``: the float ONNX export quantised to static int8 by onnxruntime
    (:func:`autoprune.deliver.export.export_onnx_int8_static`, calibrated on :func:`calibration_batches`), its test accuracy
    and the float ONNX model's, both run by onnxruntime on the same test images, and its latency at batch 1 timed
    paired with the float ONNX model. ``{"file": None, "error": ...}`` where it could not be made."""
    if not onnx_export.get("file"):
        return {"file": None, "error": f"static int8 needs the float ONNX export, which failed: {onnx_export['error']}"}
    q = export_onnx_int8_static(Path(onnx_export["file"]), calibration_batches(ctx), out_dir / "model.int8.onnx")
    if q["file"] is None:
        return q
    return {**q, "test_accuracy": _onnx_score(ctx, q["file"]), "float_test_accuracy": _onnx_score(ctx, onnx_export["file"]),
            **_onnx_latency(q["file"], onnx_export["file"], ctx), "note": _int8_note(q)}


def _onnx_score(ctx: StudyContext, file: str) -> float:
    """An ONNX file's test accuracy run by onnxruntime, or the study's own score of it."""
    if ctx.score is not None:
        return ctx.score(OnnxModule(file))
    return onnx_accuracy(file, ctx.data.test, ctx.study.config.data.batch_size)


def _int8_note(q: dict[str, Any]) -> str:
    """What ``exports.int8_static`` measured, in words."""
    weights = "per-channel int8 weights" + (" in a 7-bit range" if q["reduce_range"] else "")
    return (f"static int8 by ONNX Runtime (QDQ; {weights}; {q['activations']} activations calibrated on "
            f"{q['calibration_images']} training images, a seeded subset): {q['convs_quantized']} of {q['convs']} "
            "convolutions quantised. test_accuracy and float_test_accuracy: the int8 and the float ONNX model run by "
            "onnxruntime on the same test images; latency at batch 1 on onnxruntime (CPU), timed paired with the "
            "float ONNX model")


def _exports(model: torch.nn.Module, ctx: StudyContext, out_dir: Path, int8: bool) -> dict[str, Any]:
    """TorchScript and ONNX exports (each checked against the model), and the optional static int8 ONNX."""
    cpu_model = model.cpu()
    check_x = ctx.data.test.example(8).cpu()
    exports = {"torchscript": export_torchscript(cpu_model, check_x, out_dir / "model.torchscript.pt"),
               "onnx": export_onnx(cpu_model, check_x, out_dir / "model.onnx")}
    if int8:
        exports["int8_static"] = static_int8(ctx, exports["onnx"], out_dir)
    model.to(ctx.device)
    return exports


def _speedups(base_m: dict[str, Any], final_m: dict[str, Any], paired: dict[str, LatencyResult]) -> dict[str, float]:
    """Reductions base / final; each latency speed-up is 1 / the median paired ratio final/base."""
    return {"macs_reduction": base_m["macs"] / max(1, final_m["macs"]),
            "params_reduction": base_m["params"] / max(1, final_m["params"]),
            **{f"latency_speedup_{k}": r.speedup for k, r in paired.items()}}


def _latency_section(paired: dict[str, LatencyResult]) -> dict[str, Any]:
    """report.json's ``latency``: the backend, and per batch size the paired measurement (ms, base_ms, ratio,
    speedup, dispersion, reliable, pairs)."""
    backend = next(iter(paired.values())).backend
    return {"backend": backend, "paired": "each model timed interleaved with the base, same input and threads",
            **{k: {**{f: v for f, v in asdict(r).items() if f != "backend"}, "speedup": r.speedup}
               for k, r in paired.items()}}


def _latency_note(latency: dict[str, Any]) -> str:
    """The report page's note under the table: how the latencies were timed, and which are unreliable."""
    import html

    batches = {k: v for k, v in latency.items() if isinstance(v, dict)}
    if not batches:
        return ""
    text = (f"Latency on {latency['backend']}: each model timed interleaved with the base (median ms; the ratio row "
            "is 1 / the median of the per-pair ratios), dispersion (relative IQR of those ratios) "
            + ", ".join(f"{k} {v['dispersion']:.3f}" for k, v in batches.items()) + ".")
    unreliable = [k for k, v in batches.items() if v.get("reliable") is False]
    if unreliable:
        text += (f" Unreliable at {', '.join(unreliable)}: the machine was contended while it was measured; "
                 "measure again on a quieter machine.")
    return f"<p class='note'>{html.escape(text)}</p>"


def _html_sections(ctx: StudyContext, ost, record: TrialRecord, result: RetrainResult, report: dict[str, Any],
                   large_batch: int) -> list[str]:
    """The report page: base vs retrained, the exports, and (with the study) the front with the chosen trial."""
    from autoprune.deliver.report import front_plotly, html_table

    base_m, final_m, speed, exports = report["base"], report["final"], report["speedup"], report["exports"]
    big = f"latency_ms_b{large_batch}"
    rows = [{"": "base", **base_m}, {"": f"trial {record.number} retrained", **final_m},
            {"": "ratio base / final", "macs": speed["macs_reduction"], "params": speed["params_reduction"],
             "latency_ms_b1": speed["latency_speedup_b1"], big: speed[f"latency_speedup_b{large_batch}"]}]
    cols = ["", "test_accuracy", "test_full_accuracy", "macs", "params", "latency_ms_b1", big, "file_bytes"]
    scored = (f"Test accuracy on the held-out test split ({ctx.data.info['sizes']['test']} images; "
              f"{ctx.data.info['note']})")
    if ctx.score is not None:  # the study's own score, named as the user named it
        rows = [{**r, ctx.score_name: r.get("test_accuracy")} for r in rows]
        cols = ["", ctx.score_name, *cols[3:]]
        scored = f"{ctx.score_name}: the study's own score function, on the data it reads"
    sections = [
        (f"<p class='note'>{scored}. Fine-tune: {result.epochs} epochs, {result.images_seen:,} images, "
         f"{result.seconds:.0f} s on {ctx.device}.</p>"),
        "<h2>Base vs retrained</h2>", html_table(rows, cols), _latency_note(report.get("latency") or {}),
        "<h2>Exports</h2>", html_table([{"export": k, **{kk: vv for kk, vv in v.items() if kk != "note"}}
                                        for k, v in exports.items()],
                                       ["export", "file", "bytes", "max_abs_diff", "test_accuracy",
                                        "float_test_accuracy", "latency_ms_b1", "speedup_vs_float", "latency_reliable",
                                        "error"]),
    ]
    if ost is not None:
        fr, base = study_front(ost), StudyAttrs.from_study(ost).base
        rung = fr[0]["rung"] if fr else None  # everything on the plot at the front's rung
        trials, chosen = entries_at(ost, rung), record.entry(rung if record.accuracy_at(rung) is not None else None)
        sections += ["<h2>The front and the chosen trial: accuracy vs MACs</h2>",
                     front_plotly(trials, fr, base, "macs", chosen, "front-macs"),
                     "<h2>Accuracy vs latency</h2>", front_plotly(trials, fr, base, "latency_ms", chosen, "front-latency")]
    return sections


def finalize(ctx: StudyContext, ost, record: TrialRecord, result: RetrainResult, out_dir: Path, *, int8: bool = False,
             large_batch: int = 64, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Evaluate base and retrained model on the held-out test split, save and export, write report.json/html."""
    from autoprune.deliver.report import html_page, study_report

    out_dir.mkdir(parents=True, exist_ok=True)
    model = result.model.eval()
    model_path = out_dir / "model.pt"
    save_pruned(model, result.history, model_path, {"input_shape": list(ctx.example.shape),
                                                     "model": ctx.study.config.model.name, "trial": record.number,
                                                     "dropped": list(record.plan.dropped)})
    base_buf = io.BytesIO()  # the base's size as a saved state_dict, without writing a file
    torch.save(ctx.base.state_dict(), base_buf)
    log("measuring the base and the retrained model on the held-out test split")
    base_m, final_m = _measure(ctx.base, ctx, "test"), _measure(model, ctx, "test")
    paired = paired_with_base(model, ctx, large_batch)
    for key, lat in paired.items():
        base_m[f"latency_ms_{key}"], final_m[f"latency_ms_{key}"] = lat.base_ms, lat.ms
    base_m["file_bytes"], final_m["file_bytes"] = base_buf.getbuffer().nbytes, model_path.stat().st_size
    report = {
        "study": ctx.study.study_name, "trial": record.number, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "split": "test", "data": ctx.data.info, "device": str(ctx.device), "score_name": ctx.score_name,
        "base": base_m, "final": final_m, "speedup": _speedups(base_m, final_m, paired),
        "latency": _latency_section(paired),
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
