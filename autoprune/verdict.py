"""Did the search pay off? The selected trial against the uniform baseline at its cost target, on the same
validation images, with McNemar's exact test (:mod:`autoprune.compare`).

Only studies with cost targets have a uniform baseline at every target (it is enqueued as a warm start); the
comparison loads both trials' saved models and scores them on the whole validation split.
"""

from __future__ import annotations

from typing import Any, Sequence

from autoprune.compare import paired
from autoprune.context import StudyContext
from autoprune.measure import correct
from autoprune.record import TrialRecord
from autoprune.saving import load_pruned


def uniform_baseline(records: Sequence[TrialRecord], target: float | None) -> TrialRecord | None:
    """The completed uniform warm start at ``target`` (the most trained one if it ran twice), if any."""
    if target is None:
        return None
    same = [r for r in records if r.completed and r.warm_start == "uniform" and r.plan and r.plan.target == target]
    return max(same, key=lambda r: (r.fidelity.steps if r.fidelity else 0, r.number or 0), default=None)


def versus_uniform(ctx: StudyContext, pick: TrialRecord, records: Sequence[TrialRecord]) -> dict[str, Any] | None:
    """The pick against the uniform baseline at its target: accuracies on the same validation images, the
    images only one of them gets right, McNemar's p-value, and each one's fine-tune steps. None where the study
    has no such baseline (no targets), or the pick is the baseline itself."""
    base = uniform_baseline(records, pick.plan.target if pick.plan else None)
    if base is None or base.number == pick.number or not (pick.model_file and base.model_file):
        return None
    split = ctx.data.val
    bs = ctx.study.config.data.batch_size
    hits = [correct(load_pruned(r.model_file, ctx.fresh_model()).to(ctx.device), split, bs).tolist()
            for r in (pick, base)]
    result = paired(hits[0], hits[1]).to_dict()
    return {"baseline_trial": base.number, "target": pick.plan.target, "split": "val",
            "steps": {"pick": pick.fidelity.steps if pick.fidelity else None,
                      "baseline": base.fidelity.steps if base.fidelity else None}, **result}


def describe(v: dict[str, Any]) -> str:
    """One line for the terminal."""
    verdict = "a real difference" if v["p_value"] < 0.05 else "not distinguishable from it"
    return (f"vs uniform pruning at {v['target']:g}x (trial {v['baseline_trial']}), on the same {v['images']:,} "
            f"validation images: {v['difference'] * 100:+.2f} points ({v['accuracy_a']:.4f} vs {v['accuracy_b']:.4f}; "
            f"right where it is wrong on {v['only_a']}, wrong where it is right on {v['only_b']}), McNemar exact "
            f"p = {v['p_value']:.3g}: {verdict} at the 5 % level (fine-tune steps {v['steps']['pick']} vs "
            f"{v['steps']['baseline']})")
