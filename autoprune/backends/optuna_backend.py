"""The Optuna backend: an ask/tell loop in this process over the study's storage."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from autoprune.context import StudyContext
from autoprune.errors import AutopruneError
from autoprune.space import distributions
from autoprune.storage import counts, create_or_load
from autoprune.trial import TrialResult, run_trial


def make_sampler(ctx: StudyContext, seed: int) -> optuna.samplers.BaseSampler:
    s = ctx.study.config.sampler
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def record(trial: optuna.Trial, result: TrialResult, objectives: list[str], constraints) -> list[float]:
    """Store a trial's result on the Optuna trial (user attrs, constraints); return its objective values."""
    trial.set_user_attr("metrics", result.metrics)
    trial.set_user_attr("timings", {k: round(v, 4) for k, v in result.timings.items()})
    trial.set_user_attr("plan", result.plan)
    if result.model_file:
        trial.set_user_attr("model_file", result.model_file)
    m = result.metrics
    if constraints.min_accuracy is not None:
        trial.set_constraint("min_accuracy", constraints.min_accuracy - m["accuracy"])
    if constraints.max_macs is not None:
        trial.set_constraint("max_macs", m["macs"] - constraints.max_macs)
    if constraints.max_latency_ms is not None:
        trial.set_constraint("max_latency_ms", m["latency_ms"] - constraints.max_latency_ms)
    return [float(m[o]) for o in objectives]


@dataclass
class SearchOutcome:
    study: optuna.Study
    completed: int
    failed_here: int
    ran_here: int
    interrupted: bool = False


def run_search(
    ctx: StudyContext,
    *,
    n_trials: int,
    timeout: float | None = None,
    storage_url: str | None = None,
    study_name: str | None = None,
    seed: int | None = None,
    on_trial: Callable[[optuna.Study, int], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
    max_failures: int = 5,
) -> SearchOutcome:
    """Run trials until the study holds ``n_trials`` COMPLETE trials (resume counts earlier ones) or time runs out."""
    import time

    cfg = ctx.study.config
    seed = cfg.seed if seed is None else seed
    # Derive this run's sampler seed from how far the study already is, so a resumed run does not replay the
    # random start-up points of the first run.
    probe = create_or_load(ctx.study, storage_url, study_name, optuna.samplers.RandomSampler(), ctx.reference)
    done_before = len(probe.get_trials(deepcopy=False))
    ost = create_or_load(ctx.study, storage_url, study_name, make_sampler(ctx, seed + done_before), ctx.reference)
    dists = distributions(ctx.study.space, ctx.groups)
    save_dir = Path(ctx.study.workdir) / "models"
    start = time.monotonic()
    ran = failed = 0
    while True:
        completed = counts(ost)["COMPLETE"]
        if completed >= n_trials or (timeout is not None and time.monotonic() - start >= timeout):
            break
        trial = ost.ask(dists)
        try:
            result = run_trial(ctx, trial.params, seed=seed + trial.number, save_dir=save_dir)
            values = record(trial, result, list(cfg.objectives), cfg.constraints)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted (SIGINT)")
            ost.tell(trial, state=TrialState.FAIL)
            return SearchOutcome(ost, counts(ost)["COMPLETE"], failed, ran, interrupted=True)
        except (AutopruneError, FloatingPointError, RuntimeError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            trial.set_user_attr("fail_reason", reason)
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            ost.tell(trial, state=TrialState.FAIL)
            failed += 1
            ran += 1
            log(f"trial {trial.number} failed: {reason}")
            if failed == ran and failed >= max_failures:
                raise AutopruneError(f"the first {failed} trials of this run all failed (last: {reason}); "
                                     "stopping instead of burning the budget")
            if on_trial:
                on_trial(ost, trial.number)
            continue
        ost.tell(trial, values)
        ran += 1
        if on_trial:
            on_trial(ost, trial.number)
    return SearchOutcome(ost, counts(ost)["COMPLETE"], failed, ran)
