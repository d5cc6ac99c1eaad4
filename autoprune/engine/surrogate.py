"""The math of the allocation sampler: a quasi-random screen, cheap proposals, a Gaussian-process surrogate and
its acquisition. Pure functions over numpy arrays, tested directly; the sampler that reads a study and calls them
is :mod:`autoprune.engine.allocation_sampler`.

Inputs of the surrogate are *placed* candidates: the per-group ratios an allocation reaches on its target, plus
the log of the target, so that one model learns from every target's scores. Scores are standardised per target
(a 3x candidate scores lower than a 1.5x one for reasons the allocation does not choose), and each carries its
own noise: the binomial variance of an accuracy measured on ``n`` images.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # scipy.stats and scikit-learn are imported where used: every autoprune process imports this
    from sklearn.gaussian_process import GaussianProcessRegressor


def sobol_point(dim: int, index: int, seed: int) -> np.ndarray:
    """Point ``index`` of the scrambled Sobol sequence in ``[0, 1)^dim`` keyed by ``seed``: the same seed and
    index give the same point in any process, so a resumed or second worker continues the sequence.

    >>> a, b = sobol_point(3, 5, seed=1), sobol_point(3, 5, seed=1)
    >>> bool((a == b).all()), a.shape, bool(((0 <= a) & (a < 1)).all())
    (True, (3,), True)
    """
    from scipy.stats import qmc

    engine = qmc.Sobol(dim, scramble=True, seed=seed)
    if index:
        engine.fast_forward(index)
    return engine.random(1)[0]


def coefficient_of_variation(ratios: np.ndarray) -> float:
    """Standard deviation over mean of one candidate's per-group ratios: 0 for uniform pruning.

    >>> coefficient_of_variation(np.array([0.5, 0.5, 0.5]))
    0.0
    >>> round(coefficient_of_variation(np.array([0.2, 0.4, 0.6])), 3)
    0.408
    """
    mean = float(np.mean(ratios))
    return float(np.std(ratios) / mean) if mean > 0 else 0.0


def standardise(y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, dict]:
    """``y`` standardised within each value of ``groups`` (the targets); returns it and {group: (mean, std)}.

    >>> z, stats = standardise(np.array([1.0, 3.0, 10.0, 10.0]), np.array([1, 1, 2, 2]))
    >>> z.tolist(), stats[2]
    ([-1.0, 1.0, 0.0, 0.0], (10.0, 1.0))
    """
    z, stats = np.zeros_like(y, dtype=float), {}
    for g in np.unique(groups):
        m = groups == g
        mean, std = float(np.mean(y[m])), float(np.std(y[m]))
        std = std if std > 1e-9 else 1.0
        stats[g.item()] = (mean, std)
        z[m] = (y[m] - mean) / std
    return z, stats


def binomial_variance(score: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The variance of an accuracy ``score`` measured on ``images`` images (clipped away from 0 and 1).

    >>> binomial_variance(np.array([0.5]), np.array([1000])).round(6).tolist()
    [0.00025]
    """
    p = np.clip(score, 0.01, 0.99)
    return p * (1 - p) / np.maximum(images, 1)


@dataclass
class Surrogate:
    """A fitted Gaussian process over placed candidates; :meth:`predict` gives standardised means and deviations."""

    gp: GaussianProcessRegressor

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.gp.predict(np.atleast_2d(x), return_std=True)
        return mean, np.maximum(std, 1e-9)

    def with_pending(self, pending: np.ndarray) -> Surrogate:
        """The same kernel refitted with ``pending`` points added at their predicted mean (the "kriging believer"):
        running candidates lower the uncertainty around them, so parallel asks spread out."""
        if not len(pending):
            return self
        mean, _ = self.predict(pending)
        x = np.vstack([self.gp.X_train_, pending])
        y = np.concatenate([self.gp.y_train_, mean])
        alpha = np.concatenate([np.broadcast_to(self.gp.alpha, len(self.gp.y_train_)), np.full(len(pending), 1e-6)])
        from sklearn.gaussian_process import GaussianProcessRegressor

        gp = GaussianProcessRegressor(self.gp.kernel_, alpha=alpha, optimizer=None)
        return Surrogate(gp.fit(x, y))


