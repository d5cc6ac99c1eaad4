"""Speed-up of pruned CIFAR ResNets in eager PyTorch and in ONNX Runtime (BatchNorm folded), against their MACs cut.

For each model (ResNet-20, ResNet-56) and each structure at each MACs-reduction target, on each deployment
backend (``torch``: eager with BN folded; ``onnxruntime``: BN folded, exported to ONNX in memory) at each batch
size, the candidate is timed paired with the unpruned base deployed on the same backend
(:func:`autoprune.metrics.latency.paired_latency`: alternating pairs, the median of the per-pair ratios, its dispersion and
whether that was low enough to trust). Structures:
  picks    the search's chosen models, read from --picks (a benchmarks/search_vs_baselines.py output: the per-group
           ratios of methods.autoprune.points); they are the "front models" when given
  uniform  one ratio for every block, placed on the target by autoprune's bisection (its uniform warm start)
  global   torch-pruning's global Group-L1 pruning at the ratio bisected to the target; it stands in for the
           front when a model has no picks (latency depends on the structure only: it is non-uniform like them)
  base     the base paired with itself: the noise floor of the machine at that moment (speed-up ~1)
The base's weights are used throughout: a structure's speed does not depend on its weights.

The figure of merit is speed-up / MACs reduction (1.0: latency falls as fast as MACs). The issue's target
("Latency you can trust and deploy", item 4): at least 0.8 on the front models in at least one deployment
(backend x batch size); the last lines say, per model, whether the best deployment reaches it on every front model,
and by how much the worst one misses.

Usage (about 15 min on an idle 2-core machine, the ResNet-56 at batch 128 most of it; a noisy measurement is
repeated with 4x the pairs, so a busy machine takes up to about 4x longer):
  python benchmarks/latency_backends.py --checkpoint20 ../shared/weights/cifar10-resnet/resnet20.pt \
      --checkpoint56 ../shared/weights/cifar10-resnet/resnet56.pt --data-root ../shared/datasets/cifar10 \
      --picks benchmarks/results/v2_resnet20_seed0.json --threads 2 --repeats 30 \
      --out benchmarks/results/latency_backends.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.config import load_study
from autoprune.engine.context import StudyContext, prepare
from autoprune.engine.warm_start import global_at, global_prune
from autoprune.metrics.costs import count_macs
from autoprune.metrics.latency import LATENCY_BACKENDS, deploy, paired_latency
from autoprune.pruning.structural import prune_with_plan

STUDY = ROOT / "studies" / "cifar10_resnet20_targets.yaml"  # the shipped targets study; model.name is overridden
MODELS = ("resnet20", "resnet56")
GOAL = 0.8  # speed-up / MACs reduction the issue asks of the front models in at least one deployment


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ pure helpers
def deployment(backend: str, batch: int) -> str:
    """The key of one deployment (backend x batch size) in the table and the JSON.

    >>> deployment("onnxruntime", 128)
    'onnxruntime b128'
    """
    return f"{backend} b{batch}"


def efficiency(speedup: float, macs_cut: float) -> float:
    """Speed-up over MACs reduction: 1.0 when latency falls exactly as fast as MACs.

    >>> efficiency(1.6, 2.0)
    0.8
    """
    return round(speedup / macs_cut, 4) if macs_cut > 0 else float("nan")


def cell(fig: dict | None) -> str:
    """A table cell: speed-up and speed-up / MACs cut; ``*`` marks a measurement too noisy to trust.

    >>> cell({"speedup": 1.5, "efficiency": 0.75, "reliable": True}), cell({"speedup": 2.0, "efficiency": 1.0,
    ...                                                                     "reliable": False}), cell(None)
    ('1.50x / 0.75', '2.00x / 1.00*', '-')
    """
    if fig is None:
        return "-"
    return f"{fig['speedup']:.2f}x / {fig['efficiency']:.2f}" + ("" if fig["reliable"] else "*")


def table(rows: Sequence[dict], deployments: Sequence[str]) -> str:
    """A markdown table: model, structure, target, MACs cut, then speed-up / efficiency per deployment.

    >>> print(table([{"model": "m", "structure": "uniform", "target": 2.0, "macs_cut": 1.99,
    ...               "figures": {"torch b1": {"speedup": 1.5, "efficiency": 0.7538, "reliable": True}}}],
    ...             ["torch b1"]))
    | model | structure | target | MACs cut | torch b1 |
    |---|---|---:|---:|---:|
    | m | uniform | 2x | 1.99x | 1.50x / 0.75 |
    """
    lines = ["| model | structure | target | MACs cut | " + " | ".join(deployments) + " |",
             "|---|---|---:|---:|" + "---:|" * len(deployments)]
    for r in rows:
        cells = " | ".join(cell(r["figures"].get(d)) for d in deployments)
        lines.append(f"| {r['model']} | {r['structure']} | {r['target']:g}x | {r['macs_cut']:.2f}x | {cells} |")
    return "\n".join(lines)


def verdict(rows: Iterable[dict], front: str, goal: float = GOAL) -> dict:
    """Whether one deployment's speed-up reaches ``goal`` x the MACs reduction on every front model.

    Per deployment, the worst efficiency over the rows of structure ``front``; the best deployment is the one
    whose worst is highest. ``missed_by`` is goal - that worst (0 when reached).

    >>> rows = [{"structure": "picks", "target": 2.0, "macs_cut": 2.0,
    ...          "figures": {"torch b1": {"speedup": 1.2, "efficiency": 0.6, "reliable": True},
    ...                      "onnxruntime b1": {"speedup": 1.5, "efficiency": 0.75, "reliable": True}}},
    ...         {"structure": "picks", "target": 3.0, "macs_cut": 3.0,
    ...          "figures": {"torch b1": {"speedup": 2.7, "efficiency": 0.9, "reliable": True},
    ...                      "onnxruntime b1": {"speedup": 2.1, "efficiency": 0.7, "reliable": False}}}]
    >>> v = verdict(rows, "picks")
    >>> v["best"], v["worst"], v["reached"], v["missed_by"], v["worst_target"], v["all_reliable"]
    ('onnxruntime b1', 0.7, False, 0.1, 3.0, False)
    >>> v["worst_by_deployment"]
    {'torch b1': 0.6, 'onnxruntime b1': 0.7}
    """
    front_rows = [r for r in rows if r["structure"] == front]
    worst: dict[str, tuple[float, dict]] = {}
    for r in front_rows:
        for d, fig in r["figures"].items():
            if d not in worst or fig["efficiency"] < worst[d][0]:
                worst[d] = (fig["efficiency"], r)
    if not worst:
        return {"front": front, "best": None, "reached": False, "worst_by_deployment": {}}
    best = max(worst, key=lambda d: worst[d][0])
    low, row = worst[best]
    return {"front": front, "goal": goal, "best": best, "worst": low, "reached": low >= goal,
            "missed_by": round(max(0.0, goal - low), 4), "worst_target": row["target"],
            "worst_speedup": row["figures"][best]["speedup"], "worst_macs_cut": row["macs_cut"],
            "all_reliable": all(r["figures"][best]["reliable"] for r in front_rows if best in r["figures"]),
            "worst_by_deployment": {d: w for d, (w, _) in worst.items()}}


def verdict_line(model: str, v: dict, note: str) -> str:
    """One sentence on a model's :func:`verdict`.

    >>> print(verdict_line("resnet20", {"best": "torch b128", "worst": 0.7, "reached": False, "missed_by": 0.1,
    ...     "worst_target": 3.0, "worst_speedup": 2.1, "worst_macs_cut": 3.0, "goal": 0.8, "all_reliable": True,
    ...     "worst_by_deployment": {"torch b1": 0.5, "torch b128": 0.7}}, "search picks"))
    resnet20 (front: search picks): best deployment torch b128 MISSES the 0.8x target by 0.10 (worst front model: 3x target, 2.10x speed-up for 3.00x fewer MACs = 0.70; would need 2.40x); worst per deployment: torch b1 0.50, torch b128 0.70
    """
    if v.get("best") is None:
        return f"{model} (front: {note}): no front model measured"
    head = (f"{model} (front: {note}): best deployment {v['best']} "
            + (f"REACHES the {v['goal']:g}x target" if v["reached"]
               else f"MISSES the {v['goal']:g}x target by {v['missed_by']:.2f}"))
    need = "" if v["reached"] else f"; would need {v['goal'] * v['worst_macs_cut']:.2f}x"
    worst = (f" (worst front model: {v['worst_target']:g}x target, {v['worst_speedup']:.2f}x speed-up for "
             f"{v['worst_macs_cut']:.2f}x fewer MACs = {v['worst']:.2f}{need})")
    noisy = "" if v["all_reliable"] else " [some of its figures are unreliable: the machine was contended]"
    per = ", ".join(f"{d} {w:.2f}" for d, w in v["worst_by_deployment"].items())
    return f"{head}{worst}{noisy}; worst per deployment: {per}"


def read_picks(paths: Iterable[str]) -> dict[str, list[dict]]:
    """{model: [{"target", "ratios"}, ...]} from search_vs_baselines.py outputs (methods.autoprune.points)."""
    out: dict[str, list[dict]] = {}
    for p in paths:
        run = json.loads(Path(p).read_text())
        model = run.get("budget", {}).get("model")
        points = run.get("methods", {}).get("autoprune", {}).get("points", [])
        if model is None or not points or any("ratios" not in q for q in points):
            raise SystemExit(f"--picks {p}: not a search_vs_baselines.py output with methods.autoprune.points[].ratios")
        if model in out:
            raise SystemExit(f"--picks: two files for {model}; give one per model")
        out[model] = [{"target": float(q["target"]), "ratios": q["ratios"], "source": str(p)} for q in points]
    return out


def _clean(x):
    """JSON-safe figures: nan and inf become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


