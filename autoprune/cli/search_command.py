"""``autoprune search``: prepare the study, run a backend, print the front; workers and graceful stops."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable

import click

from autoprune.cli.options import (
    fail,
    handle_errors,
    load_study_from_flags,
    resume_hint,
    sigterm_as_interrupt,
    study_options,
)


def _backend_names() -> list[str]:
    from autoprune.engine.backends import BACKENDS

    return BACKENDS.names()


@click.command()
@study_options
@click.option("--n-trials", type=click.IntRange(min=1), help="Budget: COMPLETE trials the study should hold.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Stop starting trials after S seconds.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, help="Sampler and trial seed (default: the study's).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on this machine, all against the study's storage.")
@click.option("--backend", type=click.Choice(_backend_names()), default="optuna", show_default=True,
              help="optuna: worker processes on this machine; ray: Ray Tune trials on a local or existing cluster.")
@click.option("--ray-address", help="Join this Ray cluster (ray start --head ...) instead of starting a local one.")
@click.option("--cpus-per-trial", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--gpus-per-trial", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--worker-index", type=int, hidden=True)
@handle_errors
def search(study_file, storage, study_name, checkpoint, data_root, sets, n_trials, timeout, device, seed, workers,
           backend, ray_address, cpus_per_trial, gpus_per_trial, worker_index) -> None:
    """Search per-group pruning ratios and scorers; print the Pareto front. Running it again resumes."""
    from autoprune.api.search import run_study
    from autoprune.engine.backends import SearchOptions
    from autoprune.engine.storage import preflight

    sigterm_as_interrupt()
    study = load_study_from_flags(study_file, checkpoint, data_root, storage, sets, study_name)
    options = SearchOptions(n_trials or study.config.budget.n_trials, timeout or study.config.budget.timeout, seed,
                            device, workers, ray_address, cpus_per_trial, gpus_per_trial,
                            _worker_args(study_file, study_name, checkpoint, data_root, sets, n_trials, timeout,
                                         device, seed))
    if worker_index is not None:  # a worker started by --workers: plain log lines, no table
        preflight(study)
        _search_worker(study, options, worker_index)
    t0 = time.perf_counter()
    ctx, outcome = run_study(study, options, backend, lambda s: _prepare_for_search(s, study_file, device),
                             lambda ctx: _monitor(ctx, options.n_trials))
    _search_summary(outcome, ctx.reference, options, backend, time.perf_counter() - t0)


@contextlib.contextmanager
def _monitor(ctx, n_trials: int):
    """The live table of the search (the front so far, trials, promotions), refreshed as trials end; a call
    without a trial (the backend's end, a poll of the workers) redraws it at once."""
    from autoprune.cli.display import SearchMonitor, search_progress

    study = ctx.study
    with search_progress() as bar:
        monitor = SearchMonitor(bar, n_trials, ctx.reference["macs"], study.directions, list(study.config.objectives))
        yield (lambda ost, frozen=None: monitor.refresh(ost, force=frozen is None)), _console_log()


def _console_log() -> Callable[[str], None]:
    from autoprune.cli.display import console

    return console.print


def _worker_args(study_file, study_name, checkpoint, data_root, sets, n_trials, timeout, device, seed) -> list[str]:
    """The ``search`` arguments a local worker process repeats. The storage URL is not among them: it reaches the
    workers through the environment (``AUTOPRUNE_STORAGE``), so its password never shows in the process list."""
    command = ["search", str(study_file)]
    for flag, value in (("--study-name", study_name), ("--checkpoint", checkpoint), ("--data-root", data_root),
                        ("--n-trials", n_trials), ("--timeout", timeout), ("--device", device), ("--seed", seed)):
        if value is not None:
            command += [flag, str(value)]
    for item in sets:
        if item.partition("=")[0].strip() != "storage.url":
            command += ["--set", item]
    return command


def _search_worker(study, options, index: int) -> None:
    """The loop of one ``--workers`` process: trials until the shared budget is reached; exits."""
    from autoprune.device import resolve_device
    from autoprune.engine.backends.optuna_backend import run_search
    from autoprune.engine.context import prepare
    from autoprune.engine.record import TrialRecord

    ctx = prepare(study, resolve_device(options.device, index), measure_reference=False)  # worker i: GPU i mod count
    ctx.share_device()

    def log_trial(ost, frozen) -> None:  # noqa: ARG001
        r = TrialRecord.from_frozen(frozen)
        said = r.metrics.to_dict() if r.metrics else (r.failure.reason if r.failure else "")
        click.echo(f"worker {index}: trial {frozen.number} {frozen.state.name} {said}")

    outcome = run_search(ctx, n_trials=options.n_trials, timeout=options.timeout, seed=options.seed, on_trial=log_trial,
                         log=click.echo, worker=index)
    click.echo(f"worker {index}: done, {outcome.ran_here} ran, {outcome.failed_here} failed")
    sys.exit(130 if outcome.interrupted else 0)


def _prepare_for_search(study, study_file, device):
    """Prepare the study (a progress bar while a base model trains) and print the banner and the base."""
    from autoprune.cli.display import UNRELIABLE_NOTE, console, latency_mark, steps_progress
    from autoprune.engine.context import prepare
    from autoprune.engine.storage import display_url
    from autoprune.models.factory import resolve_model

    # The header waits until prepare has checked the model and the checkpoint (or starts training): bad input
    # stays the single error line.
    header = [f"[bold]autoprune[/] study [cyan]{study.study_name}[/] ({study_file}), "
              f"storage {display_url(study.storage_url)}"]

    def say(msg: str = "") -> None:
        while header:
            console.print(header.pop(), markup=True, highlight=False)
        if msg:
            console.print(msg)

    with steps_progress() as bar:
        task = bar.add_task("training the base model", total=None, visible=False)

        def on_base_step(step: int, total: int) -> None:
            say()
            bar.update(task, completed=step, total=total, visible=True)

        ctx = prepare(study, device, on_base_step=on_base_step, log=say)
    say()
    ctx.share_device()  # latency is measured while other autoprune workers on this device pause
    ref, cfg = ctx.reference, study.config
    mark = latency_mark(ref.get("latency_reliable"))
    console.print(f"base: {ref['source']}; val accuracy {ref['accuracy']:.4f}, MACs {ref['macs']:,}, "
                  f"params {ref['params']:,}, latency {ref['latency_ms']:.3f}{mark} ms (batch "
                  f"{cfg.measure.latency_batch_size}, {ref['latency_backend']}, paired with itself: dispersion "
                  f"{ref['latency_dispersion']:.3f})", markup=False, highlight=False)
    if mark:
        console.print(UNRELIABLE_NOTE, markup=False, highlight=False)
    console.print(f"data: {ref['data']['note']} (seed {ref['data']['seed']}, sizes {ref['data']['sizes']}); "
                  f"{len(ctx.groups)} pruning groups by {study.space.groups.by}")
    note = resolve_model(cfg.model.name).note
    if note:
        console.print(f"[dim]{note}[/]")
    return ctx


def _search_summary(outcome, reference: dict, options, backend: str, seconds: float) -> None:
    """The front, the counts, and how the run ended (exit 130 when interrupted, 1 when Ray trials errored)."""
    from autoprune.cli.display import console, metrics_table
    from autoprune.engine.storage import counts, front

    ost = outcome.study
    c = counts(ost)
    for msg in outcome.messages:
        console.print(f"[red]errored {backend.title()} trial[/]: {msg}")
    entries = front(ost)
    at = f" at {entries[0]['rung']} fine-tune steps" if entries else ""
    console.print(metrics_table(f"Pareto front: {len(entries)} of {c['COMPLETE']} complete trials (accuracy on the "
                                f"validation split{at})", reference, entries))
    console.print(f"trials: {c}; this run: {outcome.ran_here} ran, {outcome.failed_here} failed, {seconds:.1f} s")
    if outcome.interrupted:
        console.print(f"[yellow]interrupted[/]: completed trials are kept; resume with: {resume_hint()}")
        sys.exit(130)
    if outcome.messages:
        fail(f"{len(outcome.messages)} {backend.title()} trial(s) errored (listed above); completed trials are kept, "
              f"resume with: {resume_hint()}", 1)
    if c["COMPLETE"] < options.n_trials:
        console.print(f"stopped at {c['COMPLETE']}/{options.n_trials} complete trials (timeout); resume with: "
                      f"{resume_hint()}")
