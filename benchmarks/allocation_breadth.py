"""How broadly a targets study explored allocations, and what its first rung found: per target, the number of
candidates scored at rung 0, the best and top-5 mean rung-0 score, and the spread of the candidates' allocations
(coefficient of variation of the ratios across groups: 0 is uniform pruning).

Reads the studies a `search_vs_baselines.py --workdir DIR` run leaves (``DIR/bench_<model>_autoprune`` and
``DIR/bench_<model>_random``, the random search scored at the same rung 0), or any study folders given.

Usage: python benchmarks/allocation_breadth.py /tmp/v4/w1/bench_resnet20_autoprune /tmp/v4/w1/bench_resnet20_random
       [--json] [--diagnostics --screen 12] [--promotions]

``--diagnostics`` adds, per study and target (issue 24's benchmark v5): the median spread of each phase (warm
starts, the screen, the surrogate's candidates), Kendall's tau and the share of reversed pairs between the rung-0
and rung-20 scores of the candidates that reached both, and the surrogate's held-out rank correlation (each model
candidate predicted by the Gaussian process fitted on those that completed before it).
``--promotions`` shows, per study and target, which candidates the fine-tune places went to, ranked by the
target's final rung-0 scores, and where the pick stood there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import optuna

from autoprune.engine.record import TrialRecord, heads


def spread(ratios: dict[str, float]) -> float:
    """Coefficient of variation of the per-group ratios (population sd / mean; 0 for uniform pruning).

    >>> spread({"a": 0.5, "b": 0.5}), round(spread({"a": 0.2, "b": 0.6}), 2)
    (0.0, 0.5)
    """
    v = list(ratios.values())
    m = statistics.mean(v)
    return statistics.pstdev(v) / m if m > 0 else 0.0


def breadth(folder: Path) -> dict[str, dict]:
    """Per target: rung-0 candidates, their best and top-5 mean score, their median spread and the top 5's."""
    _, recs = _records(folder)
    by: dict[str, list[tuple[float, float]]] = {}
    for r in heads(recs):
        if r.plan is None or r.fidelity is None or r.plan.target is None or 0 not in r.fidelity.scores:
            continue
        by.setdefault(f"{r.plan.target:g}", []).append((r.fidelity.scores[0], spread(r.plan.ratios)))
    out = {}
    for target, v in sorted(by.items(), key=lambda kv: float(kv[0])):
        v.sort(reverse=True)
        out[target] = {"candidates": len(v), "best_rung0": v[0][0],
                       "top5_mean_rung0": round(statistics.mean(s for s, _ in v[:5]), 4),
                       "median_spread": round(statistics.median(c for _, c in v), 3),
                       "top5_spread": round(statistics.mean(c for _, c in v[:5]), 3)}
    return out


def _records(folder: Path) -> tuple[optuna.Study, list[TrialRecord]]:
    url = f"sqlite:///{(folder / 'study.db').resolve()}"
    summaries = optuna.get_all_study_summaries(url)
    if len(summaries) != 1:
        print(f"allocation_breadth.py: error: {folder}: expected one study in study.db, found {len(summaries)}",
              file=sys.stderr)
        raise SystemExit(2)
    study = optuna.load_study(study_name=summaries[0].study_name, storage=url)
    return study, [TrialRecord.from_frozen(t) for t in study.get_trials(deepcopy=False)
                   if t.state == optuna.trial.TrialState.COMPLETE]


def phases(recs: list[TrialRecord], screen: int) -> dict[str, dict[str, float]]:
    """Per target, the median spread of the candidates of each phase: ``warm`` (the warm starts), ``screen`` (the
    first ``screen`` other candidates of the target, by trial number), ``model`` (the rest)."""
    out: dict[str, dict[str, list[float]]] = {}
    new = sorted((r for r in recs if r.continues is None and r.plan and r.plan.target), key=lambda r: r.number)
    seen: dict[str, int] = {}
    for r in new:
        t = f"{r.plan.target:g}"
        if r.warm_start is not None:
            phase = "warm"
        else:
            phase = "screen" if seen.get(t, 0) < screen else "model"
            seen[t] = seen.get(t, 0) + 1
        out.setdefault(t, {}).setdefault(phase, []).append(spread(r.plan.ratios))
    return {t: {p: round(statistics.median(v), 3) for p, v in per.items()} for t, per in out.items()}


