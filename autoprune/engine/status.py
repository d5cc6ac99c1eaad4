"""Where a study's time went: per-phase totals over its trials, the fine-tune budget, and the fidelity record;
how many trials measured their latency on a contended machine."""

from __future__ import annotations

from typing import Any, Iterable

from autoprune.engine.fidelity import rank_correlation
from autoprune.engine.record import TrialRecord, heads

PHASES = ("prune", "bn_calibration", "finetune", "evaluate", "measure")


def cost_summary(records: Iterable[TrialRecord]) -> dict[str, Any]:
    """Totals over the finished trials that recorded timings.

    Returns ``{"trials", "time_s": {phase: s, "total": s}, "share": {phase: fraction of total},
    "overhead_share": everything but the fine-tune as a fraction of the total, "finetune_images",
    "finetune_steps", "promotion": {"promoted", "kendall_tau", "p_value"}}``.
    """
    timed = [r for r in records if r.timings]
    time_s = {p: sum(float(r.timings.get(p, 0.0)) for r in timed) for p in PHASES}
    total = sum(float(r.timings.get("total", sum(float(r.timings.get(p, 0.0)) for p in PHASES))) for r in timed)
    lineages = [r for r in heads(timed) if r.plan]  # a continuation's plan holds its lineage's steps so far
    images = sum(r.plan.finetune_images for r in lineages)
    steps = sum(r.plan.finetune_steps for r in lineages)
    time_s["total"] = total
    share = {p: (time_s[p] / total if total else 0.0) for p in PHASES}
    return {"trials": len(timed), "time_s": {k: round(v, 3) for k, v in time_s.items()},
            "share": {k: round(v, 4) for k, v in share.items()},
            "overhead_share": round(1.0 - share["finetune"], 4) if total else 0.0,
            "finetune_images": images, "finetune_steps": steps, "promotion": rank_correlation(timed)}


def latency_unreliable(records: Iterable[TrialRecord]) -> int:
    """How many of ``records`` measured their latency on a contended machine (``metrics.latency_reliable`` False:
    the paired ratios stayed too dispersed even with more pairs). Records without metrics, or older than paired
    latency (``latency_reliable`` None), do not count."""
    return sum(1 for r in records if r.metrics is not None and r.metrics.latency_reliable is False)