# ------------------------------------------------------------------------------------------------ the structures
def context(args, model: str, workdir: Path) -> StudyContext:
    """The shipped targets study on ``model`` with its checkpoint (no reference accuracy, no teacher stream)."""
    ckpt = args.checkpoint20 if model == "resnet20" else args.checkpoint56
    overrides = {"name": f"latency_{model}", "workdir": str(workdir / model), "model.name": model,
                 "model.checkpoint": str(Path(ckpt).resolve()), "data.root": str(Path(args.data_root).resolve()),
                 "measure.threads": args.threads}
    return prepare(load_study(args.study, overrides), "cpu", measure_reference=False, recovery_stream=False)


def structures(ctx: StudyContext, targets: Sequence[float], picks: list[dict] | None, model: str) -> list[dict]:
    """Each structure to time: {"structure", "target", "module", ...}, the base paired with itself first."""
    out = [{"structure": "base", "target": 1.0, "module": ctx.base}]
    round_to = ctx.study.space.fixed_round_to
    for p in picks or []:
        unknown = set(p["ratios"]) ^ set(ctx.groups)
        if unknown:
            raise SystemExit(f"--picks {p['source']}: its groups do not match {model}'s ({sorted(unknown)[:4]} ...)")
        module = prune_with_plan(ctx.base, ctx.example, p["ratios"], "l1", layout=ctx.layout, round_to=round_to)[0]
        out.append({"structure": "picks", "target": p["target"], "module": module, "ratios": p["ratios"]})
    uniform = {g: ctx.study.space.allocation.high for g in ctx.groups}
    for t in targets:
        plan = ctx.decode({f"alloc.{g}": w for g, w in uniform.items()} | {"target": t})
        module = prune_with_plan(ctx.base, ctx.example, plan.ratios, "l1", layout=ctx.layout, round_to=round_to)[0]
        out.append({"structure": "uniform", "target": t, "module": module, "ratios": plan.ratios})
    for t in targets:
        t0 = time.perf_counter()
        ratio, ratios = global_at(ctx, t)
        out.append({"structure": "global", "target": t, "module": global_prune(ctx, ratio), "ratios": ratios,
                    "global_ratio": round(ratio, 4)})
        log(f"{model}: global structure at {t:g}x built (bisection {time.perf_counter() - t0:.0f} s)")
    return out