def fit_surrogate(x: np.ndarray, y: np.ndarray, noise: np.ndarray, seed: int = 0, restarts: int = 2) -> Surrogate:
    """A Gaussian process on ``x`` (n, d) -> standardised scores ``y`` with per-point noise variances ``noise``:
    a constant times a Matern-5/2 kernel with one length scale per input, plus a white-noise term for what the
    binomial noise does not explain; hyper-parameters by maximum likelihood (``restarts`` random restarts)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    d = x.shape[1]
    kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(np.ones(d), (1e-2, 1e2), nu=2.5)
              + WhiteKernel(1e-2, (1e-6, 1.0)))
    gp = GaussianProcessRegressor(kernel, alpha=np.maximum(noise, 1e-6), n_restarts_optimizer=restarts,
                                  random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(x, y)
    return Surrogate(gp)


def features(ratios: np.ndarray, target: float) -> np.ndarray:
    """The surrogate's input for a placed candidate: its ratios and the log of its target.

    >>> features(np.array([0.5, 0.25]), 1.0).tolist()
    [0.5, 0.25, 0.0]
    """
    return np.append(ratios, math.log(target))


def fit_scores(ratios: np.ndarray, targets: np.ndarray, scores: np.ndarray, images: np.ndarray,
               seed: int = 0) -> tuple[Surrogate, np.ndarray, dict]:
    """The surrogate of first-rung ``scores`` (accuracies on ``images`` images) of candidates placed at ``ratios``
    (n, groups) on ``targets``: inputs :func:`features`, scores standardised per target, each with its binomial
    noise in those units. Returns (the surrogate, its inputs, {target: (mean, std)} of the scores)."""
    x = np.array([features(r, t) for r, t in zip(ratios, targets)])
    y, stats = standardise(scores, targets)
    noise = binomial_variance(scores, images) / np.array([stats[t.item()][1] ** 2 for t in targets])
    return fit_surrogate(x, y, noise, seed=seed), x, stats


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, xi: float = 0.01) -> np.ndarray:
    """Expected improvement over ``best`` of normal predictions (mean, std), maximising.

    >>> ei = expected_improvement(np.array([0.0, 1.0]), np.array([1.0, 1.0]), best=0.5)
    >>> bool(ei[1] > ei[0] > 0)
    True
    """
    from scipy.stats import norm

    z = (mean - best - xi) / std
    return (mean - best - xi) * norm.cdf(z) + std * norm.pdf(z)


def mutations(leaders: np.ndarray, n: int, rng: np.random.Generator, sigma: float = 0.5, rate: float = 0.5,
              floor: float = 0.02) -> np.ndarray:
    """``n`` copies of random ``leaders`` (rows of allocation weights in [0, 1]) with a share ``rate`` of their
    weights multiplied by ``exp(N(0, sigma))`` (moves in log-weight space, as LeGR's evolution; weights below
    ``floor`` move from ``floor``), clipped to [0, 1].

    >>> m = mutations(np.array([[0.5, 0.5]]), 4, np.random.default_rng(0))
    >>> m.shape, bool(((m >= 0) & (m <= 1)).all())
    ((4, 2), True)
    """
    parents = leaders[rng.integers(len(leaders), size=n)]
    moved = rng.random(parents.shape) < rate
    moved[np.arange(n), rng.integers(parents.shape[1], size=n)] = True  # every child moves somewhere
    factor = np.exp(rng.normal(0.0, sigma, parents.shape))
    child = np.where(moved, np.maximum(parents, floor) * factor, parents)
    return np.clip(child, 0.0, 1.0)


def crossovers(leaders: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform crossovers of two random ``leaders`` (each weight from one parent or the other).

    >>> c = crossovers(np.array([[0.0, 0.0], [1.0, 1.0]]), 8, np.random.default_rng(0))
    >>> sorted(set(c.ravel().tolist()))
    [0.0, 1.0]
    """
    a = leaders[rng.integers(len(leaders), size=n)]
    b = leaders[rng.integers(len(leaders), size=n)]
    return np.where(rng.random(a.shape) < 0.5, a, b)


def min_distance(candidate: np.ndarray, others: np.ndarray) -> float:
    """The smallest Euclidean distance from ``candidate`` to a row of ``others`` (inf when there is none).

    >>> min_distance(np.array([0.0, 0.0]), np.array([[3.0, 4.0], [6.0, 8.0]]))
    5.0
    """
    if not len(others):
        return math.inf
    return float(np.min(np.linalg.norm(others - candidate, axis=1)))
