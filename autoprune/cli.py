"""The ``autoprune`` command: search, status, pareto, evaluate.

Exit codes: 0 success, 2 bad input (one line naming what was wrong), 1 other failure, 130 interrupted.
"""

from __future__ import annotations

import collections
import functools
import json
import shlex
import sys
import time
import warnings
from typing import Any, Callable

import click

from autoprune.errors import AutopruneError, first_line

warnings.filterwarnings("ignore", category=FutureWarning, module="torch")


def _fail(msg: str, code: int) -> None:
    click.echo(f"autoprune: error: {msg}", err=True)
    sys.exit(code)


def handle_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AutopruneError as exc:
            if debug:
                raise
            _fail(exc.one_line(), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:  # a bug or an environment problem: one line unless --debug
            if debug:
                raise
            _fail(f"{first_line(exc)} (run with --debug for the traceback)", 1)

    return wrapper


def study_options(fn: Callable) -> Callable:
    for opt in reversed([
        click.argument("study_file", type=click.Path(dir_okay=False)),
        click.option("--storage", envvar="AUTOPRUNE_STORAGE", show_envvar=True,
                     help="Optuna storage URL (default: SQLite file in the study's folder). A URL with a password is "
                          "best given through the environment, or PostgreSQL's PGPASSWORD / ~/.pgpass, not argv."),
        click.option("--study-name", help="Study name in the storage (default: the study file's name)."),
        click.option("--checkpoint", type=click.Path(dir_okay=False), help="Base model state_dict (overrides the study)."),
        click.option("--data-root", type=click.Path(), help="Data folder (overrides the study)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override a study field, e.g. --set recovery.steps=20 (repeatable)."),
        click.option("--debug", is_flag=True, help="Show tracebacks."),
    ]):
        fn = opt(fn)
    return fn


def _load(study_file: str, checkpoint: str | None, data_root: str | None, storage: str | None = None,
          sets: tuple[str, ...] = (), study_name: str | None = None):
    import yaml

    from autoprune.config import load_study

    overrides: dict[str, Any] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise AutopruneError(f"--set expects KEY=VALUE, got {item!r}", field="--set")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise AutopruneError(f"--set {key}: value {value!r} is not a YAML scalar", field="--set") from None
    flags = {"model.checkpoint": checkpoint, "data.root": data_root, "storage.url": storage,
             "storage.study_name": study_name}
    overrides.update({key: value for key, value in flags.items() if value is not None})  # a flag not given keeps --set
    return load_study(study_file, overrides)


@click.group()
@click.version_option(package_name="autoprune")
def main() -> None:
    """Automated structured-pruning search for PyTorch image classifiers."""


# ---------------------------------------------------------------------------------------------------- search
def _sigterm_as_interrupt() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt, the graceful stop. SIGINT too, explicitly: a process started
    in the background by a shell (``cmd &``, nohup, CI runners) inherits SIGINT *ignored*, and Python then never
    turns it into KeyboardInterrupt, so ``kill -INT`` of a ``--workers`` search would do nothing."""
    import signal

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _resume_hint() -> str:
    """The command line that resumes, with any storage password masked."""
    from autoprune.storage import display_url

    return "autoprune " + " ".join(shlex.quote(display_url(a) if "://" in a else a) for a in sys.argv[1:] if a)


def _backend_names() -> list[str]:
    from autoprune.backends import BACKENDS

    return BACKENDS.names()


@main.command()
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
    from autoprune.backends import BACKENDS, SearchOptions
    from autoprune.display import SearchMonitor, search_progress
    from autoprune.storage import preflight

    _sigterm_as_interrupt()
    study = _load(study_file, checkpoint, data_root, storage, sets, study_name)
    preflight(study)
    options = SearchOptions(n_trials or study.config.budget.n_trials, timeout or study.config.budget.timeout, seed,
                            device, workers, ray_address, cpus_per_trial, gpus_per_trial,
                            _worker_args(study_file, study_name, checkpoint, data_root, sets, n_trials, timeout,
                                         device, seed))
    if worker_index is not None:  # a worker started by --workers: plain log lines, no table
        _search_worker(study, options, worker_index)
    t0 = time.perf_counter()
    ctx = _prepare_for_search(study, study_file, device)
    with search_progress() as bar:
        monitor = SearchMonitor(bar, options.n_trials, ctx.reference["macs"], study.directions, list(study.config.objectives))
        outcome = BACKENDS.get(backend)(ctx, options, lambda ost, frozen=None: monitor.refresh(ost), _console_log())
        monitor.refresh(outcome.study, force=True)
    _search_summary(outcome, ctx.reference, options, backend, time.perf_counter() - t0)


def _console_log() -> Callable[[str], None]:
    from autoprune.display import console

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
    from autoprune.backends.optuna_backend import run_search
    from autoprune.context import prepare
    from autoprune.device import resolve_device
    from autoprune.record import TrialRecord

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
    from autoprune.context import prepare
    from autoprune.display import UNRELIABLE_NOTE, console, latency_mark, steps_progress
    from autoprune.models import resolve_model
    from autoprune.storage import display_url

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
    from autoprune.display import console, metrics_table
    from autoprune.storage import counts, front

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
        console.print(f"[yellow]interrupted[/]: completed trials are kept; resume with: {_resume_hint()}")
        sys.exit(130)
    if outcome.messages:
        _fail(f"{len(outcome.messages)} {backend.title()} trial(s) errored (listed above); completed trials are kept, "
              f"resume with: {_resume_hint()}", 1)
    if c["COMPLETE"] < options.n_trials:
        console.print(f"stopped at {c['COMPLETE']}/{options.n_trials} complete trials (timeout); resume with: "
                      f"{_resume_hint()}")


# ---------------------------------------------------------------------------------------------------- status
@main.command()
@study_options
@click.option("--json", "as_json", is_flag=True,
              help="Print {\"trials\": {STATE: n}, \"time_s\": ..., \"latency_unreliable\": n, ...} as JSON.")
@handle_errors
def status(study_file, storage, study_name, checkpoint, data_root, sets, as_json) -> None:
    """Trials by state, and where the study's time went (per phase, fine-tune budget, promotions)."""
    from autoprune.accounting import cost_summary, latency_unreliable
    from autoprune.display import console, cost_table
    from optuna.trial import TrialState

    from autoprune.storage import counts, load_optuna_study, records

    study = _load(study_file, checkpoint, data_root, storage, sets, study_name)
    ost = load_optuna_study(study)
    c = counts(ost)
    finished = records(ost, [s for s in TrialState if s.is_finished()])
    cost = cost_summary(finished)
    reasons = collections.Counter(r.failure.reason if r.failure else "no reason recorded"
                                  for r in finished if r.state == "FAIL")
    unreliable = latency_unreliable(finished)
    if as_json:
        click.echo(json.dumps({"trials": c, **{k: v for k, v in cost.items() if k != "trials"},
                               "fail_reasons": dict(reasons.most_common()), "latency_unreliable": unreliable}))
        return
    console.print(f"study {ost.study_name}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    if cost["trials"]:
        console.print(cost_table(cost))
    if unreliable:
        console.print(f"latency unreliable in {unreliable} trial(s): the machine was contended while they were "
                      "measured; pareto and select mark their latency with ?", markup=False, highlight=False)
    for reason, n in reasons.most_common(5):  # why trials failed, most frequent first
        console.print(f"FAIL x{n}: {reason}", markup=False, highlight=False)


# ---------------------------------------------------------------------------------------------------- pareto
@main.command()
@study_options
@click.option("--json", "as_json", is_flag=True, help="Print {objectives, base, front} as JSON.")
@click.option("--rung", type=click.IntRange(min=0), help="Compare the trials that reached this many fine-tune steps "
              "(default: the highest rung every candidate reached; with cost targets, every target's "
              "best-trained one).")
@handle_errors
def pareto(study_file, storage, study_name, checkpoint, data_root, sets, as_json, rung) -> None:
    """The non-dominated completed trials, compared at one rung."""
    from autoprune.config import DIRECTIONS
    from autoprune.display import console, metrics_table
    from autoprune.storage import StudyAttrs, front, load_optuna_study

    study = _load(study_file, checkpoint, data_root, storage, sets, study_name)
    ost = load_optuna_study(study)
    attrs = StudyAttrs.from_study(ost)
    base = attrs.base
    entries = front(ost, rung)
    if as_json:
        objectives = {o: DIRECTIONS[o] for o in attrs.objectives}
        base_out = {k: base.get(k) for k in ("accuracy", "macs", "params", "latency_ms", "split", "source", "data")}
        paired = ("latency_backend", "latency_dispersion", "latency_reliable")  # the base against itself
        base_out.update({k: base[k] for k in paired if k in base})
        click.echo(json.dumps({"objectives": objectives, "base": base_out, "front": entries}, default=str))
        return
    steps = entries[0]["rung"] if entries else rung
    console.print(metrics_table(f"Pareto front of {ost.study_name} at {steps} fine-tune steps", base, entries,
                                caption=base.get("data", {}).get("note", "")))


# ---------------------------------------------------------------------------------------------------- select
@main.command("select")
@study_options
@click.option("--min-accuracy", type=click.FloatRange(0, 1), help="Cheapest front trial with at least this accuracy.")
@click.option("--max-macs", type=click.FloatRange(min=0, min_open=True), help="Most accurate with at most these MACs.")
@click.option("--max-latency-ms", type=click.FloatRange(min=0, min_open=True), help="Most accurate under this latency.")
@click.option("--knee", is_flag=True, help="The knee of the front (after any constraints).")
@click.option("--json", "as_json", is_flag=True, help="Print the chosen front entry (as in pareto --json) plus reason.")
@click.option("--rung", type=click.IntRange(min=0), help="Choose among the trials that reached this many fine-tune "
              "steps, by their accuracy there (default: the highest rung every candidate reached; with cost "
              "targets, every target's best-trained one).")
@handle_errors
def select_cmd(study_file, storage, study_name, checkpoint, data_root, sets, min_accuracy, max_macs, max_latency_ms,
               knee, as_json, rung) -> None:
    """Pick one trial of the Pareto front and say why."""
    from autoprune.display import console, metrics_table
    from autoprune.pareto import select
    from autoprune.storage import StudyAttrs, front, load_optuna_study

    study = _load(study_file, checkpoint, data_root, storage, sets, study_name)
    ost = load_optuna_study(study)
    attrs = StudyAttrs.from_study(ost)
    entries = front(ost, rung)
    cost = next(o for o in attrs.objectives if o != "accuracy")
    try:
        entry, why = select(entries, cost, min_accuracy=min_accuracy, max_macs=max_macs,
                            max_latency_ms=max_latency_ms, knee=knee)
    except LookupError as exc:
        raise AutopruneError(str(exc).strip("'\""), field="select") from None
    versus = _versus_uniform(study, ost, entry["trial"])
    if as_json:
        click.echo(json.dumps({**entry, "reason": why, **({"vs_uniform": versus} if versus else {})}, default=str))
        return
    console.print(metrics_table(f"Selected trial {entry['trial']}", attrs.base, [entry]))
    console.print(f"why: {why}")
    if versus:
        from autoprune.verdict import describe

        console.print(describe(versus), markup=False, highlight=False)
    console.print(f"next: autoprune retrain {study_file} --trial {entry['trial']}")


def _versus_uniform(study, ost, number: int) -> dict | None:
    """With cost targets: the pick against the uniform baseline at its target (see :mod:`autoprune.verdict`)."""
    if study.config.targets is None:
        return None
    from autoprune.context import prepare
    from autoprune.storage import get_record, records
    from autoprune.verdict import versus_uniform

    # the data and the base model are loaded only for trials that recorded no per-image results (older ones)
    return versus_uniform(lambda: prepare(study, measure_reference=False, recovery_stream=False),
                          get_record(ost, number), records(ost))


# --------------------------------------------------------------------------------------------------- retrain
@main.command()
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

    from autoprune.context import prepare
    from autoprune.display import console, latency_mark, retrain_summary, steps_progress
    from autoprune.finalize import finalize
    from autoprune.retrain import retrain as run_retrain
    from autoprune.optional import require
    from autoprune.storage import get_record, load_optuna_study

    _sigterm_as_interrupt()
    study = _load(study_file, checkpoint, data_root, storage, sets, study_name)
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
                          f"{_resume_hint()}")
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


# ---------------------------------------------------------------------------------------------------- report
@main.command()
@study_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Output folder (default runs/<study>/report).")
@click.option("--trial", type=int, help="Highlight this trial as the chosen point.")
@handle_errors
def report(study_file, storage, study_name, checkpoint, data_root, sets, out_dir, trial) -> None:
    """Front plots (PNG and interactive HTML), the table of trials and parameter importances."""
    from pathlib import Path

    from autoprune.display import console
    from autoprune.report import study_report
    from autoprune.storage import get_record, load_optuna_study

    study = _load(study_file, checkpoint, data_root, storage, sets, study_name)
    ost = load_optuna_study(study)
    chosen = get_record(ost, trial).entry() if trial is not None else None
    files = study_report(ost, Path(out_dir) if out_dir else study.workdir / "report", chosen=chosen)
    for name, path in files.items():
        console.print(f"{name}: {path}")


# ------------------------------------------------------------------------------------------------- dashboard
@main.command()
@study_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (other hosts: say so explicitly).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@handle_errors
def dashboard(study_file, storage, study_name, checkpoint, data_root, sets, host, port) -> None:
    """optuna-dashboard on the study's storage."""
    from autoprune.display import console
    from autoprune.optional import require
    from autoprune.storage import display_url, open_storage

    run_server = require("optuna_dashboard", "report", "the dashboard").run_server
    study = _load(study_file, checkpoint, data_root, storage, sets, study_name)
    console.print(f"optuna-dashboard for {display_url(study.storage_url)} on http://{host}:{port}/ (Ctrl-C stops)")
    run_server(open_storage(study.storage_url), host=host, port=port)


# ---------------------------------------------------------------------------------------------------- evaluate
@main.command()
@study_options
@click.option("--base", "use_base", is_flag=True, help="Evaluate the base model.")
@click.option("--trial", type=int, help="Evaluate this trial's pruned model.")
@click.option("--split", type=click.Choice(["val", "test", "test-full"]), default="val", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def evaluate(study_file, storage, study_name, checkpoint, data_root, sets, use_base, trial, split, device, as_json) -> None:
    """Accuracy, MACs, params and latency of the base model or a trial's model on a split.

    The latency is timed paired with the base on the study's ``measure.latency_backend``: ms, the speed-up over the
    base, the dispersion and whether it is reliable (``--base``: the base paired with itself)."""
    from autoprune.context import prepare
    from autoprune.display import UNRELIABLE_NOTE, console, paired_latency_text
    from autoprune.measure import accuracy, count_macs, count_params
    from autoprune.saving import load_pruned
    from autoprune.storage import get_record, load_optuna_study

    if use_base == (trial is not None):
        raise AutopruneError("give exactly one of --base or --trial N", field="evaluate")
    study = _load(study_file, checkpoint, data_root, storage, sets, study_name)
    if trial is not None:  # check the trial exists before loading data
        record = get_record(load_optuna_study(study), trial)
    ctx = prepare(study, device, measure_reference=False, recovery_stream=False)
    if trial is None:
        model, label = ctx.base, "base"
    else:
        path = record.model_file
        if not path:
            raise AutopruneError(f"trial {trial} has no saved model", field="--trial")
        model, label = load_pruned(path, ctx.fresh_model()).to(ctx.device), f"trial {trial}"
    data_split = ctx.data.get(split)
    out = {"model": label, "split": split, "accuracy": accuracy(model, data_split, study.config.data.batch_size),
           "macs": count_macs(model, ctx.example), "params": count_params(model),
           **_evaluate_latency(ctx, None if trial is None else model), "images": len(data_split), "data": ctx.data.info}
    if as_json:
        click.echo(json.dumps(out))
        return
    console.print(f"{label} on {split} ({len(data_split)} images): accuracy {out['accuracy']:.4f}, "
                  f"MACs {out['macs']:,}, params {out['params']:,}, "
                  f"{paired_latency_text(out, against_base=trial is not None)}", markup=False, highlight=False)
    if not out["latency_reliable"]:
        console.print(UNRELIABLE_NOTE, markup=False, highlight=False)


def _evaluate_latency(ctx, model) -> dict[str, Any]:
    """``model`` (None: the base against itself) timed paired with the base on the study's latency backend, while
    other workers on this device pause (:func:`autoprune.measure.paired_fields`)."""
    from autoprune.latency import paired_latency
    from autoprune.measure import paired_fields

    m = ctx.study.config.measure
    ctx.share_device()
    with ctx.lock.exclusive():
        lat = paired_latency(ctx.latency_base if model is None else model, ctx.latency_base, ctx.latency_input,
                             m.latency_repeats, m.latency_warmup, m.latency_backend)
    return paired_fields(lat)


TRAINING_COMMANDS = ("search", "retrain")  # run for minutes: worth a restart with huge pages


def entry() -> None:
    """The ``autoprune`` command as installed: :func:`main`, for a training command with large CPU tensors on huge
    pages (:mod:`autoprune.hostmalloc`, which may start the program again first: a second ``import torch``, so
    the quick commands skip it)."""
    if sys.argv[1:2] and sys.argv[1] in TRAINING_COMMANDS:
        from autoprune.hostmalloc import restart_with_huge_pages

        restart_with_huge_pages()
    main()


if __name__ == "__main__":
    entry()
