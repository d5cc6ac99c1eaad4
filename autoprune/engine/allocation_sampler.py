"""autoprune's own sampler of exact-cost allocations: screen broadly per target, then exploit a surrogate.

Stateless (Optuna's public sampler API): every ask reads the study's trials from storage, so workers, resume and
the Ray backend see one sampler. For a trial at target ``t``:

1. *Screen*: while ``t`` has fewer than ``screen`` model candidates (below), the allocation is the next point of
   a scrambled Sobol sequence keyed by the study's seed and ``t``'s index: the breadth of random search, and a
   resumed study continues the sequence instead of repeating it.
2. *Exploit*: otherwise many cheap proposals (mutations of ``t``'s leaders in log-weight space, crossovers of
   them, the leaders of the other targets, fresh uniform points) are each placed exactly on ``t``, and the one
   with the largest expected improvement under a Gaussian process fitted on every target's first-rung scores
   (:mod:`autoprune.engine.surrogate`) is asked; running candidates count at their predicted mean.

*Model candidates* are the trials the sampler proposed itself: the warm starts (uniform, global, anchors) and the
continuations of promoted candidates stay candidates at every target, but never enter the screen count, the
leaders or the surrogate, so a strong baseline at the corner of the box cannot pull the proposals onto itself
(benchmark v4: it did, under multivariate TPE). Parameters other than the allocation (the scorer, depth choices)
come from an independent TPE sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from autoprune.engine.record import TrialRecord
from autoprune.engine.space import trial_target
from autoprune.engine.surrogate import (
    Surrogate,
    crossovers,
    expected_improvement,
    features,
    fit_scores,
    min_distance,
    mutations,
    sobol_point,
)

LEADERS = 5  # a target's best candidates (by the surrogate's mean) that proposals start from
PROPOSALS = {"mutation": 160, "crossover": 48, "fresh": 48}  # per ask, plus each other target's leaders
SAME = 1e-3  # placed ratios closer than this to a candidate already at the target are that candidate again


@dataclass(frozen=True)
class Placing:
    """What a sampler of exact-cost allocations knows of the study beyond its trials.

    ``targets``: the cost targets, each once; ``weights``: the distribution of each ``alloc.<group>`` parameter;
    ``place``: (weights by group, target) -> the ratios by group that allocation reaches on that target; ``seed``:
    the study's seed (the screen's quasi-random sequence is keyed by it, so a resumed study or another worker
    continues it); ``turns``: the targets in the order trials take them (the study's ``targets.turns``; default
    ``targets``).
    """

    targets: tuple[float, ...]
    weights: Mapping[str, FloatDistribution]
    place: Callable[[Mapping[str, float], float], Mapping[str, float]]
    seed: int
    turns: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.turns:
            object.__setattr__(self, "turns", tuple(self.targets))


@dataclass(frozen=True)
class Observed:
    """A model candidate's first-rung result: its weights, the ratios they reached on its target, its score."""

    number: int
    weights: np.ndarray
    ratios: np.ndarray
    target: float
    score: float
    images: int


