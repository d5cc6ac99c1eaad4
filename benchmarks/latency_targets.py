"""Latency targets: how close the per-group latency model places candidates to the speed-up they are asked for.

A ResNet study with ``targets: {latency_reduction: [...]}`` measures its per-group latency model once
(:mod:`autoprune.pruning.latency_model`), then places every allocation on a target by that model. Here the uniform
allocation and ``--samples`` random allocations (seeded) per target are placed, pruned, and timed paired with the
base (``--repeats`` pairs, the study's backend and batch size): the measured speed-up against the target, and the
MACs reduction each reached. Run it on an otherwise idle machine.

Usage:
  python benchmarks/latency_targets.py --checkpoint ../shared/weights/cifar10-resnet/resnet20.pt \
      --data-root ../shared/datasets/cifar10 --targets 1.15 1.3 --out benchmarks/results/latency_targets.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.config import load_study  # noqa: E402
from autoprune.engine.context import prepare  # noqa: E402
from autoprune.metrics.costs import count_macs  # noqa: E402
from autoprune.metrics.latency import paired_latency  # noqa: E402
from autoprune.pruning.structural import prune_with_plan  # noqa: E402

STUDY = ROOT / "studies" / "cifar10_resnet20_targets.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--targets", type=float, nargs="+", default=[1.15, 1.3])
    ap.add_argument("--samples", type=int, default=6, help="random allocations per target (plus the uniform one)")
    ap.add_argument("--repeats", type=int, default=30, help="pairs per timed model")
    ap.add_argument("--batch", type=int, default=1, help="measure.latency_batch_size")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if any(t <= 1 for t in args.targets) or args.samples < 0 or args.repeats < 1:
        ap.error("targets must be > 1, --samples >= 0 and --repeats >= 1")
    workdir = Path(tempfile.mkdtemp(prefix="latency_targets_"))
    study = load_study(STUDY, {"workdir": str(workdir), "model.name": args.model,
                               "model.checkpoint": str(Path(args.checkpoint).resolve()),
                               "data.root": str(Path(args.data_root).resolve()), "measure.threads": args.threads,
                               "measure.latency_batch_size": args.batch, "measure.latency_backend": args.backend,
                               "measure.latency_repeats": args.repeats, "targets": {"latency_reduction": args.targets}})
    t0 = time.time()
    ctx = prepare(study, recovery_stream=False, measure_reference=False, log=print)
    scan_s = time.time() - t0
    base_macs, rng = count_macs(ctx.base, ctx.example), random.Random(args.seed)
    a = study.space.allocation
    rows = []
    for target in args.targets:
        shapes = [("uniform", {g: a.high for g in ctx.groups})]
        shapes += [(f"random{i}", {g: rng.uniform(a.low, a.high) for g in ctx.groups}) for i in range(args.samples)]
        for name, weights in shapes:
            placed = ctx.place(weights, target)
            model, _ = prune_with_plan(ctx.base, ctx.example, placed.ratios, "l1", layout=ctx.layout,
                                       round_to=study.space.fixed_round_to)
            lat = paired_latency(model.eval(), ctx.latency_base, ctx.latency_input, args.repeats, 5, args.backend)
            rows.append({"target": target, "allocation": name, "predicted": round(placed.reduction, 4),
                         "placed_within": placed.within, "measured": round(1 / lat.ratio, 4),
                         "dispersion": round(lat.dispersion, 4), "reliable": lat.reliable,
                         "macs_reduction": round(base_macs / count_macs(model, ctx.example), 4)})
            print(rows[-1])
    summary = {}
    for target in args.targets:
        errs = [r["measured"] / r["predicted"] - 1 for r in rows if r["target"] == target]
        summary[f"{target:g}"] = {"n": len(errs), "median_error": round(statistics.median(errs), 4),
                                  "min_error": round(min(errs), 4), "max_error": round(max(errs), 4),
                                  "macs_reduction_range": [min(r["macs_reduction"] for r in rows if r["target"] == target),
                                                           max(r["macs_reduction"] for r in rows if r["target"] == target)]}
    out = {"machine": {"platform": platform.platform(), "cores": os.cpu_count(), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")},
           "model": args.model, "backend": args.backend, "batch": args.batch, "repeats": args.repeats,
           "latency_model": ctx.latency_cost.to_dict(), "model_scan_s": round(scan_s, 1), "summary": summary,
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
