"""autoprune's search against hand-set pruning at equal fine-tune compute, on CIFAR-10 with a pretrained ResNet.

Methods (only the blocks' inner channels are pruned, as in autoprune's CIFAR ResNet search spaces):
  uniform_l1          one ratio for every block (L1 filter norm, torch-pruning local pruning), bisected to each target
  tp_global_l1        torch-pruning global pruning with Group-L1 (GroupMagnitudeImportance p=1), bisected likewise
  random_adaptive_bn  EagleEye: random per-stage ratios and scorer, every candidate scored by its validation accuracy
                      after BN re-calibration alone (adaptive BN); the best third by that score (non-dominated rank
                      with MACs) is fine-tuned with the fine-tune epochs autoprune's trials spent
  autoprune           the search: TPE, warm-started with the uniform and global configurations, a short KD recovery
                      per trial and a longer one for trials promoted on the current front

Exploration: autoprune and the random search get the same number of candidates and the same fine-tune epochs.
Selection (both searches): for each target MACs reduction t, the candidate with the best validation accuracy
among those with reduction in [0.98 t, 1.1 t], promoted ones first (else the least-reduced one above 0.98 t).
autoprune's warm start is the baselines' own bisected ratios at every target, and its sampler is constrained to
at least --min-reduction (the targets' region). Reported: each method's points, its hypervolume, the best accuracy
at >= 0.97 t, and the accuracy of its front interpolated to exactly t (tightly matched MACs).
Final recovery, identical for every method's chosen models: the pruned structure with the base's weights, BN
re-calibration, then --final-epochs of KD (T=4, 0.9 KD + 0.1 CE, SGD 0.01 cosine, batch 128, crop+flip).
Validation is half the CIFAR-10 test split (the shared ResNets were trained on all 50,000 training images); the
figures are on the other half ("test").

Usage:
  python benchmarks/search_vs_baselines.py --model resnet20 --checkpoint ../shared/weights/cifar10-resnet/resnet20.pt \
      --data-root ../shared/datasets/cifar10 --budget-epochs 6 --out runs/bench/resnet20.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.accounting import cost_summary  # noqa: E402
from autoprune.backends.optuna_backend import run_search  # noqa: E402
from autoprune.config import RecoveryConfig, load_study  # noqa: E402
from autoprune.context import StudyContext, prepare  # noqa: E402
from autoprune.distill import finetune, kd_loss, recalibrate_bn  # noqa: E402
from autoprune.measure import accuracy, count_macs, latency_ms  # noqa: E402
from autoprune.pareto import accuracy_at, hypervolume_2d  # noqa: E402
from autoprune.pruning import prune_with_plan  # noqa: E402
from autoprune.retrain import rebuild  # noqa: E402
from autoprune.teacher import build_stream  # noqa: E402
from autoprune.telling import records  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from autoprune.warmstart import global_prune  # noqa: E402

TARGETS = (1.5, 2.0, 3.0)
BATCH = 128


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_study(tmp: Path, args, name: str, *, sampler: str, steps: int, promote: int, warm: dict, n_startup: int,
                bn_batches: int, short_val: int | None = None) -> Path:
    space = {"groups": {"by": "stage"}, "ratio": {"low": 0.0, "high": 0.8, "step": 0.005},
             "scorers": ["l1", "taylor", "bn_scale", "fpgm"], "warm_start": warm}
    (tmp / f"{name}_space.yaml").write_text(yaml.safe_dump(space))
    study = {
        "name": name, "seed": args.seed, "workdir": str(tmp / "run"),
        "model": {"name": args.model, "num_classes": 10, "checkpoint": str(Path(args.checkpoint).resolve())},
        "data": {"name": "cifar10", "root": str(Path(args.data_root).resolve()), "val_source": "test",
                 "val_fraction": 0.5, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "augment": True, "batch_size": 500},
        "search_space": f"{name}_space.yaml", "objectives": ["accuracy", "macs"],
        "recovery": {"bn_recalibration_batches": bn_batches, "steps": steps, "batch_size": BATCH, "lr": 0.01,
                     "temperature": 4.0, "alpha": 0.9},
        "fidelity": {"promote_steps": promote, "eta": args.eta, "short_val_images": short_val},
        "measure": {"latency_batch_size": BATCH, "latency_repeats": 5, "latency_warmup": 1},
        "budget": {"n_trials": 1, "max_initial_failures": 3},
        "sampler": {"name": sampler, "n_startup_trials": n_startup},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def macs_reduction(ctx: StudyContext, model) -> float:
    return ctx.reference["macs"] / count_macs(model, ctx.example)


def bisect_ratio(ctx: StudyContext, build, target: float, tol: float = 0.01) -> tuple[float, object]:
    """The ratio at which ``build(ratio)`` reduces MACs by ``target`` (to within ``tol`` relative), or the closest
    one bisection met (channel counts are discrete)."""
    lo, hi, best, miss = 0.0, 0.95, None, math.inf
    for _ in range(20):
        mid = (lo + hi) / 2
        model = build(mid)
        red = macs_reduction(ctx, model)
        if abs(red / target - 1) < miss:
            best, miss = (mid, model), abs(red / target - 1)
        if miss <= tol:
            break
        lo, hi = (mid, hi) if red < target else (lo, mid)
    return best


def pick(trials, base_macs: float, target: float):
    """Best validation accuracy among candidates reduced by [0.98 t, 1.1 t] (the bisected baselines land within
    1 % of t: channel counts are discrete), promoted (longer-recovery) candidates first; else the least-reduced
    one above 0.98 t."""
    done = [t for t in trials if t.completed]
    red = {t.number: base_macs / t.metrics.macs for t in done}
    band = [t for t in done if 0.98 * target <= red[t.number] <= 1.1 * target]
    if band:
        return max(band, key=lambda t: (t.promoted, t.metrics.accuracy))
    above = [t for t in done if red[t.number] >= 0.98 * target]
    return min(above, key=lambda t: red[t.number]) if above else None


def final_recovery(ctx: StudyContext, model, stream, steps: int) -> dict:
    """The recovery every chosen model gets; returns its figures on the reporting half."""
    model = model.to(ctx.device)
    for p in model.parameters():
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    recalibrate_bn(model, ctx.data.train, 20, BATCH, generator=gen)
    t0 = time.perf_counter()
    finetune(model, ctx.data.train, steps=steps, settings=RecoveryConfig(batch_size=BATCH, lr=0.01, temperature=4.0,
                                                                        alpha=0.9), teacher=ctx.base, stream=stream)
    ft = time.perf_counter() - t0
    model.eval()
    bs = ctx.study.config.data.batch_size
    return {"accuracy": accuracy(model, ctx.data.test, bs), "val_accuracy": accuracy(model, ctx.data.val, bs),
            "macs": count_macs(model, ctx.example), "finetune_s": round(ft, 1),
            "images_per_s": round(steps * BATCH / ft, 1) if ft else None, "_model": model}


@torch.inference_mode()
def interleaved_latency(models: list, x: torch.Tensor, rounds: int = 9) -> list[float]:
    """Median ms of one forward at x's batch size per model, the models timed round-robin so that load on a
    shared machine falls on all of them alike."""
    times: list[list[float]] = [[] for _ in models]
    for m in models:
        m.eval()(x)  # warm-up
    for _ in range(rounds):
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            m(x)
            times[i].append((time.perf_counter() - t0) * 1000)
    return [statistics.median(t) for t in times]


def summarise(points: list[dict], base_macs: float, base_latency: float) -> dict:
    for p in points:
        p["macs_reduction"] = round(base_macs / p["macs"], 4)
        p["speedup"] = round(base_latency / p["latency_ms"], 4)
        p["speedup_per_macs_reduction"] = round(p["speedup"] / p["macs_reduction"], 4)
    hv = hypervolume_2d([(p["accuracy"], p["macs"] / base_macs) for p in points], ref=(0.1, 1.0))
    # the same, with any point reducing MACs beyond the largest target counted at that target: a method whose
    # 3x pick lands at 3.4x otherwise gains area no other method's points reach
    hv_clip = hypervolume_2d([(p["accuracy"], max(p["macs"] / base_macs, 1 / max(TARGETS))) for p in points],
                             ref=(0.1, 1.0))
    best_at, interp = {}, {}
    front = [(p["accuracy"], p["macs_reduction"]) for p in points]
    for t in TARGETS:
        ok = [p["accuracy"] for p in points if p["macs_reduction"] >= t * 0.97]
        best_at[f"{t:g}"] = max(ok) if ok else None
        # tightly matched: the method's front interpolated to exactly t (None where its points do not reach t)
        at = accuracy_at(front, t)
        interp[f"{t:g}"] = round(at, 6) if at is not None else None
    return {"hypervolume": round(hv, 6), "hypervolume_within_targets": round(hv_clip, 6), "best_acc_at": best_at, "acc_at_interpolated": interp, "points": points}


def step_costs(ctx: StudyContext, stream, reps: int = 12) -> dict:
    """Median seconds of one training step at batch 128: plain student, KD with the teacher run, KD with cached logits."""
    student = copy.deepcopy(ctx.base).train()
    opt = torch.optim.SGD(student.parameters(), lr=1e-4)
    x, y, cached = next(stream.batches(ctx.data.train))
    teacher = ctx.base.eval()

    def step(kind: str) -> float:
        t0 = time.perf_counter()
        out = student(x)
        if kind == "plain":
            loss = torch.nn.functional.cross_entropy(out, y)
        else:
            if kind == "teacher":
                with torch.no_grad():
                    t_logits = teacher(x)
            else:
                t_logits = cached
            loss = kd_loss(out, t_logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    times = {k: [] for k in ("plain", "teacher", "cached")}
    for _ in range(2):
        for k in times:
            step(k)
    for _ in range(reps):
        for k in times:  # interleaved, so machine noise hits all three alike
            times[k].append(step(k))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median_s": {k: round(v, 4) for k, v in med.items()},
            "cached_over_plain": round(med["cached"] / med["plain"], 3),
            "teacher_over_plain": round(med["teacher"] / med["plain"], 3)}


def searched(ctx: StudyContext, n_trials: int) -> tuple[list, dict, float]:
    """Run a search; its trials, their cost summary and its wall time."""
    t0 = time.perf_counter()
    trials = records(run_search(ctx, n_trials=n_trials, log=log).study, states=list(TrialState))
    return trials, cost_summary(trials), time.perf_counter() - t0


def plot(results: dict, path: Path) -> None:
    """Test accuracy against MACs reduction for every method's points, with the targets marked (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoprune.saving import atomic_write

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (name, r), marker in zip(results["methods"].items(), "o^sD"):
        pts = sorted((p["macs_reduction"], p["accuracy"] * 100) for p in r["points"])
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=marker, label=f"{name} (HV {r['hypervolume']:.4f})")
    for t in TARGETS:
        ax.axvline(t, color="0.85", lw=0.8, zorder=0)
    b = results["budget"]
    ax.set(xlabel="MACs reduction (base / pruned)", ylabel="test accuracy, reporting half (%)",
           title=f"{b['model']}: {b['budget_epochs']:g} search epochs, {b['final_epochs']:g} final KD epoch(s), seed "
                 f"{b.get('seed', 0)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["resnet20", "resnet56"], default="resnet20")
    ap.add_argument("--checkpoint")
    ap.add_argument("--data-root")
    ap.add_argument("--budget-epochs", type=float, default=6.0,
                    help="fine-tune epochs (of 50,000 images) for each search's exploration")
    ap.add_argument("--final-epochs", type=float, default=1.0, help="KD epochs every chosen model gets at the end")
    ap.add_argument("--trial-steps", type=int, default=20, help="autoprune's short recovery per trial (steps of 128)")
    ap.add_argument("--promote-steps", type=int, default=200, help="extra steps for a promoted trial")
    ap.add_argument("--eta", type=float, default=3.0)
    ap.add_argument("--short-val-images", type=int, default=1000,
                    help="validation images autoprune scores a short recovery on (promoted trials: all of them)")
    ap.add_argument("--bn-batches", type=int, default=4,
                    help="BN re-calibration batches before autoprune's short recovery (the random search's adaptive-BN "
                         "score, its whole signal, keeps 20)")
    ap.add_argument("--min-reduction", type=float, default=1.45,
                    help="autoprune's search constraint: MACs at most base / this (0: none); the targets start at 1.5x")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--workdir", help="keep the studies here (default: a temporary folder)")
    ap.add_argument("--plot", help="also draw the points to this PNG (needs matplotlib)")
    ap.add_argument("--replot", metavar="JSON", help="only redraw --plot from a saved --out file")
    args = ap.parse_args()
    if args.replot:  # redraw from a saved run: nothing else is needed
        if not args.plot:
            ap.error("--replot needs --plot")
        plot(json.loads(Path(args.replot).read_text()), Path(args.plot))
        return
    missing = [f"--{n.replace('_', '-')}" for n in ("checkpoint", "data_root", "out") if not getattr(args, n)]
    if missing:
        ap.error(f"the following arguments are required: {', '.join(missing)}")

    t_all = time.perf_counter()
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="autoprune-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = 50000 // BATCH
    explore_steps = int(args.budget_epochs * steps_per_epoch)
    per_trial = args.trial_steps + args.promote_steps / args.eta  # expected: at most 1/eta of trials promoted
    n_trials = max(4, int(explore_steps // per_trial))
    # EagleEye screens by adaptive BN alone (0 steps) and spends the same fine-tune steps on its promoted third
    random_steps = int(round(args.promote_steps + args.trial_steps * args.eta))
    ap_path = write_study(tmp, args, f"bench_{args.model}_autoprune", sampler="tpe", steps=args.trial_steps,
                          promote=args.promote_steps, warm={}, n_startup=8, bn_batches=args.bn_batches,
                          short_val=args.short_val_images)
    rnd_path = write_study(tmp, args, f"bench_{args.model}_random", sampler="random", steps=0, promote=random_steps,
                           warm={}, n_startup=0, bn_batches=20)

    log(f"preparing {args.model} (teacher logits for the recovery stream are computed once)")
    t0 = time.perf_counter()
    ctx = prepare(load_study(ap_path), args.device)
    # The baselines' own configurations at each target (bisected on MACs alone, no data), which autoprune's
    # search starts from (warm start): the search sees every baseline structure and may only improve on it.
    builds = {
        "uniform_l1": lambda r: prune_with_plan(ctx.base, ctx.example, r, "l1", layout=ctx.layout)[0],
        "tp_global_l1": lambda r: global_prune(ctx, r),
    }
    bisected = {name: {t: bisect_ratio(ctx, build, t) for t in TARGETS} for name, build in builds.items()}
    ctx.study.space.warm_start.uniform = [round(r, 4) for r, _ in bisected["uniform_l1"].values()]
    ctx.study.space.warm_start.global_ = [round(r, 4) for r, _ in bisected["tp_global_l1"].values()]
    log(f"warm start (bisected baseline ratios): {ctx.study.space.warm_start.model_dump()}")
    if args.min_reduction:  # spend the search where the targets are (a constraint the sampler learns to respect)
        ctx.study.config.constraints.max_macs = ctx.reference["macs"] / args.min_reduction
    t_prepare = time.perf_counter() - t0
    base = ctx.reference
    base_test = accuracy(ctx.base, ctx.data.test, 500)
    log(f"base: val {base['accuracy']:.4f}, test half {base_test:.4f}, MACs {base['macs']:,}, "
        f"latency {base['latency_ms']:.1f} ms at batch {BATCH}; prepared in {t_prepare:.1f} s ({base['teacher']})")
    costs = step_costs(ctx, ctx.stream)
    log(f"step costs (median s): {costs}")

    log(f"autoprune search: {n_trials} trials, {args.trial_steps} steps each, +{args.promote_steps} when promoted")
    ap_trials, ap_cost, t_ap = searched(ctx, n_trials)
    log(f"autoprune search: {t_ap:.0f} s; {ap_cost['finetune_steps']} fine-tune steps; promotion {ap_cost['promotion']}")

    rctx = prepare(load_study(rnd_path), args.device)
    log(f"random search: {n_trials} candidates scored by adaptive BN, +{random_steps} steps when promoted")
    rnd_trials, rnd_cost, t_rnd = searched(rctx, n_trials)

    final_steps = int(args.final_epochs * steps_per_epoch)
    log(f"final recovery stream: {final_steps} steps")
    final_stream = build_stream(ctx.base, ctx.data.train, final_steps, BATCH, True, args.seed + 1)
    methods: dict[str, list[dict]] = {m: [] for m in ("autoprune", "uniform_l1", "tp_global_l1", "random_adaptive_bn")}
    for t in TARGETS:
        for name in builds:
            ratio, model = bisected[name][t]
            res = final_recovery(ctx, model, final_stream, final_steps)
            methods[name].append({**res, "target": t, "ratio": round(ratio, 4)})
            log(f"{name} @ {t}x: ratio {ratio:.3f} -> test {res['accuracy']:.4f}, {base['macs'] / res['macs']:.2f}x")
        for name, trials, c in (("autoprune", ap_trials, ctx), ("random_adaptive_bn", rnd_trials, rctx)):
            chosen = pick(trials, base["macs"], t)
            if chosen is None:
                log(f"{name} @ {t}x: no candidate reduces MACs that much")
                continue
            model, _, _ = rebuild(c, chosen)
            res = final_recovery(ctx, model, final_stream, final_steps)
            methods[name].append({**res, "target": t, "trial": chosen.number,
                                  "search_val_accuracy": chosen.metrics.accuracy, "scorer": chosen.plan.scorer,
                                  "ratios": chosen.plan.ratios, "fidelity": chosen.entry()["fidelity"]})
            log(f"{name} @ {t}x: trial {chosen.number} -> test {res['accuracy']:.4f}, {base['macs'] / res['macs']:.2f}x")

    everything = [p for pts in methods.values() for p in pts]
    lat = interleaved_latency([ctx.base] + [p.pop("_model") for p in everything], ctx.latency_input)
    base["latency_ms"] = lat[0]
    for p, ms in zip(everything, lat[1:]):
        p["latency_ms"] = round(ms, 3)
    out = {
        "budget": {"model": args.model, "budget_epochs": args.budget_epochs, "final_epochs": args.final_epochs,
                   "batch_size": BATCH, "train_images": len(ctx.data.train), "val_images": len(ctx.data.val),
                   "test_images": len(ctx.data.test), "n_candidates": n_trials, "trial_steps": args.trial_steps,
                   "promote_steps": args.promote_steps, "eta": args.eta, "random_candidate_steps": random_steps,
                   "short_val_images": args.short_val_images, "bn_batches": args.bn_batches, "seed": args.seed,
                   "min_reduction": args.min_reduction,
                   "autoprune_finetune_steps": ap_cost["finetune_steps"], "random_finetune_steps": rnd_cost["finetune_steps"],
                   "device": args.device, "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
                   "date": time.strftime("%Y-%m-%d")},
        "base": {"val_accuracy": base["accuracy"], "test_accuracy": base_test, "macs": base["macs"],
                 "latency_ms": base["latency_ms"]},
        "methods": {m: summarise(p, base["macs"], base["latency_ms"]) for m, p in methods.items()},
        "autoprune_study": {"search_s": round(t_ap, 1), "cost": ap_cost},
        "random_study": {"search_s": round(t_rnd, 1), "cost": rnd_cost},
        "step_costs": costs, "prepare_s": round(t_prepare, 1), "wall_s": round(time.perf_counter() - t_all, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    if args.plot:
        plot(out, Path(args.plot))
    print(f"{'method':20s} {'HV':>8s} {'HV<=3x':>8s} " + " ".join(f"{'acc@' + format(t, 'g') + 'x':>9s}" for t in TARGETS)
          + " " + " ".join(f"{'interp@' + format(t, 'g') + 'x':>10s}" for t in TARGETS)
          + "   points (test acc / MACs cut / latency speed-up)")
    for m, r in out["methods"].items():
        accs = " ".join(f"{(r['best_acc_at'][format(t, 'g')] or math.nan) * 100:9.2f}" for t in TARGETS)
        accs += " " + " ".join(f"{(r['acc_at_interpolated'][format(t, 'g')] or math.nan) * 100:10.2f}" for t in TARGETS)
        pts = "; ".join(f"{p['accuracy'] * 100:.2f} / {p['macs_reduction']:.2f}x / {p['speedup']:.2f}x" for p in r["points"])
        print(f"{m:20s} {r['hypervolume']:8.4f} {r['hypervolume_within_targets']:8.4f} {accs}   {pts}")
    print(f"step costs: {costs}; autoprune overhead share {ap_cost['overhead_share']:.3f}; "
          f"promotion {ap_cost['promotion']}; wall {out['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