class AllocationSampler(optuna.samplers.BaseSampler):
    """Sobol screen, then Gaussian-process proposals, per cost target (see the module's docstring)."""

    def __init__(self, placing: Placing, screen: int = 10, seed: int = 0,
                 independent: optuna.samplers.BaseSampler | None = None) -> None:
        self.placing = placing
        self.screen = screen
        self.groups = [name[len("alloc."):] for name in placing.weights]
        self._rng = np.random.default_rng(seed)
        self._seed = seed
        self._cache: tuple[tuple[int, ...], tuple[Surrogate, np.ndarray, dict]] | None = None
        self._independent = independent or optuna.samplers.TPESampler(seed=seed, n_startup_trials=screen)

    # ---------------------------------------------------------------------------------------- the sampler API
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self.placing.weights)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        target = trial_target(trial.number, trial.user_attrs, self.placing.turns)
        trials = study.get_trials(deepcopy=False)
        turns = self.placing.turns  # the rule, not the attribute: a trial just asked may not have stored it yet
        mine = [t for t in trials if t.number < trial.number and is_model_trial(t)
                and trial_target(t.number, t.user_attrs, turns) == target]
        if len(mine) < self.screen:
            return self._named(self.screen_point(target, len(mine)))
        observed = observations(trials, self.groups)
        if sum(o.target == target for o in observed) < 2:
            return self._named(self.screen_point(target, len(mine)))
        pending = [(_weights(t, self.groups), trial_target(t.number, t.user_attrs, turns)) for t in trials
                   if t.state == TrialState.RUNNING and t.number != trial.number and is_model_trial(t)
                   and all(f"alloc.{g}" in t.params for g in self.groups)]
        return self._named(self.propose(observed, target, pending))

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._independent.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._independent.after_trial(study, trial, state, values)

    # ---------------------------------------------------------------------------------------- its two phases
    def screen_point(self, target: float, index: int) -> np.ndarray:
        """Weights of point ``index`` of target ``target``'s scrambled Sobol sequence (keyed by the study's seed)."""
        key = self.placing.seed * 1000 + self.placing.targets.index(target)
        low, high = self._bounds()
        return low + (high - low) * sobol_point(len(self.groups), index, key)

    def propose(self, observed: list[Observed], target: float,
                pending: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
        """The proposal at ``target`` with the largest expected improvement (see the module's docstring);
        ``pending``: (weights, target) of the running candidates."""
        model, x, _ = self._fit(observed)
        here = [i for i, o in enumerate(observed) if o.target == target]
        mean_here, _ = model.predict(x[here])
        model = model.with_pending(np.array([features(self._placed(w, t), t) for w, t in pending]).reshape(-1, x.shape[1]))
        weights = self._candidates(observed, here, mean_here, target)
        placed = np.array([self._placed(w, target) for w in weights])
        taken = np.vstack([x[here, :-1]] + [self._placed(w, t)[None] for w, t in pending if t == target])
        fresh = np.array([min_distance(r, taken) > SAME for r in placed])  # never the same candidate twice
        if not fresh.any():
            return self.screen_point(target, len(observed) + len(pending))
        weights, placed = weights[fresh], placed[fresh]
        mean, std = model.predict(np.array([features(r, target) for r in placed]))
        ei = expected_improvement(mean, std, best=float(np.max(mean_here)))
        return weights[int(np.argmax(ei))]

    def denoised(self, study: optuna.Study) -> dict[int, float]:
        """Trial number -> the surrogate's mean first-rung score of each completed model candidate, in the score's
        own units: a rank for promotion less swayed by the noise of a score on 1,000 images than the score itself
        ({} before the surrogate has four candidates)."""
        observed = observations(study.get_trials(deepcopy=False), self.groups)
        if len(observed) < 4:
            return {}
        model, x, stats = self._fit(observed)
        mean, _ = model.predict(x)
        return {o.number: stats[o.target][0] + stats[o.target][1] * float(m) for o, m in zip(observed, mean)}

    # ---------------------------------------------------------------------------------------- helpers
    def _fit(self, observed: list[Observed]) -> tuple[Surrogate, np.ndarray, dict]:
        """(the surrogate, its inputs, per-target (mean, std) of the scores), fitted once per set of candidates."""
        key = tuple(o.number for o in observed)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        fitted = fit_scores(np.array([o.ratios for o in observed]), np.array([o.target for o in observed]),
                            np.array([o.score for o in observed]), np.array([o.images for o in observed]), self._seed)
        self._cache = (key, fitted)
        return fitted

    def _candidates(self, observed: list[Observed], here: list[int], mean_here: np.ndarray,
                    target: float) -> np.ndarray:
        leaders = np.array([observed[here[i]].weights for i in np.argsort(-mean_here)[:LEADERS]])
        others = [o.weights for t in self.placing.targets if t != target
                  for o in sorted((o for o in observed if o.target == t), key=lambda o: -o.score)[:2]]
        low, high = self._bounds()
        fresh = low + (high - low) * self._rng.random((PROPOSALS["fresh"], len(self.groups)))
        parts = [mutations(leaders, PROPOSALS["mutation"], self._rng), crossovers(leaders, PROPOSALS["crossover"], self._rng),
                 fresh] + ([np.array(others)] if others else [])
        return np.clip(np.vstack(parts), low, high)

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        dists = list(self.placing.weights.values())
        return np.array([d.low for d in dists]), np.array([d.high for d in dists])

    def _placed(self, weights: np.ndarray, target: float) -> np.ndarray:
        ratios = self.placing.place(dict(zip(self.groups, map(float, weights))), target)
        return np.array([ratios[g] for g in self.groups])

    def _named(self, weights: np.ndarray) -> dict[str, float]:
        return {f"alloc.{g}": float(w) for g, w in zip(self.groups, weights)}


def is_model_trial(trial: FrozenTrial) -> bool:
    """Whether the sampler proposed ``trial``: not a warm start, a continuation, or a retry of either."""
    rec = TrialRecord.from_user_attrs(trial.user_attrs)
    return rec.warm_start is None and rec.continues is None and trial.state != TrialState.FAIL


def observations(trials: Sequence[FrozenTrial], groups: Sequence[str]) -> list[Observed]:
    """The completed model candidates' first-rung results (what the surrogate learns from), their weights and
    ratios in the order of ``groups``, sorted by target and weights."""
    out = []
    for t in trials:
        if t.state != TrialState.COMPLETE or not is_model_trial(t):
            continue
        rec = TrialRecord.from_frozen(t)
        if not rec.completed or rec.plan is None or rec.fidelity is None or rec.target is None:
            continue
        fid = rec.fidelity
        out.append(Observed(t.number, _weights(t, groups), np.array([rec.plan.ratios[g] for g in groups]), rec.target,
                            fid.short_accuracy, int(fid.images.get(fid.short_steps) or 1000)))
    return sorted(out, key=lambda o: (o.target, tuple(o.weights)))  # one order, however the trials were numbered


def _weights(trial: FrozenTrial, groups: Sequence[str]) -> np.ndarray:
    return np.array([float(trial.params[f"alloc.{g}"]) for g in groups])
