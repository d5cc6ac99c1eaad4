"""The commands that deliver: ``retrain`` (rebuild, distil longer, test, export, report), ``report`` and
``dashboard``."""

from __future__ import annotations

import sys

import click

from autoprune.cli.options import handle_errors, load_study_from_flags, resume_hint, sigterm_as_interrupt, study_options


@click.command()
@study_options
@click.option("--trial", type=int, required=True, help="The trial to retrain (see select / pareto).")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output folder (default runs/<study>/final-<trial>).")
@click.option("--progressive", type=click.IntRange(min=1), default=1, show_default=True,
              help="Prune the same total ratios in this many steps, fine-tuning between.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate (default: the trial's).")
@click.option("--int8", is_flag=True, help="Also export static int8 (ONNX Runtime, calibrated on 512 training images), "
              "covering convolutions; its test accuracy and latency beside the float ONNX model's.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@handle_errors
def retrain(study_file, storage, study_name, checkpoint, data_root, sets, trial, epochs, out_dir, progressive, lr, int8,
            device) -> None:
    """Rebuild a trial's pruned model, distil it longer on the full training data, evaluate on test, export."""
    from pathlib import Path

    from autoprune.cli.display import console, latency_mark, retrain_summary, steps_progress
    from autoprune.deliver.finalize import finalize
    from autoprune.deliver.retrain import retrain as run_retrain
    from autoprune.engine.context import prepare
    from autoprune.engine.storage import get_record, load_optuna_study
    from autoprune.optional import require

    sigterm_as_interrupt()
    study = load_study_from_flags(study_file, checkpoint, data_root, storage, sets, study_name)
    for module, extra in (("plotly", "report"), ("matplotlib", "report")):
        require(module, extra, "retrain's report")  # checked before the retrain, not after it
    ost = load_optuna_study(study)
    record = get_record(ost, trial)
    out = Path(out_dir) if out_dir else study.workdir / f"final-{trial}"
    ctx = prepare(study, device, measure_reference=False, recovery_stream=False)
    console.print(f"retraining trial {trial} of {study.study_name} for {epochs} epochs "
                  f"(progressive steps: {progressive}) into {out}")
    with steps_progress() as bar:
        task = bar.add_task("epoch 1", total=None)

        def on_step(i: int, total: int) -> None:
            bar.update(task, completed=i, total=total)

        def on_epoch(epoch: int, total: int, loss: float) -> None:
            console.print(f"epoch {epoch}/{total}: mean distillation loss {loss:.4f} (checkpoint saved)")
            bar.update(task, description=f"epoch {min(epoch + 1, total)}", completed=0)

        try:
            result = run_retrain(ctx, record, epochs=epochs, out_dir=out, progressive_steps=progressive, lr=lr,
                                 on_epoch=on_epoch, on_step=on_step)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/]: the last finished epoch is checkpointed in {out}; resume with: "
                          f"{resume_hint()}")
            sys.exit(130)
    if result.resumed_from_epoch:
        console.print(f"resumed from the checkpoint after epoch {result.resumed_from_epoch}")
    ctx.share_device()  # the latencies are timed while other workers on this device pause
    report = finalize(ctx, ost, record, result, out, int8=int8, log=console.print)
    for line in retrain_summary(report):
        console.print(line, markup=False, highlight=False)
    for name, e in report["exports"].items():
        if "max_abs_diff" in e:
            console.print(f"{name}: {e['file']} ({e['bytes']:,} bytes), max abs difference {e['max_abs_diff']:.2e}")
        elif "error" in e:
            console.print(f"{name}: skipped: {e['error']}")
        else:
            mark = latency_mark(e.get("latency_reliable"))
            console.print(f"{name}: test accuracy {e['test_accuracy']:.4f}, latency b1 {e['latency_ms_b1']:.3f}{mark} "
                          f"ms, {e['speedup_vs_float']:.2f}x{mark} faster than the float model (timed paired with it)",
                          markup=False, highlight=False)
    console.print(f"report: {out / 'report.html'}, {out / 'report.json'}")


@click.command()
@study_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output folder (default runs/<study>/report).")
@click.option("--trial", type=int, help="Highlight this trial as the chosen point.")
@handle_errors
def report(study_file, storage, study_name, checkpoint, data_root, sets, out_dir, trial) -> None:
    """Front plots (PNG and interactive HTML), the table of trials and parameter importances."""
    from pathlib import Path

    from autoprune.cli.display import console
    from autoprune.deliver.report import study_report
    from autoprune.engine.storage import get_record, load_optuna_study

    study = load_study_from_flags(study_file, checkpoint, data_root, storage, sets, study_name)
    ost = load_optuna_study(study)
    chosen = get_record(ost, trial).entry() if trial is not None else None
    files = study_report(ost, Path(out_dir) if out_dir else study.workdir / "report", chosen=chosen)
    for name, path in files.items():
        console.print(f"{name}: {path}")


@click.command()
@study_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (other hosts: say so explicitly).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@handle_errors
def dashboard(study_file, storage, study_name, checkpoint, data_root, sets, host, port) -> None:
    """optuna-dashboard on the study's storage."""
    from autoprune.cli.display import console
    from autoprune.engine.storage import display_url, open_storage
    from autoprune.optional import require

    run_server = require("optuna_dashboard", "report", "the dashboard").run_server
    study = load_study_from_flags(study_file, checkpoint, data_root, storage, sets, study_name)
    console.print(f"optuna-dashboard for {display_url(study.storage_url)} on http://{host}:{port}/ (Ctrl-C stops)")
    run_server(open_storage(study.storage_url), host=host, port=port)
