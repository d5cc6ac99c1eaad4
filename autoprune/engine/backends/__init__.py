"""Search backends: they ask for parameters, call :func:`autoprune.engine.trial.run_trial`, and tell the results through
:mod:`autoprune.engine.ask_tell`.

``BACKENDS`` names them for ``autoprune search --backend``; each entry runs the rest of a study's budget and
returns a :class:`SearchOutcome`. The modules behind them are imported only when a backend is used (Ray is an
optional extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from autoprune.engine.backends.base import SearchOptions, SearchOutcome
from autoprune.registry import Registry

if TYPE_CHECKING:
    from autoprune.engine.context import StudyContext


Backend = Callable[["StudyContext", SearchOptions, Callable[..., None], Callable[[str], None]], SearchOutcome]


def _optuna(ctx: StudyContext, options: SearchOptions, on_trial: Callable[..., None],
            log: Callable[[str], None]) -> SearchOutcome:
    """Optuna's ``study.optimize`` in this process, or in ``options.workers`` local worker processes."""
    if options.workers > 1:
        from autoprune.engine.backends.workers import run_local_workers

        return run_local_workers(ctx, options, on_trial)
    from autoprune.engine.backends.optuna_backend import run_search

    return run_search(ctx, n_trials=options.n_trials, timeout=options.timeout, seed=options.seed, on_trial=on_trial,
                      log=log)


def _ray(ctx: StudyContext, options: SearchOptions, on_trial: Callable[..., None],
         log: Callable[[str], None]) -> SearchOutcome:
    """Ray Tune trials on a local Ray instance or an existing cluster; a restored experiment that ends short of a
    larger budget is followed by a fresh one for the rest."""
    from autoprune.engine.backends.ray_backend import run_ray_search

    def run() -> SearchOutcome:
        return run_ray_search(ctx, n_trials=options.n_trials, address=options.ray_address, workers=options.workers,
                              cpus_per_trial=options.cpus_per_trial, gpus_per_trial=options.gpus_per_trial,
                              timeout=options.timeout, seed=options.seed, device=options.device, log=log,
                              on_trial=on_trial)

    out = run()
    if (out.restored and not out.interrupted and out.completed < options.n_trials and not out.failed_here
            and options.timeout is None):
        ran, messages = out.ran_here, out.messages
        out = run()
        out.ran_here, out.messages = out.ran_here + ran, messages + out.messages
    return out


BACKENDS = Registry[Backend]("backend")
BACKENDS.register("optuna", _optuna)
BACKENDS.register("ray", _ray)

__all__ = ["BACKENDS", "Backend", "SearchOptions", "SearchOutcome"]
