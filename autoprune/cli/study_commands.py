"""The commands that read a study: ``status``, ``pareto``, ``select`` (with the verdict against uniform) and
``evaluate``."""

from __future__ import annotations

import collections
import json
from typing import Any

import click

from autoprune.cli.options import handle_errors, load_study_from_flags, study_options
from autoprune.errors import AutopruneError


@click.command()
@study_options
@click.option("--json", "as_json", is_flag=True,
              help="Print {\"trials\": {STATE: n}, \"time_s\": ..., \"latency_unreliable\": n, ...} as JSON.")
@handle_errors
def status(study_file, storage, study_name, checkpoint, data_root, sets, as_json) -> None:
    """Trials by state, and where the study's time went (per phase, fine-tune budget, promotions)."""
    from optuna.trial import TrialState

    from autoprune.cli.display import console, cost_table
    from autoprune.engine.status import cost_summary, latency_unreliable
    from autoprune.engine.storage import counts, load_optuna_study, records

    study = load_study_from_flags(study_file, checkpoint, data_root, storage, sets, study_name)
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


@click.command()
@study_options
@click.option("--json", "as_json", is_flag=True, help="Print {objectives, base, front} as JSON.")
@click.option("--rung", type=click.IntRange(min=0), help="Compare the trials that reached this many fine-tune steps "
              "(default: the highest rung every candidate reached; with cost targets, every target's "
              "best-trained one).")
@handle_errors
def pareto(study_file, storage, study_name, checkpoint, data_root, sets, as_json, rung) -> None:
    """The non-dominated completed trials, compared at one rung."""
    from autoprune.cli.display import console, metrics_table
    from autoprune.config import DIRECTIONS
    from autoprune.engine.storage import StudyAttrs, front, load_optuna_study

    study = load_study_from_flags(study_file, checkpoint, data_root, storage, sets, study_name)
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


@click.command("select")
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
    from autoprune.cli.display import console, metrics_table
    from autoprune.engine.storage import StudyAttrs, front, load_optuna_study
    from autoprune.pareto import select

    study = load_study_from_flags(study_file, checkpoint, data_root, storage, sets, study_name)
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
        from autoprune.deliver.vs_uniform import describe

        console.print(describe(versus), markup=False, highlight=False)
    console.print(f"next: autoprune retrain {study_file} --trial {entry['trial']}")


def _versus_uniform(study, ost, number: int) -> dict | None:
    """With cost targets: the pick against the uniform baseline at its target (see :mod:`autoprune.deliver.vs_uniform`)."""
    if study.config.targets is None:
        return None
    from autoprune.deliver.vs_uniform import versus_uniform
    from autoprune.engine.context import prepare
    from autoprune.engine.storage import get_record, records

    # the data and the base model are loaded only for trials that recorded no per-image results (older ones)
    return versus_uniform(lambda: prepare(study, measure_reference=False, recovery_stream=False),
                          get_record(ost, number), records(ost))


@click.command()
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
    from autoprune.cli.display import UNRELIABLE_NOTE, console, paired_latency_text
    from autoprune.engine.context import prepare
    from autoprune.engine.storage import get_record, load_optuna_study
    from autoprune.metrics.costs import accuracy, count_macs, count_params
    from autoprune.pruning.saving import load_pruned

    if use_base == (trial is not None):
        raise AutopruneError("give exactly one of --base or --trial N", field="evaluate")
    study = load_study_from_flags(study_file, checkpoint, data_root, storage, sets, study_name)
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
    other workers on this device pause (:func:`autoprune.metrics.costs.paired_fields`)."""
    from autoprune.metrics.costs import paired_fields
    from autoprune.metrics.latency import paired_latency

    m = ctx.study.config.measure
    ctx.share_device()
    with ctx.lock.exclusive():
        lat = paired_latency(ctx.latency_base if model is None else model, ctx.latency_base, ctx.latency_input,
                             m.latency_repeats, m.latency_warmup, m.latency_backend)
    return paired_fields(lat)
