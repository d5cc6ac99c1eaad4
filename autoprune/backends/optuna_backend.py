"""The Optuna backend: ``study.optimize`` in this process over the study's storage.

Several processes (``--workers N``, or the same command on other machines against one PostgreSQL URL) run this
same loop against one study. Optuna gives each trial a distinct number, heartbeats mark a killed worker's trial
FAIL and re-enqueue its parameters, and the budget is shared: a trial runs only while the COMPLETE trials plus
the RUNNING trials numbered before it are fewer than the budget, so the study ends with exactly the budget.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from autoprune.context import StudyContext
from autoprune.errors import SearchFailedError
from autoprune.fidelity import study_promoter
from autoprune.storage import create_or_load, heartbeat_settings, open_storage, register_host
from autoprune.trial import TrialResult, run_trial
from autoprune.warmstart import enqueue_warm_start

# Anything a trial raises (a NaN loss, CUDA out of memory, a plan torch-pruning cannot apply, an exception in a
# user model) fails that trial only; KeyboardInterrupt and SystemExit are not Exceptions and stop the search.
TRIAL_ERRORS = (Exception,)


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
    if "fidelity" in result.extra:
        trial.set_user_attr("fidelity", result.extra["fidelity"])
    m = result.metrics
    if constraints.min_accuracy is not None:
        trial.set_constraint("min_accuracy", constraints.min_accuracy - m["accuracy"])
    if constraints.max_macs is not None:
        trial.set_constraint("max_macs", m["macs"] - constraints.max_macs)
    if constraints.max_latency_ms is not None:
        trial.set_constraint("max_latency_ms", m["latency_ms"] - constraints.max_latency_ms)
    return [float(m[o]) for o in objectives]


class Interrupts:
    """Ctrl-C / SIGTERM during a search, handled where it is safe.

    Inside a trial's compute (``interruptible``) the signal raises KeyboardInterrupt at once, so a long fine-tune
    stops within a step and the trial is recorded FAIL ("interrupted"). Anywhere else — Optuna writing a finished
    trial to the storage, sampling the next one, the callbacks — it is only recorded, and the search stops after
    that bookkeeping: a KeyboardInterrupt raised inside Optuna's ``tell`` would leave the trial RUNNING (and
    Optuna 5 then fails with an UnboundLocalError). A second signal while one is pending interrupts at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._armed = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self._armed or self.requested:
            self.requested = True
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self):
        """Handle the signals for the duration (only possible in the main thread; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        try:
            yield self
        finally:
            for s, h in self._previous.items():
                signal.signal(s, h)

    @contextlib.contextmanager
    def interruptible(self):
        """A section a signal may interrupt (raises at once if one is already pending)."""
        if self.requested:
            raise KeyboardInterrupt
        self._armed = True
        try:
            yield
        finally:
            self._armed = False


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
    lost). Raises SearchFailedError when the first ``max_failures`` trials of this run all fail, or when the run
    has failed ``budget.max_failures`` trials (default: as many as the budget, at least ``max_failures``) whatever succeeded in between.
    """
    cfg = ctx.study.config
    seed = cfg.seed if seed is None else seed
    max_failures = max_failures or cfg.budget.max_initial_failures
    max_total_failures = cfg.budget.max_failures or max(n_trials, max_failures)
    url = storage_url or ctx.study.storage_url
    storage = open_storage(url, heartbeat_settings(ctx.study))
    probe = create_or_load(ctx.study, url, study_name, optuna.samplers.RandomSampler(), ctx.reference, storage)
    register_host(probe, url)
    # Seed this process's sampler from how far the study already is, so that a resumed run or a second worker
    # does not replay the random start-up points of the first.
    done_before = len(probe.get_trials(deepcopy=False))
    ost = create_or_load(ctx.study, url, study_name, make_sampler(ctx, seed + 7919 * worker + done_before),
                         ctx.reference, storage)
    dists = ctx.distributions()
    queued = enqueue_warm_start(ost, ctx, dists)
    if queued:
        log(f"warm start: the first {queued} trials are the search space's uniform and global-pruning baselines")
    fid = cfg.fidelity
    promoter = study_promoter(lambda: ost, list(cfg.objectives), ctx.study.directions, fid.eta) if fid.promote_steps else None
    save_dir = Path(ctx.study.workdir) / "models"
    tally = {"ran": 0, "failed": 0, "last_reason": ""}
    interrupts = Interrupts()

    def objective(trial: optuna.Trial) -> list[float]:
        try:
            with interrupts.interruptible():
                may_run = wait_for_slot(ost, trial.number, n_trials)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        if not may_run:
            trial.set_user_attr("skipped", "budget reached by other workers")
            ost.stop()
            raise optuna.TrialPruned("budget reached by other workers")
        params = suggest_all(trial, dists)
        tally["ran"] += 1
        try:
            with interrupts.interruptible():
                result = run_trial(ctx, params, seed=seed + trial.number, save_dir=save_dir, promote=promoter)
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

    def failing() -> str | None:
        """Why this run should stop for its failures, or None."""
        if tally["failed"] == tally["ran"] and tally["failed"] >= max_failures:
            return f"the first {tally['failed']} trials of this run all failed"
        if tally["failed"] >= max_total_failures:
            return f"{tally['failed']} of the {tally['ran']} trials of this run failed (budget.max_failures)"
        return None

    def after_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if frozen.state != TrialState.PRUNED and on_trial:
            on_trial(study, frozen)
        complete = sum(1 for _, s in _states(study) if s == TrialState.COMPLETE)
        # Trials other workers are still running do not stop this one: the next trial waits for a slot
        # (wait_for_slot), so a worker that was killed mid-trial does not leave the budget short.
        if failing() or complete >= n_trials or interrupts.requested:
            study.stop()

    outcome = SearchOutcome(ost, 0, 0, 0)
    if sum(1 for _, s in _states(ost) if s == TrialState.COMPLETE) < n_trials:
        try:
            with interrupts.installed():
                ost.optimize(objective, timeout=timeout, catch=TRIAL_ERRORS, callbacks=[after_trial],
                             gc_after_trial=False, show_progress_bar=False)
        except KeyboardInterrupt:
            outcome.interrupted = True
        outcome.interrupted = outcome.interrupted or interrupts.requested
    outcome.completed = sum(1 for _, s in _states(ost) if s == TrialState.COMPLETE)
    outcome.failed_here, outcome.ran_here = tally["failed"], tally["ran"]
    why = None if outcome.interrupted else failing()
    if why:
        raise SearchFailedError(f"{why} (last: {tally['last_reason']}); stopping instead of burning the budget")
    return outcome
