"""How broadly a targets study explored allocations, and what its first rung found: per target, the number of
candidates scored at rung 0, the best and top-5 mean rung-0 score, and the spread of the candidates' allocations
(coefficient of variation of the ratios across groups: 0 is uniform pruning).

Reads the studies a `search_vs_baselines.py --workdir DIR` run leaves (``DIR/bench_<model>_autoprune`` and
``DIR/bench_<model>_random``, the random search scored at the same rung 0), or any study folders given.

Usage: python benchmarks/allocation_breadth.py /tmp/v4/w1/bench_resnet20_autoprune /tmp/v4/w1/bench_resnet20_random
       [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import optuna

from autoprune.search.record import TrialRecord, heads


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
    url = f"sqlite:///{(folder / 'study.db').resolve()}"
    summaries = optuna.get_all_study_summaries(url)
    if len(summaries) != 1:
        sys.exit(f"{folder}: expected one study in study.db, found {len(summaries)}")
    study = optuna.load_study(study_name=summaries[0].study_name, storage=url)
    recs = [TrialRecord.from_frozen(t) for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path, help="study work folders (each holding study.db)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    missing = [str(f) for f in args.folders if not (f / "study.db").is_file()]
    if missing:
        sys.exit(f"no study.db in {', '.join(missing)}")
    found = {str(f): breadth(f) for f in args.folders}
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
