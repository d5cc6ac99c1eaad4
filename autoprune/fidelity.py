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


def rung_ladder(steps: int, promote_steps: int, bn_rung: bool) -> list[int]:
    """The rungs a trial may climb, as cumulative fine-tune steps: BN re-calibration only (0) if ``bn_rung``,
    the short recovery, and the longer one if ``promote_steps``.

    >>> rung_ladder(20, 200, True), rung_ladder(20, 0, False), rung_ladder(0, 5, True)
    ([0, 20, 220], [20], [0, 5])
    """
    ladder = ([0] if bn_rung else []) + [steps] + ([steps + promote_steps] if promote_steps else [])
    return sorted(set(ladder))


def promoter(completed: Callable[[], Iterable[TrialRecord]], objectives: Sequence[str],
             directions: Sequence[Direction | str], eta: float) -> Callable[[Metrics, int, float | None], bool]:
    """A rule for :func:`autoprune.trial.run_trial`: asynchronous successive halving within each target and
    rung. A candidate scored at the rung of ``steps`` fine-tune steps goes up when its objective vector (accuracy
    at that rung) is in the best ``1/eta`` by non-dominated rank among the completed trials of its target that
    reached that rung, and fewer than ``1/eta`` of those went up. ``completed`` is called when a trial asks."""

    def decide(metrics: Metrics, steps: int, target: float | None) -> bool:
        peers = [r for r in completed() if r.completed and r.fidelity and r.fidelity.score(steps) is not None
                 and (r.plan.target if r.plan else None) == target]
        points = [[r.fidelity.scores[steps] if o == "accuracy" else float(r.metrics[o]) for o in objectives]
                  for r in peers]
        went_up = sum(1 for r in peers if r.fidelity.steps > steps)
        return promote([float(metrics[o]) for o in objectives], points, directions, eta, went_up)

    return decide


def rank_correlation(records: Iterable[TrialRecord]) -> dict[str, Any]:
    """Kendall's tau between the first-rung and the highest-rung accuracy of the promoted trials."""
    from scipy.stats import kendalltau

    pairs = [(r.short_accuracy, r.metrics.accuracy) for r in records if r.completed and r.promoted]
    if len(pairs) < 3:
        return {"promoted": len(pairs), "kendall_tau": None, "p_value": None}
    res = kendalltau([p[0] for p in pairs], [p[1] for p in pairs])
    return {"promoted": len(pairs), "kendall_tau": round(float(res.statistic), 4), "p_value": round(float(res.pvalue), 4)}
