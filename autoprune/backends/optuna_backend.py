"""The Optuna backend: ``study.optimize`` in this process over the study's storage.

Several processes (``--workers N``, or the same command on other machines against one PostgreSQL URL) run this
same loop against one study. Optuna gives each trial a distinct number, heartbeats mark a killed worker's trial
FAIL and re-enqueue its parameters, and the budget is shared: a trial runs only while the COMPLETE trials plus
the RUNNING trials numbered before it are fewer than the budget, so the study ends with exactly the budget.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from autoprune.context import StudyContext
from autoprune.errors import AutopruneError
from autoprune.space import distributions
from autoprune.storage import create_or_load, heartbeat_settings, open_storage, register_host
from autoprune.trial import TrialResult, run_trial

TRIAL_ERRORS = (AutopruneError, FloatingPointError, RuntimeError, ValueError)


def make_sampler(ctx: StudyContext, seed: int) -> optuna.samplers.BaseSampler:
    s = ctx.study.config.sampler
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def suggest_all(trial: optuna.Trial, dists: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Sample every parameter (an enqueued retry gets its fixed values back)."""
    for name, d in dists.items():
        if isinstance(d, FloatDistribution):
            trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, IntDistribution):
            trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, CategoricalDistribution):
            trial.suggest_categorical(name, d.choices)
        else:
            raise TypeError(f"unsupported distribution {type(d).__name__} for {name}")
    return dict(trial.params)


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


def _states(ost: optuna.Study) -> list[tuple[int, TrialState]]:
    live = ost.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    return [(t.number, t.state) for t in live]


def wait_for_slot(ost: optuna.Study, number: int, budget: int, poll_s: float = 1.0) -> bool:
    """True when trial ``number`` may run; False once the budget is reached. Waits while earlier trials run."""
    while True:
        states = _states(ost)
        complete = sum(1 for _, s in states if s == TrialState.COMPLETE)
        if complete >= budget:
            return False
        ahead = sum(1 for n, s in states if s == TrialState.RUNNING and n < number)
        if complete + ahead < budget:
            return True
        optuna.storages.fail_stale_trials(ost)  # a dead worker's trial must not block the budget forever
        time.sleep(poll_s)


def run_search(
    ctx: StudyContext,
    *,
    n_trials: int,
    timeout: float | None = None,
    storage_url: str | None = None,
    study_name: str | None = None,
    seed: int | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
    max_failures: int | None = None,
    worker: int = 0,
) -> SearchOutcome:
    """Run trials until the study holds ``n_trials`` COMPLETE trials (resume counts earlier ones) or time runs out.

    Returns with ``interrupted`` set on Ctrl-C / SIGTERM (the running trial is recorded FAIL, nothing completed is
    lost). Raises AutopruneError when the first ``max_failures`` trials of this run all fail.
    """
    cfg = ctx.study.config
    seed = cfg.seed if seed is None else seed
    max_failures = max_failures or cfg.budget.max_initial_failures
    url = storage_url or ctx.study.storage_url
    storage = open_storage(url, heartbeat_settings(ctx.study))
    probe = create_or_load(ctx.study, url, study_name, optuna.samplers.RandomSampler(), ctx.reference, storage)
    register_host(probe, url)
    # Seed this process's sampler from how far the study already is, so that a resumed run or a second worker
    # does not replay the random start-up points of the first.
    done_before = len(probe.get_trials(deepcopy=False))
    ost = create_or_load(ctx.study, url, study_name, make_sampler(ctx, seed + 7919 * worker + done_before),
                         ctx.reference, storage)
    dists = distributions(ctx.study.space, ctx.groups)
    save_dir = Path(ctx.study.workdir) / "models"
    tally = {"ran": 0, "failed": 0, "last_reason": ""}

    def objective(trial: optuna.Trial) -> list[float]:
        if not wait_for_slot(ost, trial.number, n_trials):
            trial.set_user_attr("skipped", "budget reached by other workers")
            ost.stop()
            raise optuna.TrialPruned("budget reached by other workers")
        params = suggest_all(trial, dists)
        tally["ran"] += 1
        try:
            result = run_trial(ctx, params, seed=seed + trial.number, save_dir=save_dir)
        except TRIAL_ERRORS as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            trial.set_user_attr("fail_reason", reason)
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            tally["failed"] += 1
            tally["last_reason"] = reason
            log(f"trial {trial.number} failed: {reason}")
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        return record(trial, result, list(cfg.objectives), cfg.constraints)

    def after_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if frozen.state != TrialState.PRUNED and on_trial:
            on_trial(study, frozen)
        states = [s for _, s in _states(study)]
        complete, running = states.count(TrialState.COMPLETE), states.count(TrialState.RUNNING)
        if tally["failed"] == tally["ran"] and tally["failed"] >= max_failures:
            study.stop()
        elif complete + running >= n_trials:  # the budget is reached, or other workers' running trials fill it
            study.stop()

    outcome = SearchOutcome(ost, 0, 0, 0)
    if sum(1 for _, s in _states(ost) if s == TrialState.COMPLETE) < n_trials:
        try:
            ost.optimize(objective, timeout=timeout, catch=TRIAL_ERRORS, callbacks=[after_trial],
                         gc_after_trial=False, show_progress_bar=False)
        except KeyboardInterrupt:
            outcome.interrupted = True
    outcome.completed = sum(1 for _, s in _states(ost) if s == TrialState.COMPLETE)
    outcome.failed_here, outcome.ran_here = tally["failed"], tally["ran"]
    if not outcome.interrupted and tally["failed"] == tally["ran"] and tally["failed"] >= max_failures:
        raise AutopruneError(f"the first {tally['failed']} trials of this run all failed (last: {tally['last_reason']}); "
                             "stopping instead of burning the budget")
    return outcome
