"""Multi-fidelity search: which trials earn a longer recovery, decided against the study's completed trials.

Every trial first gets the short recovery (``recovery.steps``). Optuna's pruners do not support multi-objective
studies, so the promotion rule is autoprune's: successive halving on non-dominated rank
(:func:`autoprune.pareto.promote`). A trial's short-recovery objective vector is compared with those of the
study's completed trials; if it is in the best ``1/eta`` (and at most ``1/eta`` of the trials have been
promoted) it fine-tunes ``fidelity.promote_steps`` more steps and reports the longer recovery's accuracy. Each
trial records its fidelity (:class:`autoprune.record.Fidelity`), so the rank correlation of the cheap score with
the longer-recovery accuracy can be read back (:func:`rank_correlation`). Works on trial records only: the
backends hand it the study's records (:func:`autoprune.telling.study_promoter`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from autoprune.pareto import Direction, promote
from autoprune.record import Metrics, TrialRecord


def promoter(completed: Callable[[], Iterable[TrialRecord]], objectives: Sequence[str],
             directions: Sequence[Direction | str], eta: float) -> Callable[[Metrics], bool]:
    """A rule for :func:`autoprune.trial.run_trial`: promote short-recovery ``metrics`` against the records of
    the study's completed trials (``completed`` is called when the trial asks, so it sees the latest)."""

    def decide(metrics: Metrics) -> bool:
        done = [r for r in completed() if r.completed]
        promoted = sum(1 for r in done if r.promoted)
        return promote([float(metrics[o]) for o in objectives], [r.short_point(objectives) for r in done],
                       directions, eta, promoted)

    return decide


def rank_correlation(records: Iterable[TrialRecord]) -> dict[str, Any]:
    """Kendall's tau between the short-recovery and the longer-recovery accuracy of the promoted trials."""
    from scipy.stats import kendalltau

    pairs = [(r.short_accuracy, r.metrics.accuracy) for r in records if r.completed and r.promoted]
    if len(pairs) < 3:
        return {"promoted": len(pairs), "kendall_tau": None, "p_value": None}
    res = kendalltau([p[0] for p in pairs], [p[1] for p in pairs])
    return {"promoted": len(pairs), "kendall_tau": round(float(res.statistic), 4), "p_value": round(float(res.pvalue), 4)}