def front_of(model: str, picks: dict[str, list[dict]]) -> tuple[str, str]:
    """(the structure whose rows are the front models, what it is): the picks if given, else the global stand-in.

    >>> front_of("resnet56", {})[0], front_of("resnet20", {"resnet20": [{"source": "a.json"}]})
    ('global', ('picks', 'search picks from a.json'))
    """
    if model in picks:
        return "picks", "search picks from " + ", ".join(sorted({p["source"] for p in picks[model]}))
    return "global", ("torch-pruning's global Group-L1 structure, standing in for the search's picks (none given "
                      "for this model)")


# ------------------------------------------------------------------------------------------------ measuring
class Progress:
    """Timestamped "[i/N] ..., ETA" lines on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def step(self, msg: str) -> None:
        self.done += 1
        spent = time.perf_counter() - self.t0
        eta = spent / self.done * (self.total - self.done)
        log(f"[{self.done}/{self.total}] {msg} (elapsed {spent / 60:.1f} min, ETA {eta / 60:.1f} min)")


def measure(model: str, ctx: StudyContext, items: list[dict], args, progress: Progress) -> tuple[list[dict], dict]:
    """Every structure's figures on every deployment; (rows, the base's ms per deployment)."""
    base_macs = count_macs(ctx.base, ctx.example)
    rows = [{"model": model, "structure": it["structure"], "target": it["target"],
             "macs": count_macs(it["module"], ctx.example), "figures": {},
             **{k: it[k] for k in ("ratios", "global_ratio") if k in it}} for it in items]
    for r in rows:
        r["macs_cut"] = round(base_macs / r["macs"], 4)
    base_ms: dict[str, float] = {}
    for backend in args.backends:
        for batch in args.batch_sizes:
            x = ctx.example.expand(batch, *ctx.example.shape[1:]).contiguous()
            d = deployment(backend, batch)
            base = deploy(ctx.base, x, backend)  # deployed once, paired with every structure
            for it, r in zip(items, rows):
                cand = base if it["structure"] == "base" else it["module"]
                res = paired_latency(cand, base, x, repeats=args.repeats, warmup=args.warmup, backend=backend)
                r["figures"][d] = {"speedup": round(res.speedup, 4), "efficiency": efficiency(res.speedup, r["macs_cut"]),
                                   "ms": round(res.ms, 4), "base_ms": round(res.base_ms, 4),
                                   "ratio": round(res.ratio, 4), "dispersion": round(res.dispersion, 4),
                                   "reliable": res.reliable, "pairs": res.pairs}
                if it["structure"] == "base":
                    base_ms[d] = round(res.base_ms, 4)
                progress.step(f"{model} {d} {it['structure']}@{it['target']:g}x: {res.speedup:.2f}x for "
                              f"{r['macs_cut']:.2f}x fewer MACs, dispersion {res.dispersion:.3f}"
                              + ("" if res.reliable else " (unreliable)"))
    return rows, {"macs": base_macs, "ms": base_ms}


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {"node": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": version("onnxruntime"), "onnx": version("onnx"),
            "load_average_at_start": list(os.getloadavg())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint20", help="the ResNet-20 weights (needed when resnet20 is measured)")
    ap.add_argument("--checkpoint56", help="the ResNet-56 weights (needed when resnet56 is measured)")
    ap.add_argument("--data-root", required=True, help="the CIFAR-10 folder (the study's group layout needs it)")
    ap.add_argument("--picks", nargs="*", default=[], metavar="JSON",
                    help="search_vs_baselines.py outputs whose autoprune picks are the front models (one per model)")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--backends", nargs="+", choices=LATENCY_BACKENDS.names(), default=["torch", "onnxruntime"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 128])
    ap.add_argument("--targets", nargs="+", type=float, help="MACs-reduction targets (default: the study's)")
    ap.add_argument("--threads", type=int, default=2, help="torch (and onnxruntime intra-op) threads, fixed")
    ap.add_argument("--repeats", type=int, default=30, help="pairs per measurement (x4 once more if noisy)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--study", default=str(STUDY), help="the targets study whose search space places the structures")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for m in args.models:
        flag = "--checkpoint20" if m == "resnet20" else "--checkpoint56"
        if not getattr(args, flag[2:]):
            ap.error(f"{flag} is required to measure {m}")
    torch.set_num_threads(args.threads)
    picks = read_picks(args.picks)
    t_all = time.perf_counter()
    info = machine()
    prepared = {}
    with tempfile.TemporaryDirectory(prefix="autoprune-latency-") as tmp:
        for m in args.models:
            ctx = context(args, m, Path(tmp))
            torch.set_num_threads(args.threads)
            targets = args.targets or ctx.targets or [1.5, 2.0, 3.0]
            log(f"{m}: {len(ctx.groups)} groups; building structures at {', '.join(f'{t:g}x' for t in targets)}")
            prepared[m] = (ctx, structures(ctx, targets, picks.get(m), m))
    progress = Progress(sum(len(s) for _, s in prepared.values()) * len(args.backends) * len(args.batch_sizes))
    results, rows = {}, []
    for m, (ctx, items) in prepared.items():
        front, note = front_of(m, picks)
        model_rows, base = measure(m, ctx, items, args, progress)
        rows += model_rows
        results[m] = {"base": base, "front": front, "front_note": note, "rows": model_rows,
                      "verdict": verdict(model_rows, front),
                      "verdict_by_structure": {s: verdict(model_rows, s) for s in ("picks", "uniform", "global")
                                               if any(r["structure"] == s for r in model_rows)}}
    deployments = [deployment(b, n) for b in args.backends for n in args.batch_sizes]
    out = {"config": {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "models": args.models,
                      "backends": args.backends, "batch_sizes": args.batch_sizes, "repeats": args.repeats,
                      "warmup": args.warmup, "threads": args.threads, "goal": GOAL, "study": str(args.study),
                      "picks": args.picks, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "machine": {**info, "load_average_at_end": list(os.getloadavg())}},
           "models": results, "wall_s": round(time.perf_counter() - t_all, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(_clean(out), indent=2))
    print(table(rows, deployments))
    print("\nCells: speed-up vs the base on the same deployment (median of paired ratios) / speed-up per MACs "
          "reduction; * = dispersion too high, unreliable. base = the base paired with itself (noise floor).\n")
    for m, r in results.items():
        print(f"{m} base: {r['base']['macs']:,} MACs; " + ", ".join(f"{d} {ms:.2f} ms" for d, ms in r["base"]["ms"].items()))
    print()
    for m, r in results.items():
        print(verdict_line(m, r["verdict"], r["front_note"]))
    log(f"wrote {args.out} in {out['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
