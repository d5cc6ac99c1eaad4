"""Did the search pay off? The selected trial against the uniform baseline at its cost target, on the same
validation images, with McNemar's exact test (:mod:`autoprune.metrics.mcnemar`).

Only studies with cost targets have a uniform baseline at every target (it is enqueued as a warm start). Each
trial keeps which validation images it got right at every rung, so the two are compared at the highest rung both
reached, on the images that rung was scored on, without loading a model.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from autoprune.engine.context import StudyContext
from autoprune.engine.record import TrialRecord
from autoprune.metrics.costs import correct
from autoprune.metrics.mcnemar import decode_hits, paired
from autoprune.pruning.saving import load_pruned


def uniform_baseline(records: Sequence[TrialRecord], target: float | None) -> TrialRecord | None:
    """The completed uniform warm start at ``target`` (the most trained one if it ran twice), if any."""
    if target is None:
        return None
    same = [r for r in records if r.completed and r.warm_start == "uniform" and r.target == target]
    return max(same, key=lambda r: (r.fidelity.steps if r.fidelity else 0, r.number or 0), default=None)


def _at_common_rung(pick: TrialRecord, base: TrialRecord,
                    rung: int | None = None) -> tuple[int, list[bool], list[bool]] | None:
    """(rung, pick's and baseline's per-image results) at ``rung``, or at the highest rung both reached and
    recorded on the same images, if any."""
    shared = [s for s in pick.fidelity.hits if s in base.fidelity.hits
              and pick.fidelity.images.get(s) == base.fidelity.images.get(s)]
    if rung is not None:
        shared = [s for s in shared if s == rung]
    if not shared:
        return None
    rung = max(shared)
    n = int(pick.fidelity.images[rung])
    return rung, decode_hits(pick.fidelity.hits[rung], n), decode_hits(base.fidelity.hits[rung], n)


def compare_at(a: TrialRecord, b: TrialRecord, rung: int | None = None) -> dict[str, Any] | None:
    """``a`` against ``b`` on the same images at ``rung`` (None: the highest rung both reached), from their
    recorded per-image results; None where they share no such rung."""
    common = _at_common_rung(a, b, rung)
    if common is None:
        return None
    at, hits_a, hits_b = common
    return {"vs_trial": b.number, "rung": at, **paired(hits_a, hits_b).to_dict()}


def versus_uniform(load_ctx: Callable[[], StudyContext], pick: TrialRecord,
                   records: Sequence[TrialRecord]) -> dict[str, Any] | None:
    """The pick against the uniform baseline at its target, at the highest rung both reached, on the same
    validation images: accuracies, the images only one of them gets right, McNemar's p-value. Studies whose
    trials recorded no per-image results (older ones) compare the two saved models on the whole validation
    split instead (each at its own fine-tune budget, said in ``steps``), with the context ``load_ctx`` prepares
    (called only then). None where the study has no such baseline (no targets), or the pick is the baseline."""
    base = uniform_baseline(records, pick.target)
    if base is None or base.number == pick.number:
        return None
    common = _at_common_rung(pick, base)
    if common is not None:
        rung, hits_pick, hits_base = common
        steps = {"pick": rung, "baseline": rung}
    elif pick.model_file and base.model_file:
        ctx = load_ctx()
        rung, bs = None, ctx.study.config.data.batch_size
        hits_pick, hits_base = (correct(load_pruned(r.model_file, ctx.fresh_model()).to(ctx.device), ctx.data.val,
                                        bs).tolist() for r in (pick, base))
        steps = {"pick": pick.fidelity.steps, "baseline": base.fidelity.steps}
    else:
        return None
    return {"baseline_trial": base.number, "target": pick.target, "split": "val", "rung": rung,
            "steps": steps, **paired(hits_pick, hits_base).to_dict()}


def describe(v: dict[str, Any]) -> str:
    """One line for the terminal."""
    verdict = "a real difference" if v["p_value"] < 0.05 else "not distinguishable from it"
    return (f"vs uniform pruning at {v['target']:g}x (trial {v['baseline_trial']}), on the same {v['images']:,} "
            f"validation images: {v['difference'] * 100:+.2f} points ({v['accuracy_a']:.4f} vs {v['accuracy_b']:.4f}; "
            f"right where it is wrong on {v['only_a']}, wrong where it is right on {v['only_b']}), McNemar exact "
            f"p = {v['p_value']:.3g}: {verdict} at the 5 % level ("
            + (f"both at the rung of {v['rung']} fine-tune steps)" if v["rung"] is not None else
               f"saved models, fine-tune steps {v['steps']['pick']} vs {v['steps']['baseline']})"))
