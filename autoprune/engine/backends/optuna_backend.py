"""The Optuna backend: ``study.optimize`` in this process over the study's storage.

Several processes (``--workers N``, or the same command on other machines against one PostgreSQL URL) run this
same loop against one study. Optuna gives each trial a distinct number, heartbeats mark a killed worker's trial
FAIL and re-enqueue its parameters, and the budget is shared: a trial runs only while the COMPLETE trials plus
the RUNNING trials numbered before it are fewer than the budget, so the study ends with exactly the budget.
Sampling, recording and promotion go through :mod:`autoprune.engine.ask_tell`, as in the Ray backend.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from autoprune.engine.ask_tell import ask, enqueue_due, study_sampler, tell_failure, tell_result
from autoprune.engine.backends.base import SearchOutcome
from autoprune.engine.context import StudyContext
from autoprune.engine.record import Failure
from autoprune.engine.storage import create_or_load, get_record, heartbeat_settings, open_storage, register_host
from autoprune.engine.trial import continue_trial, run_trial
from autoprune.engine.warm_start import enqueue_warm_start
from autoprune.errors import SearchFailedError

# Anything a trial raises (a NaN loss, CUDA out of memory, a plan torch-pruning cannot apply, an exception in a
# user model) fails that trial only; KeyboardInterrupt and SystemExit are not Exceptions and stop the search.
TRIAL_ERRORS = (Exception,)


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


def _states(ost: optuna.Study) -> list[tuple[int, TrialState]]:
    live = ost.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    return [(t.number, t.state) for t in live]


def _complete(ost: optuna.Study) -> int:
    return sum(1 for _, s in _states(ost) if s == TrialState.COMPLETE)


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


@dataclass
class _Tally:
    """This run's trials and failures, and the rule that stops a run burning its budget on failures."""

    max_first: int
    max_total: int
    ran: int = 0
    failed: int = 0
    last_reason: str = ""

    def failing(self) -> str | None:
        """Why this run should stop for its failures, or None."""
        if self.failed == self.ran and self.failed >= self.max_first:
            return f"the first {self.failed} trials of this run all failed"
        if self.failed >= self.max_total:
            return f"{self.failed} of the {self.ran} trials of this run failed (budget.max_failures)"
        return None


def open_search_study(ctx: StudyContext, url: str, study_name: str | None, seed: int, worker: int) -> optuna.Study:
    """Create or load the study (checked to mean the same thing), register this host, attach this worker's sampler."""
    storage = open_storage(url, heartbeat_settings(ctx.study))
    probe = create_or_load(ctx.study, url, study_name, optuna.samplers.RandomSampler(), ctx.reference, storage)
    register_host(probe, url)
    return create_or_load(ctx.study, url, study_name, study_sampler(ctx, seed, probe, worker), ctx.reference,
                          storage)


def _objective(ctx: StudyContext, ost: optuna.Study, n_trials: int, seed: int, tally: _Tally,
               interrupts: Interrupts, log: Callable[[str], None]) -> Callable[[optuna.Trial], list[float]]:
    dists = ctx.distributions()
    save_dir = Path(ctx.study.workdir) / "models"

    def objective(trial: optuna.Trial) -> list[float]:
        try:
            with interrupts.interruptible():
                may_run = wait_for_slot(ost, trial.number, n_trials)
            if not may_run:
                trial.set_user_attr("skipped", "budget reached by other workers")
                ost.stop()
                raise optuna.TrialPruned("budget reached by other workers")
            asked = ask(trial, dists, ctx.turns, seed, ctx.balance)
            tally.ran += 1
            with interrupts.interruptible():
                if asked.continues is None:
                    record = run_trial(ctx, asked.params, seed=asked.seed, save_dir=save_dir)
                else:  # a deferred promotion: the candidate of trial `continues`, one rung further
                    record = continue_trial(ctx, get_record(ost, asked.continues), save_dir=save_dir)
        except TRIAL_ERRORS as exc:
            if isinstance(exc, optuna.TrialPruned):
                raise
            failure = Failure.from_exception(exc)
            tell_failure(trial, failure)
            tally.failed, tally.last_reason = tally.failed + 1, failure.reason
            log(f"trial {trial.number} failed: {failure.reason}")
            raise
        except KeyboardInterrupt:
            tell_failure(trial, Failure("interrupted"))
            raise
        return tell_result(trial, record, ctx.study)

    return objective


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
    has failed ``budget.max_failures`` trials (default: as many as the budget, at least ``max_failures``).
    """
    cfg = ctx.study.config
    seed = cfg.seed if seed is None else seed
    max_first = max_failures or cfg.budget.max_initial_failures
    tally = _Tally(max_first, cfg.budget.max_failures or max(n_trials, max_first))
    ost = open_search_study(ctx, storage_url or ctx.study.storage_url, study_name, seed, worker)
    queued = enqueue_warm_start(ost, ctx, ctx.distributions())
    if queued:
        log(f"warm start: the first {queued} trials are the search space's uniform and global-pruning baselines")
    enqueue_due(ost, ctx.study)  # on resume: promotions that were due when the last run stopped
    interrupts = Interrupts()

    def after_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if frozen.state != TrialState.PRUNED and on_trial:
            on_trial(study, frozen)
        if frozen.state == TrialState.COMPLETE:
            enqueue_due(study, ctx.study)  # the candidates now in their rung's best 1/eta go up next
        # Trials other workers are still running do not stop this one: the next trial waits for a slot
        # (wait_for_slot), so a worker that was killed mid-trial does not leave the budget short.
        if tally.failing() or _complete(study) >= n_trials or interrupts.requested:
            study.stop()

    outcome = SearchOutcome(ost, 0, 0, 0)
    if _complete(ost) < n_trials:
        try:
            with interrupts.installed():
                ost.optimize(_objective(ctx, ost, n_trials, seed, tally, interrupts, log), timeout=timeout,
                             catch=TRIAL_ERRORS, callbacks=[after_trial], gc_after_trial=False,
                             show_progress_bar=False)
        except KeyboardInterrupt:
            outcome.interrupted = True
        outcome.interrupted = outcome.interrupted or interrupts.requested
    outcome.completed, outcome.failed_here, outcome.ran_here = _complete(ost), tally.failed, tally.ran
    why = None if outcome.interrupted else tally.failing()
    if why:
        raise SearchFailedError(f"{why} (last: {tally.last_reason}); stopping instead of burning the budget")
    return outcome
