"""Multi-fidelity search: which trials earn a longer recovery, decided against the study's stored trials.

Every trial first gets the short recovery (``recovery.steps``). Optuna's pruners do not support multi-objective
studies, so the promotion rule is autoprune's: successive halving on non-dominated rank
(:func:`autoprune.pareto.promote`). A trial's short-recovery objective vector is compared with those of the
study's completed trials; if it is in the best ``1/eta`` (and at most ``1/eta`` of the trials have been
promoted) it fine-tunes ``fidelity.promote_steps`` more steps and
reports the longer recovery's accuracy. Each trial records its fidelity (``user_attrs["fidelity"]``), so the
rank correlation of the cheap score with the longer-recovery accuracy can be read back (:func:`rank_correlation`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoprune.pareto import promote


def short_point(metrics: Mapping[str, float], fidelity: Mapping[str, Any] | None, objectives: Sequence[str]) -> list[float]:
    """A trial's objective vector at the short fidelity (the short-recovery accuracy for accuracy)."""
    acc = (fidelity or {}).get("short_accuracy", metrics["accuracy"])
    return [float(acc if o == "accuracy" else metrics[o]) for o in objectives]


def completed_short_points(trials: Iterable[FrozenTrial], objectives: Sequence[str]) -> list[list[float]]:
    return [short_point(t.user_attrs["metrics"], t.user_attrs.get("fidelity"), objectives)
            for t in trials if t.state == TrialState.COMPLETE and "metrics" in t.user_attrs]


def study_promoter(load: Callable[[], optuna.Study], objectives: Sequence[str], directions: Sequence[str],
                   eta: float) -> Callable[[Mapping[str, float]], bool]:
    """A rule for :func:`autoprune.trial.run_trial`: promote short-recovery ``metrics`` against the study's
    completed trials (read from the storage when the trial asks)."""

    def decide(metrics: Mapping[str, float]) -> bool:
        done = load().get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        promoted = sum(1 for t in done if t.user_attrs.get("fidelity", {}).get("promoted"))
        return promote(short_point(metrics, None, objectives), completed_short_points(done, objectives), directions,
                       eta, promoted)

    return decide


def rank_correlation(trials: Iterable[FrozenTrial]) -> dict[str, Any]:
    """Kendall's tau between the short-recovery and the longer-recovery accuracy of the promoted trials."""
    from scipy.stats import kendalltau

    pairs = [(t.user_attrs["fidelity"]["short_accuracy"], t.user_attrs["fidelity"]["accuracy"])
             for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("fidelity", {}).get("promoted")]
    if len(pairs) < 3:
        return {"promoted": len(pairs), "kendall_tau": None, "p_value": None}
    res = kendalltau([p[0] for p in pairs], [p[1] for p in pairs])
    return {"promoted": len(pairs), "kendall_tau": round(float(res.statistic), 4), "p_value": round(float(res.pvalue), 4)}