def reversals(recs: list[TrialRecord], first: int = 0, second: int = 20) -> dict[str, dict]:
    """Per target, over the candidates scored at both rungs: Kendall's tau between their ``first``- and
    ``second``-rung scores, and the share of pairs whose order the longer recovery reversed."""
    from scipy.stats import kendalltau

    out = {}
    pairs: dict[str, list[tuple[float, float]]] = {}
    for r in heads(recs):
        if r.fidelity and first in r.fidelity.scores and second in r.fidelity.scores and r.plan and r.plan.target:
            pairs.setdefault(f"{r.plan.target:g}", []).append((r.fidelity.scores[first], r.fidelity.scores[second]))
    for t, v in sorted(pairs.items(), key=lambda kv: float(kv[0])):
        n = len(v)
        flipped = sum((a[0] - b[0]) * (a[1] - b[1]) < 0 for i, a in enumerate(v) for b in v[i + 1:])
        tau = kendalltau([a for a, _ in v], [b for _, b in v]).statistic if n >= 3 else None
        out[t] = {"candidates": n, "kendall_tau": None if tau is None else round(float(tau), 3),
                  "reversed_pairs": round(flipped / max(1, n * (n - 1) // 2), 3)}
    return out


def promotions(recs: list[TrialRecord]) -> dict[str, dict]:
    """Per target, how the fine-tune places were spent: the candidates scored at rung 0, those taken to the top rung
    (each with its trial number, its rung-0 rank among the target's candidates at the end of the search, 1 the best
    raw score, its rung-0 and top-rung scores, and whether it is a warm start), the pick (the best at the top rung)
    and its rung-0 rank, and how many of the promoted are in the final rung-0 top ``len(promoted)``. A pick ranked
    below that shows what a shortlist fixed at the end of rung 0 would have missed."""
    from scipy.stats import kendalltau

    out = {}
    cands = [r for r in heads(recs) if r.fidelity and 0 in r.fidelity.scores and r.plan and r.plan.target]
    top = max((s for r in cands for s in r.fidelity.scores), default=0)
    for t in sorted({r.plan.target for r in cands}):
        at = sorted((r for r in cands if r.plan.target == t), key=lambda r: (-r.fidelity.scores[0], r.number))
        rank = {r.number: i + 1 for i, r in enumerate(at)}
        up = sorted((r for r in at if top and top in r.fidelity.scores), key=_first)
        pick = max(up, key=lambda r: r.fidelity.scores[top], default=None)
        tau = (kendalltau([r.fidelity.scores[0] for r in up], [r.fidelity.scores[top] for r in up]).statistic
               if len(up) >= 3 else None)
        out[f"{t:g}"] = {"candidates": len(at), "top_rung": top, "promoted": [
            {"number": _first(r), "rung0_rank": rank[r.number], "rung0": r.fidelity.scores[0],
             "top": r.fidelity.scores[top], "warm_start": r.warm_start} for r in up],
            "pick_rung0_rank": rank[pick.number] if pick else None,
            "in_final_top": sum(rank[r.number] <= len(up) for r in up),
            "kendall_tau": None if tau is None else round(float(tau), 3)}
    return out


def _first(head: TrialRecord) -> int:
    """The trial number of a lineage's first trial (the candidate), from its head."""
    return head.number if head.continues is None else head.continues


def surrogate_holdout(study: optuna.Study, start: int = 12) -> dict[str, float | None]:
    """The allocation sampler's surrogate judged on candidates it had not seen: each model candidate after the
    first ``start`` of the study is predicted by the Gaussian process fitted on the candidates that completed
    before it (by trial number); per target, Kendall's tau between those predictions and the scores."""
    import numpy as np
    from scipy.stats import kendalltau

    from autoprune.engine.allocation_sampler import observations
    from autoprune.engine.surrogate import features, fit_scores

    trials = study.get_trials(deepcopy=False)
    groups = sorted(k[len("alloc."):] for k in trials[0].params if k.startswith("alloc."))
    obs = sorted(observations(trials, groups), key=lambda o: o.number)
    pred: dict[str, list[tuple[float, float]]] = {}
    for i in range(start, len(obs)):
        seen, o = obs[:i], obs[i]
        if sum(s.target == o.target for s in seen) < 3:
            continue
        model, _, _ = fit_scores(np.array([s.ratios for s in seen]), np.array([s.target for s in seen]),
                                 np.array([s.score for s in seen]), np.array([s.images for s in seen]))
        mean, _ = model.predict(features(o.ratios, o.target)[None])
        pred.setdefault(f"{o.target:g}", []).append((float(mean[0]), o.score))
    return {t: (round(float(kendalltau([a for a, _ in v], [b for _, b in v]).statistic), 3) if len(v) >= 3 else None)
            for t, v in sorted(pred.items(), key=lambda kv: float(kv[0]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="study work folders (each holding study.db)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--diagnostics", action="store_true", help="also the spread per phase, rank reversals between "
                    "rungs 0 and 20 and the surrogate's held-out rank correlation (JSON)")
    ap.add_argument("--screen", type=int, default=12, help="the study's screen per target (n_startup_trials)")
    ap.add_argument("--promotions", action="store_true", help="only how each target's fine-tune places were spent: "
                    "the promoted candidates' final rung-0 ranks and the pick's (JSON)")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    missing = [str(f) for f in args.folders if not (f / "study.db").is_file()]
    if missing:
        ap.error(f"no study.db in {', '.join(missing)}")
    if args.promotions:
        print(json.dumps({str(f): promotions(_records(f)[1]) for f in args.folders}, indent=2))
        return
    found = {str(f): breadth(f) for f in args.folders}
    if args.diagnostics:
        more = {}
        for f in args.folders:
            study, recs = _records(f)
            more[str(f)] = {"spread_by_phase": phases(recs, args.screen), "rung0_vs_rung20": reversals(recs),
                            "surrogate_holdout_tau": surrogate_holdout(study, args.screen)}
        found = {k: {"targets": v, **more[k]} for k, v in found.items()}
        print(json.dumps(found, indent=2))
        return
    if args.json:
        print(json.dumps(found, indent=2))
        return
    print(f"{'study':44s} {'target':>6s} {'n':>4s} {'best':>6s} {'top5':>6s} {'spread':>7s} {'top5 spread':>11s}")
    for name, per in found.items():
        for t, r in per.items():
            print(f"{name[-44:]:44s} {t + 'x':>6s} {r['candidates']:4d} {r['best_rung0']:6.3f} "
                  f"{r['top5_mean_rung0']:6.3f} {r['median_spread']:7.2f} {r['top5_spread']:11.2f}")


if __name__ == "__main__":
    main()
