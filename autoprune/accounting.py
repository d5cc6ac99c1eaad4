"""Where a study's time went: per-phase totals over its trials, the fine-tune budget, and the fidelity record."""

from __future__ import annotations

from typing import Any, Iterable

from optuna.trial import FrozenTrial, TrialState

from autoprune.fidelity import rank_correlation

PHASES = ("prune", "bn_calibration", "finetune", "evaluate", "measure")


def cost_summary(trials: Iterable[FrozenTrial]) -> dict[str, Any]:
    """Totals over the finished trials that recorded timings.

    Returns ``{"trials", "time_s": {phase: s, "total": s}, "share": {phase: fraction of total},
    "overhead_share": everything but the fine-tune as a fraction of the total, "finetune_images",
    "finetune_steps", "promotion": {"promoted", "kendall_tau", "p_value"}}``.
    """
    trials = [t for t in trials if t.state.is_finished()]
    timed = [t for t in trials if t.user_attrs.get("timings")]
    time_s = {p: 0.0 for p in PHASES}
    total = 0.0
    images = steps = 0
    for t in timed:
        tm = t.user_attrs["timings"]
        for p in PHASES:
            time_s[p] += float(tm.get(p, 0.0))
        total += float(tm.get("total", sum(float(tm.get(p, 0.0)) for p in PHASES)))
        plan = t.user_attrs.get("plan", {})
        images += int(plan.get("finetune_images", 0))
        steps += int(plan.get("finetune_steps", plan.get("recovery", {}).get("steps", 0)))
    time_s["total"] = total
    share = {p: (time_s[p] / total if total else 0.0) for p in PHASES}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return {"trials": len(timed), "time_s": {k: round(v, 3) for k, v in time_s.items()},
            "share": {k: round(v, 4) for k, v in share.items()},
            "overhead_share": round(1.0 - share["finetune"], 4) if total else 0.0,
            "finetune_images": images, "finetune_steps": steps, "promotion": rank_correlation(complete)}
