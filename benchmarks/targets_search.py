"""A search at exact costs, read per target and rung: the best searched candidate against the uniform and the
global-magnitude baselines at the same target, on the same validation images (McNemar's exact test).

This is not the equal-compute benchmark (``search_vs_baselines.py``): it runs one study as a user would
(``studies/cifar10_resnet20_targets.yaml`` by default) and reports what its rungs saw. Validation accuracies only
(the reporting half of the test split is not touched).

Usage:
  python benchmarks/targets_search.py --checkpoint ../shared/weights/cifar10-resnet/resnet20.pt \
      --data-root ../shared/datasets/cifar10 --n-trials 60 --seed 0 --workdir runs/targets-probe --out probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.config import load_study  # noqa: E402
from autoprune.deliver.vs_uniform import compare_at  # noqa: E402
from autoprune.engine.ask_tell import records  # noqa: E402
from autoprune.engine.backends.optuna_backend import run_search  # noqa: E402
from autoprune.engine.context import prepare  # noqa: E402
from autoprune.engine.record import heads  # noqa: E402


def per_target(recs: list, target: float) -> dict:
    """For each rung: how many candidates reached it, the best searched one and its comparison with each
    baseline that reached the rung too."""
    at = [r for r in heads(recs) if r.plan.target == target]  # each candidate once, at its highest rung
    base = {kind: next((r for r in at if r.warm_start == kind), None) for kind in ("uniform", "global")}
    out = {}
    for rung in sorted({s for r in at for s in r.fidelity.scores}):
        reached = [r for r in at if rung in r.fidelity.scores]
        searched = [r for r in reached if not r.warm_start]
        best = max(searched, key=lambda r: r.fidelity.scores[rung], default=None)
        row = {"reached": len(reached), "searched": len(searched),
               "baselines": {k: (b.fidelity.scores.get(rung) if b else None) for k, b in base.items()}}
        if best is not None:
            row["best_searched"] = {"trial": best.number, "accuracy": best.fidelity.scores[rung]}
            for kind, b in base.items():
                if b is not None:
                    row[f"vs_{kind}"] = compare_at(best, b, rung)
        out[str(rung)] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "cifar10_resnet20_targets.yaml"))
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--n-trials", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", required=True, help="the study's folder (one per run)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {"model.checkpoint": str(Path(args.checkpoint).resolve()), "seed": args.seed,
                 "data.root": str(Path(args.data_root).resolve()), "workdir": args.workdir,
                 "data.seed": args.seed}
    study = load_study(args.study, overrides)
    t0 = time.perf_counter()
    ctx = prepare(study)
    t_prep = time.perf_counter() - t0
    outcome = run_search(ctx, n_trials=args.n_trials, log=lambda s: print(s, file=sys.stderr, flush=True))
    recs = records(outcome.study)
    wall = time.perf_counter() - t0
    out = {"study": args.study, "seed": args.seed, "n_trials": len(recs), "prepare_s": round(t_prep, 1),
           "wall_s": round(wall, 1), "base_val_accuracy": ctx.reference["accuracy"],
           "finetune_steps": sum(r.fidelity.steps for r in heads(recs)),
           "rung_counts": {str(k): sum(k in r.fidelity.scores for r in heads(recs)) for k in sorted(
               {s for r in recs for s in r.fidelity.scores})},
           "targets": {str(t): per_target(recs, t) for t in study.config.targets.values},
           "machine": f"{platform.node()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads",
           "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "targets"}))
    for t, rows in out["targets"].items():
        for rung, row in rows.items():
            best = row.get("best_searched") or {}
            vs = row.get("vs_uniform") or {}
            print(f"{t}x rung {rung:>3}: {row['reached']:3d} reached; best searched {best.get('accuracy', float('nan')):.4f}"
                  f" (trial {best.get('trial')}); uniform {row['baselines']['uniform']}, global "
                  f"{row['baselines']['global']}; vs uniform {vs.get('difference', float('nan')) * 100:+.2f} pts, "
                  f"p={vs.get('p_value', float('nan')):.3g} on {vs.get('images')} images")


if __name__ == "__main__":
    main()
