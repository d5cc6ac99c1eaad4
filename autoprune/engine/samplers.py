"""The Optuna samplers a study may name (``sampler.name``), each a factory of (sampler config, seed, placing).

Every sampler here handles multi-objective studies (accuracy against cost); the backends build theirs through
:func:`make_sampler`. ``allocation`` is autoprune's own (:mod:`autoprune.engine.allocation_sampler`): it needs
the study's cost targets and a way to place an allocation on one (a
:class:`~autoprune.engine.allocation_sampler.Placing`).
"""

from __future__ import annotations

from typing import Callable, Protocol

import optuna

from autoprune.engine.allocation_sampler import AllocationSampler, Placing
from autoprune.errors import AutopruneError
from autoprune.registry import Registry


class SamplerSettings(Protocol):
    """What building a sampler reads (a :class:`~autoprune.config.SamplerConfig` has all of it)."""

    name: str
    n_startup_trials: int


SamplerFactory = Callable[[SamplerSettings, int, Placing | None], optuna.samplers.BaseSampler]


def _tpe(config: SamplerSettings, seed: int, placing: Placing | None = None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.n_startup_trials, multivariate=True)


def _nsga2(config: SamplerSettings, seed: int, placing: Placing | None = None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed)


def _random(config: SamplerSettings, seed: int, placing: Placing | None = None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _gp(config: SamplerSettings, seed: int, placing: Placing | None = None) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=config.n_startup_trials)


def _allocation(config: SamplerSettings, seed: int, placing: Placing | None = None) -> optuna.samplers.BaseSampler:
    if placing is None:
        raise AutopruneError("sampler 'allocation' searches allocations placed on cost targets; this study has no "
                             "targets (set targets, or another sampler)", field="sampler.name")
    return AllocationSampler(placing, screen=config.n_startup_trials, seed=seed)


SAMPLERS = Registry[SamplerFactory]("sampler")
SAMPLERS.register("tpe", _tpe)
SAMPLERS.register("nsga2", _nsga2)
SAMPLERS.register("random", _random)
SAMPLERS.register("gp", _gp)
SAMPLERS.register("allocation", _allocation)


def make_sampler(config: SamplerSettings, seed: int, placing: Placing | None = None) -> optuna.samplers.BaseSampler:
    """The sampler ``config`` names, seeded with ``seed`` (``placing``: for a study with cost targets).

    Example:
        >>> from autoprune.config import SamplerConfig
        >>> type(make_sampler(SamplerConfig(name="random"), seed=0)).__name__
        'RandomSampler'
    """
    return SAMPLERS.get(config.name)(config, seed, placing)
