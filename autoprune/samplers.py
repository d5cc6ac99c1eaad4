"""The Optuna samplers a study may name (``sampler.name``), each a factory of (sampler config, seed).

Every sampler here handles multi-objective studies (accuracy against cost); the backends build theirs through
:func:`make_sampler`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import optuna

from autoprune.registry import Registry

if TYPE_CHECKING:
    from autoprune.config import SamplerConfig

SamplerFactory = Callable[["SamplerConfig", int], optuna.samplers.BaseSampler]


def _tpe(config: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.n_startup_trials, multivariate=True)


def _nsga2(config: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed)


def _random(config: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _gp(config: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=config.n_startup_trials)


SAMPLERS = Registry[SamplerFactory]("sampler")
SAMPLERS.register("tpe", _tpe)
SAMPLERS.register("nsga2", _nsga2)
SAMPLERS.register("random", _random)
SAMPLERS.register("gp", _gp)


def make_sampler(config: SamplerConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler ``config`` names, seeded with ``seed``.

    Example:
        >>> from autoprune.config import SamplerConfig
        >>> type(make_sampler(SamplerConfig(name="random"), seed=0)).__name__
        'RandomSampler'
    """
    return SAMPLERS.get(config.name)(config, seed)
