"""How cheap can rung 0 be? Rank fidelity of BN-only scores with fewer BN batches and fewer validation images.

Random per-block allocations of the shipped targets study are placed on a target (within 1 % of its MACs), pruned
with the base's weights (L1), and each is scored after BatchNorm re-calibration alone under several settings
(BN batches of 128 training images, validation images: a seeded subset, or all of the validation half). Printed:
Kendall's tau of each setting's scores against a reference (20 BN batches drawn with another seed, all 5,000
validation images) per target, and each setting's cost in training-image units (a forward image counts 1/3).

Usage:
  python benchmarks/rung0_fidelity.py --checkpoint ../shared/weights/cifar10-resnet/resnet20.pt \
      --data-root ../shared/datasets/cifar10 --candidates 20 --out benchmarks/results/rung0_fidelity.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import torch
from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.config import load_study  # noqa: E402
from autoprune.engine.context import prepare  # noqa: E402
from autoprune.metrics.costs import accuracy  # noqa: E402
from autoprune.pruning.structural import prune_with_plan  # noqa: E402
from autoprune.train.distill import recalibrate_bn  # noqa: E402

BATCH = 128
# name -> (BN batches, validation images or None for all, BN draw seed); "ref" is the reference
SETTINGS = {"ref": (20, None, 7), "b20v1000": (20, 1000, 0), "b10v1000": (10, 1000, 0), "b5v1000": (5, 1000, 0),
            "b10v500": (10, 500, 0), "b5v500": (5, 500, 0)}


def scores_at(ctx, target: float, n: int, rng: random.Random, subsets: dict) -> dict[str, list[float]]:
    """Each setting's BN-only validation accuracy of ``n`` random allocations placed on ``target``."""
    out: dict[str, list[float]] = {k: [] for k in SETTINGS}
    for _ in range(n):
        plan = ctx.decode({f"alloc.{g}": rng.random() for g in ctx.groups} | {"target": target})
        model = prune_with_plan(ctx.base, ctx.example, plan.ratios, "l1", layout=ctx.layout,
                                round_to=ctx.study.space.fixed_round_to)[0]
        for k, (batches, images, seed) in SETTINGS.items():
            recalibrate_bn(model, ctx.data.train, batches, BATCH, generator=torch.Generator().manual_seed(seed))
            out[k].append(accuracy(model, subsets[images], 500))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--study", default=str(ROOT / "studies" / "cifar10_resnet20_targets.yaml"))
    ap.add_argument("--targets", type=float, nargs="+", default=[2.0, 3.0])
    ap.add_argument("--candidates", type=int, default=20, help="random allocations per target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    study = load_study(args.study, {"workdir": tempfile.mkdtemp(prefix="rung0-"), "seed": args.seed,
                                    "model.checkpoint": str(Path(args.checkpoint).resolve()),
                                    "data.root": str(Path(args.data_root).resolve())})
    ctx = prepare(study, "cpu")
    val = ctx.data.val
    order = torch.randperm(len(val), generator=torch.Generator().manual_seed(args.seed + 1))
    subsets = {None: val, **{n: val.subset(order[:n]) for n in {s[1] for s in SETTINGS.values()} if n}}
    rng, result = random.Random(args.seed), {}
    for t in args.targets:
        s = scores_at(ctx, t, args.candidates, rng, subsets)
        taus = {k: round(float(kendalltau(v, s["ref"])[0]), 3) for k, v in s.items() if k != "ref"}
        result[f"{t:g}"] = {"kendall_tau_vs_ref": taus, "ref_range": [min(s["ref"]), max(s["ref"])], "scores": s}
        print(f"{t:g}x: tau vs ref {taus}; ref accuracy {min(s['ref']):.3f}-{max(s['ref']):.3f}", flush=True)
    cost = {k: round((b * BATCH + (n or len(val))) / 3) for k, (b, n, _) in SETTINGS.items()}
    print("cost per candidate, image units:", cost)
    if args.out:
        Path(args.out).write_text(json.dumps({"targets": result, "cost_units": cost, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
