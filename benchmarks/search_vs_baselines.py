"""autoprune's search against hand-set pruning at equal compute, on CIFAR-10 with a pretrained ResNet (v2).

Every method produces one model per MACs-reduction target (1.5x, 2x, 3x, each within allocation.TOLERANCE = 1 %):
  autoprune           the study users are given (studies/cifar10_resnet20_targets.yaml: per-block allocation placed
                      on each target, a BN-only rung 0, 20 KD steps, 80 more, eta 4, deferred promotion, TPE), run
                      until it has spent the budget; its pick per target is what `autoprune select` returns
  uniform_l1          one ratio for every block (L1 filter norm), placed on each target by autoprune's bisection
  tp_global_l1        torch-pruning's global Group-L1 pruning itself (one threshold across all blocks), bisected
  random_adaptive_bn  EagleEye: random allocations placed on the same targets, every candidate scored after BN
                      re-calibration alone on the same validation subset; half the budget screens, then the best
                      --eagle-top per target (ranked after all are screened) share the other half as KD fine-tune,
                      and the best of them on the whole validation half is its pick
  sensitivity_knapsack each block pruned alone at 0.25 / 0.5 / 0.75 / 0.9 and scored after BN re-calibration (the
                      scan, counted as its compute); per target, the allocation with the least predicted drop
                      (drops assumed to add up) grown greedily (AIMET, ModelOpt FastNAS), its shape placed exactly

Compute, one unit for all: images through the network, a training (KD) image counting 1 and a forward-only image
(BN re-calibration, evaluation, latency) 1/3. autoprune runs until it has spent --budget-epochs x 50,000 units;
the random search then gets exactly what autoprune spent. The baselines spend nothing before the final recovery.
Final recovery, identical for every chosen model: its structure with the base's weights, BN re-calibration, then
--final-epochs of KD (T=4, 0.9 KD + 0.1 CE, SGD 0.01 cosine, batch 128, crop+flip) from a stream seeded by --seed.
Validation = a half of the CIFAR-10 test split drawn with --seed (the shared ResNets were trained on all 50,000
training images); every reported figure is on the other half. --extra-kd adds, for information, the two
baselines given one target's share of the search budget as extra KD on their single model.

Usage:
  python benchmarks/search_vs_baselines.py --model resnet20 --checkpoint ../shared/weights/cifar10-resnet/resnet20.pt \
      --data-root ../shared/datasets/cifar10 --budget-epochs 5 --final-epochs 1 --seed 0 --out runs/bench/s0.json
  python benchmarks/search_vs_baselines.py --extra-kd-of runs/bench/s0.json --checkpoint ... --data-root ... \
      --out runs/bench/s0_extra_kd.json          (only the --extra-kd rows for that earlier run, beside its rows)
  python benchmarks/search_vs_baselines.py --knapsack-of runs/bench/s0.json --checkpoint ... --data-root ... \
      --out runs/bench/s0_knapsack.json     (only the sensitivity_knapsack rows, for a run made before they existed)
  python benchmarks/search_vs_baselines.py --aggregate runs/bench/s0.json runs/bench/s1.json ... [--plot F.png]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.config import RecoveryConfig, SensitivityConfig, load_study  # noqa: E402
from autoprune.deliver.vs_uniform import compare_at, uniform_baseline  # noqa: E402
from autoprune.engine.allocation import TOLERANCE  # noqa: E402
from autoprune.engine.ask_tell import records  # noqa: E402
from autoprune.engine.backends.optuna_backend import run_search  # noqa: E402
from autoprune.engine.context import StudyContext, prepare  # noqa: E402
from autoprune.engine.knapsack import sensitivity_allocation  # noqa: E402
from autoprune.engine.rebuild import rebuild  # noqa: E402
from autoprune.engine.record import TrialRecord, heads  # noqa: E402
from autoprune.engine.sensitivity import scan  # noqa: E402
from autoprune.engine.storage import front, get_record, load_optuna_study  # noqa: E402
from autoprune.engine.warm_start import global_at, global_prune  # noqa: E402
from autoprune.metrics.costs import accuracy, correct, count_macs  # noqa: E402
from autoprune.metrics.latency import paired_latency  # noqa: E402
from autoprune.metrics.mcnemar import decode_hits, encode_hits, paired  # noqa: E402
from autoprune.pareto import accuracy_at, hypervolume_2d  # noqa: E402
from autoprune.pruning.saving import load_pruned  # noqa: E402
from autoprune.pruning.structural import prune_with_plan  # noqa: E402
from autoprune.train.distill import finetune, recalibrate_bn  # noqa: E402
from autoprune.train.teacher_stream import build_stream  # noqa: E402

TARGETS = (1.5, 2.0, 3.0)
BATCH = 128
FORWARD = 1 / 3  # a forward-only image, in training images
STUDY = ROOT / "studies" / "cifar10_resnet20_targets.yaml"
RANDOM_OVERRIDES = {"sampler.name": "random", "fidelity.promote_steps": 0, "recovery.steps": 0}  # its BN-only screen


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def refuse(msg: str) -> NoReturn:
    """Bad input: one line naming what was wrong, and exit code 2, as argparse refuses a bad flag."""
    print(f"{Path(sys.argv[0]).name}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


# ------------------------------------------------------------------------------------------------------ compute
def lineage_cost(r: TrialRecord, bn_batches: int, batch: int, latency_images: int) -> float:
    """Training-image units a candidate's trials spent: BN re-calibration, latency and MACs forwards and every
    rung's evaluation at 1/3, its fine-tune steps at 1."""
    evals = sum(int(n or 0) for n in r.fidelity.images.values())
    forwards = bn_batches * batch + latency_images + evals
    return forwards * FORWARD + r.fidelity.steps * batch


def spent(ctx: StudyContext, recs: list[TrialRecord]) -> float:
    """What a study's completed candidates spent (each lineage once); failed trials are counted separately."""
    cfg = ctx.study.config
    lat = (cfg.measure.latency_repeats + cfg.measure.latency_warmup + 1) * cfg.measure.latency_batch_size
    return sum(lineage_cost(r, cfg.recovery.bn_recalibration_batches, cfg.recovery.batch_size, lat)
               for r in heads(recs) if r.completed)


def search_until(ctx: StudyContext, budget: float, chunk: int, name: str) -> tuple[list[TrialRecord], float, int]:
    """Run the study's search in chunks of trials until it has spent ``budget``; (records, spent, failed)."""
    n, used = 0, 0.0
    while used < budget:
        n += chunk
        outcome = run_search(ctx, n_trials=n, log=log)
        recs = records(outcome.study)
        used = spent(ctx, recs)
        log(f"{name}: {len(recs)} trials, {used:,.0f} / {budget:,.0f} image units")
    failed = sum(1 for t in outcome.study.get_trials(deepcopy=False) if t.state.name == "FAIL")
    return recs, used, failed


# ------------------------------------------------------------------------------------------------------ methods
def autoprune_picks(ctx: StudyContext) -> dict[float, TrialRecord]:
    """What ``autoprune select`` offers: each target's best candidate on the default front (one rung)."""
    from autoprune.engine.storage import load_optuna_study

    ost = load_optuna_study(ctx.study)
    return {float(get_record(ost, e["trial"]).plan.target): get_record(ost, e["trial"]) for e in front(ost)}


def eagle_picks(ctx: StudyContext, rctx: StudyContext, recs: list[TrialRecord], budget: float, top: int,
                seed: int) -> tuple[dict[float, dict], float]:
    """EagleEye's second half: per target, the ``top`` candidates by adaptive-BN score share ``budget`` as KD
    fine-tune; the best on the whole validation half wins. Returns ({target: chosen}, units spent)."""
    per = max(1, int((budget / (len(TARGETS) * top) - len(ctx.data.val) * FORWARD) // BATCH))
    stream = build_stream(ctx.base, ctx.data.train, per, BATCH, True, seed + 2)
    picks, used = {}, 0.0
    for t in TARGETS:
        ranked = sorted((r for r in recs if r.completed and r.plan.target == t),
                        key=lambda r: (-r.fidelity.scores[0], r.number))[:top]
        tuned = []
        for r in ranked:
            model = load_pruned(r.model_file, copy.deepcopy(ctx.base)).to(ctx.device)
            for p in model.parameters():
                p.requires_grad_(True)
            finetune(model, ctx.data.train, steps=per, settings=_kd(), teacher=ctx.base, stream=stream)
            model.eval()
            tuned.append((accuracy(model, ctx.data.val, 500), r))
            used += per * BATCH + len(ctx.data.val) * FORWARD
            log(f"random_adaptive_bn @ {t}x: trial {r.number} (BN score {r.fidelity.scores[0]:.4f}) -> val "
                f"{tuned[-1][0]:.4f} after {per} steps")
        if tuned:
            acc, r = max(tuned, key=lambda p: p[0])
            picks[t] = {"record": r, "val_after_finetune": acc, "finetune_steps": per}
    return picks, used


def _kd() -> RecoveryConfig:
    return RecoveryConfig(batch_size=BATCH, lr=0.01, temperature=4.0, alpha=0.9)


# ------------------------------------------------------------------------------------------------ final recovery
def fingerprint(model) -> str:
    """Same structure and same kept weights -> same final recovery (it is deterministic): computed once."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def final_recovery(ctx: StudyContext, model, stream, steps: int, cache: dict) -> dict:
    """The recovery every chosen model gets; its figures on the reporting half (cached by fingerprint)."""
    key = (fingerprint(model), steps)
    if key in cache:
        return dict(cache[key])
    model = model.to(ctx.device)
    for p in model.parameters():
        p.requires_grad_(True)
    recalibrate_bn(model, ctx.data.train, 20, BATCH, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    finetune(model, ctx.data.train, steps=steps, settings=_kd(), teacher=ctx.base, stream=stream)
    ft = time.perf_counter() - t0
    model.eval()
    right = correct(model, ctx.data.test, 500)  # kept per image: methods compared image by image (McNemar)
    out = {"accuracy": int(right.sum()) / max(1, len(right)), "test_hits": encode_hits(right.tolist()),
           "test_images": len(right),
           "val_accuracy": accuracy(model, ctx.data.val, 500),
           "macs": count_macs(model, ctx.example), "final_steps": steps, "finetune_s": round(ft, 1), "_model": model}
    cache[key] = out
    return dict(out)


def paired_speedups(base, models: list, x: torch.Tensor, repeats: int = 15) -> list[dict]:
    """Each model timed paired with the base (:func:`autoprune.metrics.latency.paired_latency`, eager torch with
    BatchNorm folded): its ms, the speed-up 1 / (median paired ratio), the dispersion and whether it is reliable."""
    out = []
    for m in models:
        r = paired_latency(m, base, x, repeats=repeats, warmup=2)
        out.append({"latency_ms": round(r.ms, 3), "speedup": round(r.speedup, 4),
                    "latency_dispersion": round(r.dispersion, 4), "latency_reliable": r.reliable})
    return out


# ------------------------------------------------------------------------------------------------------ summary
def acc_at(points: list[dict], t: float) -> float | None:
    """Accuracy at exactly ``t``: the point within TOLERANCE of ``t`` if there is one, else the method's points
    interpolated in log-reduction (:func:`autoprune.pareto.accuracy_at`, the same tolerance), else None."""
    near = [p["accuracy"] for p in points if abs(p["macs_reduction"] / t - 1) <= TOLERANCE]
    if near:
        return max(near)
    at = accuracy_at([(p["accuracy"], p["macs_reduction"]) for p in points], t, slack=TOLERANCE)
    return round(at, 6) if at is not None else None


def paired_against(methods: dict[str, dict], reference: str = "random_adaptive_bn") -> dict[str, dict]:
    """Per method and target, the method's pick against ``reference``'s on the same test images: accuracies,
    discordant counts and McNemar's exact p (points without per-image results are left out)."""
    def hits(name: str, t: float) -> list[bool] | None:
        p = next((p for p in methods.get(name, {}).get("points", []) if p["target"] == t), None)
        return decode_hits(p["test_hits"], p["test_images"]) if p and "test_hits" in p else None

    out: dict[str, dict] = {}
    for name in methods:
        if name == reference:
            continue
        for t in TARGETS:
            a, b = hits(name, t), hits(reference, t)
            if a is not None and b is not None:
                out.setdefault(name, {})[f"{t:g}"] = paired(a, b).to_dict()
    return out


def summarise(points: list[dict], base_macs: float, compute: float) -> dict:
    for p in points:
        p["macs_reduction"] = round(base_macs / p["macs"], 4)
    hv = hypervolume_2d([(p["accuracy"], p["macs"] / base_macs) for p in points], ref=(0.1, 1.0))
    # over the targets' range only: a point reducing MACs beyond the largest target counts at that target
    hv_t = hypervolume_2d([(p["accuracy"], max(p["macs"] / base_macs, 1 / max(TARGETS))) for p in points],
                          ref=(0.1, 1.0))
    at = {f"{t:g}": acc_at(points, t) for t in TARGETS}
    best = {f"{t:g}": max([p["accuracy"] for p in points if p["macs_reduction"] >= t * (1 - TOLERANCE)],
                          default=None) for t in TARGETS}
    return {"hypervolume": round(hv, 6), "hypervolume_within_targets": round(hv_t, 6), "acc_at": at,
            "best_acc_at": best, "acc_at_interpolated": at, "compute_images": round(compute), "points": points}


# ------------------------------------------------------------------------------------------------------ the run
def load(args, name: str, workdir: Path, extra: dict | None = None):
    """The shipped study with this run's model, data, seed and thread count (one work folder per study)."""
    overrides = {"name": name, "seed": args.seed, "workdir": str(workdir / name), "model.name": args.model,
                 "model.checkpoint": str(Path(args.checkpoint).resolve()), "data.root": str(Path(args.data_root).resolve()),
                 "data.seed": args.seed, "measure.threads": args.threads, **(extra or {})}
    return load_study(args.study, overrides)


def uniform_placed(ctx: StudyContext, target: float) -> tuple[float, object]:
    """Uniform L1 pruning at ``target``: every block's weight equal, placed by autoprune's bisection with its
    one-channel nudges (a single ratio alone misses the targets by up to 2 %: channel counts are discrete), so it
    lands within TOLERANCE like every other method (the same structure as autoprune's uniform warm start)."""
    params = {f"alloc.{g}": ctx.study.space.allocation.high for g in ctx.groups} | {"target": target}
    plan = ctx.decode(params)
    model = prune_with_plan(ctx.base, ctx.example, plan.ratios, "l1", layout=ctx.layout,
                            round_to=ctx.study.space.fixed_round_to)[0]
    return statistics.mean(plan.ratios.values()), model


def baselines(ctx: StudyContext) -> tuple[dict[str, dict[float, tuple[float, object]]], float]:
    """uniform_l1 (placed), tp_global_l1 (torch-pruning's global pruning bisected on its ratio) and
    sensitivity_knapsack (below) per target; and the image units the knapsack's scan spent."""
    scan_result, units = sensitivity_scan(ctx)
    return {"uniform_l1": {t: uniform_placed(ctx, t) for t in TARGETS},
            "tp_global_l1": {t: _global(ctx, t) for t in TARGETS},
            "sensitivity_knapsack": {t: knapsack_placed(ctx, scan_result, t) for t in TARGETS}}, units


SCAN = SensitivityConfig(ratios=[0.25, 0.5, 0.75, 0.9], eval_images=1000)


def sensitivity_scan(ctx: StudyContext) -> tuple[dict, float]:
    """Each block pruned alone (L1) at SCAN's ratios and scored after the study's BN re-calibration on 1,000
    validation images (rung 0's measurement); returns the scan and the image units it spent."""
    rec = ctx.study.config.recovery
    result = scan(ctx.base, ctx.example, ctx.layout, ctx.data, SCAN, "l1", rec.bn_recalibration_batches,
                  rec.batch_size, ctx.study.config.seed)
    per = rec.bn_recalibration_batches * rec.batch_size + min(SCAN.eval_images, len(ctx.data.val))
    return result, len(ctx.groups) * len(SCAN.ratios) * per * FORWARD


def knapsack_placed(ctx: StudyContext, scanned: dict, target: float) -> tuple[float, object]:
    """Sensitivity under a budget (AIMET's greedy selection, ModelOpt's FastNAS): the allocation with the least
    predicted accuracy drop at ``target`` (engine/knapsack.py), its shape then placed within TOLERANCE."""
    ratios = sensitivity_allocation(scanned["scores"], scanned["base"], target, ctx.reduction, ctx.bounds)
    top = max(ratios.values()) or 1.0
    placed = ctx.place({g: max(r / top, 1e-3) for g, r in ratios.items()}, target).ratios
    model = prune_with_plan(ctx.base, ctx.example, placed, "l1", layout=ctx.layout,
                            round_to=ctx.study.space.fixed_round_to)[0]
    return statistics.mean(placed.values()), model


def _global(ctx: StudyContext, target: float) -> tuple[float, object]:
    """torch-pruning's global Group-L1 pruning at the ratio bisected to ``target`` (warmstart.global_at)."""
    ratio, _ = global_at(ctx, target)
    return ratio, global_prune(ctx, ratio)


def reuse_final(args, ctx: StudyContext, bis: dict, stream, steps: int, cache: dict) -> None:
    """Fill ``cache`` with the baselines' final recoveries from an earlier run (``--reuse-final``).

    The final recovery is deterministic at a fixed thread count, so a baseline with the same structure, seed,
    stream and steps has the same figures. Reused only when the earlier run's settings, ratios and MACs all match
    and one model recomputed here (uniform_l1 at the first target) gives its accuracies to the last digit;
    otherwise nothing is reused (the recomputed model is kept)."""
    old = json.loads(Path(args.reuse_final).read_text())
    same = {k: (old["budget"].get(k), v) for k, v in (("model", args.model), ("seed", args.seed), ("threads",
            args.threads), ("final_epochs", args.final_epochs), ("device", args.device))}
    if any(a != b for a, b in same.values()):
        refuse(f"--reuse-final {args.reuse_final}: another run's settings {same}")
    stored = {(m, p["target"]): p for m in bis if m in old["methods"] for p in old["methods"][m]["points"]}
    for (name, t), p in stored.items():
        ratio, model = bis[name][t]
        if round(ratio, 4) != p["ratio"] or count_macs(model, ctx.example) != p["macs"]:
            refuse(f"--reuse-final: {name} @ {t}x differs from the earlier run's (ratio {ratio:.4f}, MACs)")
    first = ("uniform_l1", TARGETS[0])
    check = final_recovery(ctx, copy.deepcopy(bis[first[0]][first[1]][1]), stream, steps, cache)
    got = (check["accuracy"], check["val_accuracy"])
    want = (stored[first]["accuracy"], stored[first]["val_accuracy"])
    if got != want:  # another code path or machine: every model is recovered here
        log(f"--reuse-final: {first} recomputed gives {got}, the earlier run {want}: nothing reused")
        return
    log(f"--reuse-final: {first} recomputed = the earlier run's {want}; the other baselines are reused")
    for (name, t), p in stored.items():
        model = bis[name][t][1]
        keep = {k: p[k] for k in ("accuracy", "val_accuracy", "macs", "final_steps", "finetune_s")}
        cache.setdefault((fingerprint(model), steps), {**keep, "reused_from": Path(args.reuse_final).name,
                                                       "_model": model})


def extra_kd_rows(ctx: StudyContext, bis: dict, search_used: float, final_steps: int, seed: int,
                  cache: dict) -> tuple[dict, dict]:
    """``--extra-kd``: the two baselines' models given one target's share of the search's compute as more KD steps
    in their final recovery (the same stream, longer), so a reader sees whether searching beats fine-tuning longer.
    Their points per method, and the compute each spent beyond the final recovery."""
    extra = final_steps + int(search_used / len(TARGETS) // BATCH)
    long_stream = build_stream(ctx.base, ctx.data.train, extra, BATCH, True, seed + 1)
    rows, spent_by = {}, {}
    for name in bis:
        rows[f"{name}+search_budget_as_kd"] = [
            {**final_recovery(ctx, bis[name][t][1], long_stream, extra, cache), "target": t} for t in TARGETS]
        spent_by[f"{name}+search_budget_as_kd"] = (extra - final_steps) * BATCH * len(TARGETS)
        log(f"{name}+search_budget_as_kd: " + ", ".join(f"{p['target']:g}x {p['accuracy']:.4f}"
                                                      for p in rows[f"{name}+search_budget_as_kd"]))
    return rows, spent_by


def earlier_run(args, flag: str) -> dict:
    """The earlier run a ``--*-of`` mode completes: its JSON, refused when it is another model or device; its seed,
    threads and final epochs become this run's."""
    path = getattr(args, flag.lstrip("-").replace("-", "_"))
    old = json.loads(Path(path).read_text())
    b = old["budget"]
    if b["model"] != args.model or b["device"] != args.device:
        refuse(f"{flag} {path}: a {b['model']} run on {b['device']}, not {args.model} on {args.device}")
    args.seed, args.threads, args.final_epochs = b["seed"], b["threads"], b["final_epochs"]
    torch.set_num_threads(args.threads)
    return old


def extra_kd_of(args) -> None:
    """``--extra-kd-of JSON``: only the ``--extra-kd`` rows for an earlier run (its seed, threads, final epochs and
    the compute its search spent), beside that run's own baselines and search, written to ``--out``."""
    old = earlier_run(args, "--extra-kd-of")
    b = old["budget"]
    t0 = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="autoprune-bench-"))
    ctx = prepare(load(args, f"bench_{args.model}_extra_kd", workdir), args.device)
    bis, _ = baselines(ctx)
    for name in bis:  # the same structures as the earlier run's, or the rows would answer another question
        for p in old["methods"].get(name, {}).get("points", []):
            if round(bis[name][p["target"]][0], 4) != p["ratio"]:
                refuse(f"--extra-kd-of: {name} @ {p['target']:g}x is not the earlier run's structure")
    final_steps = int(args.final_epochs * (50000 // BATCH))
    rows, spent_by = extra_kd_rows(ctx, bis, old["methods"]["autoprune"]["compute_images"], final_steps,
                                   args.seed, {})
    pts = [p for r in rows.values() for p in r]
    x = torch.randn(BATCH, *ctx.example.shape[1:])
    for p, lat in zip(pts, paired_speedups(ctx.base, [p.pop("_model") for p in pts], x)):
        p.update(lat)
    base_macs = old["base"]["macs"]
    out = {"budget": {**b, "extra_kd_of": str(args.extra_kd_of), "date": time.strftime("%Y-%m-%d")},
           "base": old["base"],
           "methods": {m: old["methods"][m] for m in ("autoprune", "uniform_l1", "tp_global_l1", "random_adaptive_bn")}
           | {m: summarise(r, base_macs, spent_by[m]) for m, r in rows.items()},
           "wall_s": round(time.perf_counter() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    table(out)


def knapsack_of(args) -> None:
    """``--knapsack-of JSON``: the sensitivity_knapsack rows for an earlier run that lacks them (its seed, threads
    and final epochs, the same final-recovery stream), beside that run's rows, written to ``--out``. uniform_l1 at
    the first target is recomputed too and both figures logged: equal when this machine's arithmetic is the
    earlier run's."""
    old = json.loads(Path(args.knapsack_of).read_text())
    b = old["budget"]
    args.seed, args.threads, args.final_epochs, args.model = b["seed"], b["threads"], b["final_epochs"], b["model"]
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="autoprune-bench-"))
    ctx = prepare(load(args, f"bench_{args.model}_knapsack", workdir), args.device)
    scanned, units = sensitivity_scan(ctx)
    final_steps = int(args.final_epochs * (50000 // BATCH))
    stream = build_stream(ctx.base, ctx.data.train, final_steps, BATCH, True, args.seed + 1)
    cache: dict = {}
    check = final_recovery(ctx, uniform_placed(ctx, TARGETS[0])[1], stream, final_steps, cache)
    stored = next(p for p in old["methods"]["uniform_l1"]["points"] if p["target"] == TARGETS[0])
    log(f"uniform_l1 @ {TARGETS[0]:g}x recomputed: test {check['accuracy']:.4f}, the earlier run's {stored['accuracy']:.4f}")
    points = []
    for t in TARGETS:
        ratio, model = knapsack_placed(ctx, scanned, t)
        points.append({**final_recovery(ctx, model, stream, final_steps, cache), "target": t, "ratio": round(ratio, 4)})
        log(f"sensitivity_knapsack @ {t:g}x: test {points[-1]['accuracy']:.4f}")
    x = torch.randn(BATCH, *ctx.example.shape[1:])
    for p, lat in zip(points, paired_speedups(ctx.base, [p.pop("_model") for p in points], x)):
        p.update(lat)
    out = {**old, "budget": {**b, "knapsack_added": time.strftime("%Y-%m-%d"),
                             "knapsack_check_uniform_1.5": [check["accuracy"], stored["accuracy"]]},
           "methods": {**old["methods"], "sensitivity_knapsack": summarise(points, old["base"]["macs"], units)},
           "knapsack_scan": scanned, "knapsack_wall_s": round(time.perf_counter() - t0, 1)}
    out["paired_vs_random"] = paired_against(out["methods"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    table(out)


def run_methods(args, ctx: StudyContext, rctx: StudyContext, budget: float) -> tuple[dict, dict]:
    """Every method's chosen models after the final recovery, and what the searches spent."""
    bis, scan_units = baselines(ctx)
    log("baselines bisected: " + "; ".join(f"{n} {[round(r, 4) for r, _ in v.values()]}" for n, v in bis.items()))
    steps_per_epoch = 50000 // BATCH
    final_steps = int(args.final_epochs * steps_per_epoch)
    stream = build_stream(ctx.base, ctx.data.train, final_steps, BATCH, True, args.seed + 1)
    cache: dict = {}
    if args.reuse_final:
        reuse_final(args, ctx, bis, stream, final_steps, cache)
    ap_recs, ap_used, ap_failed = search_until(ctx, budget, 2, "autoprune")
    ap = autoprune_picks(ctx)
    rnd_recs, rnd_screen, rnd_failed = search_until(rctx, ap_used / 2, 4, "random_adaptive_bn screening")
    eagle, rnd_tune = eagle_picks(ctx, rctx, rnd_recs, ap_used - rnd_screen, args.eagle_top, args.seed)
    methods: dict[str, list[dict]] = {m: [] for m in ("autoprune", "uniform_l1", "tp_global_l1", "random_adaptive_bn",
                                                      "sensitivity_knapsack")}
    for t in TARGETS:
        for name in bis:
            ratio, model = bis[name][t]
            methods[name].append({**final_recovery(ctx, model, stream, final_steps, cache), "target": t,
                                  "ratio": round(ratio, 4)})
        if t in ap:
            methods["autoprune"].append(autoprune_point(ctx, ap[t], ap_recs, stream, final_steps, cache))
        if t in eagle:
            r = eagle[t]["record"]
            methods["random_adaptive_bn"].append({**final_recovery(ctx, rebuild(rctx, r)[0], stream, final_steps, cache),
                                                  "target": t, "trial": r.number, "bn_score": r.fidelity.scores[0],
                                                  "val_after_finetune": eagle[t]["val_after_finetune"],
                                                  "ratios": r.plan.ratios})
        for name, pts in methods.items():
            if pts and pts[-1]["target"] == t:
                log(f"{name} @ {t}x: test {pts[-1]['accuracy']:.4f}, {ctx.reference['macs'] / pts[-1]['macs']:.3f}x")
    spent_by = {"autoprune": ap_used, "random_adaptive_bn": rnd_screen + rnd_tune, "uniform_l1": 0.0,
                "tp_global_l1": 0.0, "sensitivity_knapsack": scan_units}
    if args.extra_kd:
        rows, spent_kd = extra_kd_rows(ctx, bis, ap_used, final_steps, args.seed, cache)
        methods |= rows
        spent_by |= spent_kd
    studies = {"autoprune": _study_summary(ap_recs, ap_used, ap_failed),
               "random_adaptive_bn": {**_study_summary(rnd_recs, rnd_screen, rnd_failed), "finetune_units": rnd_tune,
                                      "top_per_target": args.eagle_top}}
    return methods, {"spent": spent_by, "studies": studies}


def autoprune_point(ctx: StudyContext, r: TrialRecord, recs: list[TrialRecord], stream, steps: int,
                    cache: dict) -> dict:
    """autoprune's pick at its target after the final recovery, with what the search knew of it."""
    t = r.plan.target
    vs = compare_at(r, uniform_baseline(heads(recs), t)) if r.warm_start != "uniform" else None
    return {**final_recovery(ctx, rebuild(ctx, r)[0], stream, steps, cache), "target": t, "trial": r.number,
            "warm_start": r.warm_start, "rung": r.fidelity.steps, "search_val_accuracy": r.metrics.accuracy,
            "ratios": r.plan.ratios, "vs_uniform_on_validation": vs}


def recover_again(args, ctx: StudyContext, old: dict, stream, steps: int, cache: dict) -> dict[str, list[dict]]:
    """The earlier run's random-search and autoprune picks (rebuilt from its studies in ``--earlier-studies``) and
    uniform L1, given the final recovery again on this code, so that every row compared was recovered alike (the
    other baselines, far behind, are left in ``earlier_methods``). Each rebuilt pick must have the earlier MACs."""
    folder = Path(args.earlier_studies)
    out: dict[str, list[dict]] = {"uniform_l1": []}
    for t in TARGETS:
        ratio, model = uniform_placed(ctx, t)
        out["uniform_l1"].append({**final_recovery(ctx, model, stream, steps, cache), "target": t,
                                  "ratio": round(ratio, 4)})
    for method, name, extra in (("random_adaptive_bn", "random", RANDOM_OVERRIDES), ("autoprune", "autoprune", None)):
        earlier = copy.copy(args)
        earlier.study = str(STUDY)  # the shipped study the earlier run searched with
        ectx = prepare(load(earlier, f"bench_{args.model}_{name}", folder, extra), args.device,
                       measure_reference=False, recovery_stream=False)
        ost = load_optuna_study(ectx.study)
        key = method if method != "autoprune" else "autoprune_earlier"
        out[key] = []
        for p in old["methods"][method]["points"]:
            model = rebuild(ectx, get_record(ost, p["trial"]))[0]
            if count_macs(model, ctx.example) != p["macs"]:
                sys.exit(f"{method} @ {p['target']:g}x rebuilt has other MACs than the earlier run's pick")
            keep = {k: p[k] for k in ("trial", "ratios", "warm_start") if k in p}
            out[key].append({**final_recovery(ctx, model, stream, steps, cache), "target": p["target"], **keep,
                             "earlier_accuracy": p["accuracy"]})
    for m, pts in out.items():
        log(f"{m} recovered again: " + ", ".join(f"{p['target']:g}x {p['accuracy']:.4f}" for p in pts))
    return out


def autoprune_of(args) -> None:
    """``--autoprune-of JSON``: only autoprune's search, run with ``--study`` (another configuration of it), for an
    earlier run's seed, threads, budget and final epochs; the earlier run's other rows are kept and its autoprune
    row moves to ``autoprune_earlier``. Random search's row was searched with the earlier autoprune's spend, so both
    spends are written. With ``--earlier-studies`` the earlier picks and uniform L1 are recovered again here
    (:func:`recover_again`); without, the run is refused unless uniform_l1 at the first target, recovered here,
    gives the earlier run's figures to the digit."""
    old = earlier_run(args, "--autoprune-of")
    b = old["budget"]
    missing = [n for n in ("random", "autoprune") if args.earlier_studies
               and not (Path(args.earlier_studies) / f"bench_{args.model}_{n}" / "study.db").is_file()]
    if missing:  # before minutes of preparation and recovery, not after
        refuse(f"--earlier-studies {args.earlier_studies}: no bench_{args.model}_{missing[0]}/study.db")
    t0 = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="autoprune-bench-"))
    if workdir.exists() and any(workdir.iterdir()):
        refuse(f"--workdir {workdir} is not empty (one work folder per run)")
    ctx = prepare(load(args, f"bench_{args.model}_autoprune", workdir), args.device)
    final_steps = int(args.final_epochs * (50000 // BATCH))
    stream = build_stream(ctx.base, ctx.data.train, final_steps, BATCH, True, args.seed + 1)
    cache: dict = {}
    check = final_recovery(ctx, uniform_placed(ctx, TARGETS[0])[1], stream, final_steps, cache)
    stored = next(p for p in old["methods"]["uniform_l1"]["points"] if p["target"] == TARGETS[0])
    same = (check["accuracy"], check["val_accuracy"]) == (stored["accuracy"], stored["val_accuracy"])
    log(f"uniform_l1 @ {TARGETS[0]:g}x recovered here: {check['accuracy']:.4f}, the earlier run "
        f"{stored['accuracy']:.4f}")
    if not same and not args.earlier_studies:
        refuse(f"--autoprune-of: uniform_l1 @ {TARGETS[0]:g}x recovered here gives {check['accuracy']:.4f}, the "
               f"earlier run {stored['accuracy']:.4f}: another code path or machine, the rows would not compare "
               f"(give --earlier-studies, the earlier run's two studies, to recover its picks again here)")
    # one model recovered alike does not show that every other one is (benchmark v6, seeds 2 and 3: 5 of 18 models
    # came out the same on two commits, the rest up to 0.36 points apart): given the studies, recover them all here
    same = same and not args.earlier_studies
    again = {} if same else recover_again(args, ctx, old, stream, final_steps, cache)
    recs, used, failed = search_until(ctx, b["budget_images"], 2, "autoprune")
    points = [autoprune_point(ctx, r, recs, stream, final_steps, cache) for r in autoprune_picks(ctx).values()]
    for p in points:
        log(f"autoprune @ {p['target']:g}x: test {p['accuracy']:.4f} (trial {p['trial']}, {p['warm_start']})")
    x = torch.randn(BATCH, *ctx.example.shape[1:])
    timed = points + [p for pts in again.values() for p in pts]
    for p, lat in zip(timed, paired_speedups(ctx.base, [p.pop("_model") for p in timed], x)):
        p.update(lat)
    compute = {m: r["compute_images"] for m, r in old["methods"].items()}
    kept = {m: r for m, r in old["methods"].items() if m != "autoprune"}
    methods = ({**kept, "autoprune_earlier": old["methods"]["autoprune"]} if same else
               {m: summarise(pts, old["base"]["macs"], compute[m.removesuffix("_earlier")]) for m, pts in again.items()})
    out = {**old, "budget": {**b, "autoprune_of": Path(args.autoprune_of).name, "study": str(args.study),
                             "autoprune_date": time.strftime("%Y-%m-%d"), "recovered_again": not same},
           "methods": {"autoprune": summarise(points, old["base"]["macs"], used), **methods},
           **({} if same else {"earlier_methods": old["methods"]}),
           "autoprune": _study_summary(recs, used, failed), "autoprune_earlier": old["autoprune"],
           "spend_vs_random": {"autoprune": round(used), "earlier_autoprune": old["autoprune"]["units"],
                               "random_adaptive_bn": old["methods"]["random_adaptive_bn"]["compute_images"]},
           "autoprune_wall_s": round(time.perf_counter() - t0, 1)}
    out["paired_vs_random"] = paired_against(out["methods"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    table(out)


def _study_summary(recs: list[TrialRecord], used: float, failed: int) -> dict:
    from autoprune.engine.status import cost_summary

    rungs = sorted({s for r in recs for s in r.fidelity.scores})
    return {"trials": len(recs), "candidates": len(heads(recs)), "failed": failed, "units": round(used),
            "reached": {str(k): sum(k in r.fidelity.scores for r in heads(recs)) for k in rungs},
            "cost": cost_summary(recs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["resnet20", "resnet56"], default="resnet20")
    ap.add_argument("--checkpoint")
    ap.add_argument("--data-root")
    ap.add_argument("--budget-epochs", type=float, default=5.0, help="search compute, in epochs of 50,000 images")
    ap.add_argument("--final-epochs", type=float, default=1.0, help="KD epochs every chosen model gets at the end")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out")
    ap.add_argument("--study", default=str(STUDY), help="the autoprune study to run (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, fixed for the whole run")
    ap.add_argument("--eagle-top", type=int, default=2, help="random search: candidates fine-tuned per target")
    ap.add_argument("--extra-kd", action="store_true", help="add the baselines given the search budget as KD")
    ap.add_argument("--workdir", help="keep the studies here (default: a new temporary folder)")
    ap.add_argument("--plot", help="also draw the points to this PNG (needs matplotlib)")
    ap.add_argument("--reuse-final", metavar="JSON", help="take the uniform and global baselines' final recoveries "
                    "from this earlier run of the same seed and settings (checked by recomputing one)")
    ap.add_argument("--extra-kd-of", metavar="JSON", help="only the --extra-kd rows for this earlier run (its seed, "
                    "threads, final epochs and search compute), with its other rows, to --out")
    ap.add_argument("--knapsack-of", metavar="JSON", help="only the sensitivity_knapsack rows for this earlier run "
                    "(its seed, threads and final epochs), added to its rows in --out")
    ap.add_argument("--autoprune-of", metavar="JSON", help="only autoprune's search, with --study, for this earlier "
                    "run (its seed, threads, budget and final epochs), beside its other rows, to --out")
    ap.add_argument("--earlier-studies", metavar="DIR", help="with --autoprune-of: the earlier run's two studies "
                    "(its --workdir, or its studies archive extracted), to recover its picks again on this code")
    ap.add_argument("--aggregate", nargs="+", metavar="JSON", help="only print the mean and spread of saved runs "
                    "(with --plot: draw them, every seed and the mean with its standard deviation, per target)")
    args = ap.parse_args()
    def require(*names: str) -> None:
        missing = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n)]
        if missing:
            ap.error(f"the following arguments are required: {', '.join(missing)}")

    if args.extra_kd_of:
        require("checkpoint", "data_root", "out")
        extra_kd_of(args)
        return
    if args.knapsack_of:
        require("checkpoint", "data_root", "out")
        knapsack_of(args)
        return
    if args.autoprune_of:
        require("checkpoint", "data_root", "out")
        autoprune_of(args)
        return
    if args.aggregate:
        print(aggregate(args.aggregate))
        if args.plot:
            plot_aggregate([json.loads(Path(f).read_text()) for f in args.aggregate], Path(args.plot))
        return
    require("checkpoint", "data_root", "out")
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="autoprune-bench-"))
    if workdir.exists() and any(workdir.iterdir()):
        ap.error(f"--workdir {workdir} is not empty (one work folder per run)")
    ctx = prepare(load(args, f"bench_{args.model}_autoprune", workdir), args.device)
    rctx = prepare(load(args, f"bench_{args.model}_random", workdir, RANDOM_OVERRIDES), args.device)
    budget = args.budget_epochs * 50000
    base = ctx.reference
    log(f"base: val {base['accuracy']:.4f}, MACs {base['macs']:,}; budget {budget:,.0f} image units")
    methods, spent = run_methods(args, ctx, rctx, budget)
    everything = [p for pts in methods.values() for p in pts]
    x = torch.randn(BATCH, *ctx.example.shape[1:])
    for p, lat in zip(everything, paired_speedups(ctx.base, [p.pop("_model") for p in everything], x)):
        p.update(lat)
    out = {"budget": {"model": args.model, "budget_epochs": args.budget_epochs, "final_epochs": args.final_epochs,
                      "budget_images": budget, "seed": args.seed, "threads": args.threads, "device": args.device,
                      "tolerance": TOLERANCE, "study": str(args.study), "eagle_top": args.eagle_top,
                      "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, torch "
                                 f"{torch.__version__}", "date": time.strftime("%Y-%m-%d")},
           "base": {"val_accuracy": base["accuracy"], "test_accuracy": accuracy(ctx.base, ctx.data.test, 500),
                    "macs": base["macs"]},
           "methods": {m: summarise(p, base["macs"], spent["spent"].get(m, 0.0)) for m, p in methods.items()},
           **spent["studies"], "wall_s": round(time.perf_counter() - t_all, 1)}
    out["paired_vs_random"] = paired_against(out["methods"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    if args.plot:
        plot(out, Path(args.plot))
    table(out)


def table(out: dict) -> None:
    print(f"{'method':34s} {'HV<=3x':>8s} " + " ".join(f"{'@' + format(t, 'g') + 'x':>8s}" for t in TARGETS)
          + f" {'compute':>10s}")
    for m, r in out["methods"].items():
        accs = " ".join(f"{(r['acc_at'][format(t, 'g')] or math.nan) * 100:8.2f}" for t in TARGETS)
        print(f"{m:34s} {r['hypervolume_within_targets']:8.4f} {accs} {r['compute_images']:10,d}")
    print(f"wall {out['wall_s']:.0f} s")


def _pct(x: float | None) -> float | None:
    return None if x is None else x * 100


def aggregate(paths: list[str]) -> str:
    """A markdown table over several runs (seeds): per method, the mean and sample standard deviation of the
    accuracy at each target, of the hypervolume within the targets and of the compute spent, and the mean gap
    to the best baseline at each target, per run (+: above it)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    methods = list(dict.fromkeys(m for r in runs for m in r["methods"]))  # a method some runs lack: n= shows it
    keys = [f"{t:g}" for t in TARGETS]

    def ms(values: list) -> str:
        v = [x for x in values if x is not None]
        if not v:
            return "-"
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        return f"{statistics.mean(v):.2f} ± {sd:.2f}" if len(v) == len(values) else f"{statistics.mean(v):.2f} (n={len(v)})"

    def best_baseline(run: dict, k: str) -> float | None:
        vals = [run["methods"][m]["acc_at"][k] for m in ("uniform_l1", "tp_global_l1", "random_adaptive_bn",
                                                          "sensitivity_knapsack") if m in run["methods"]]
        vals = [v for v in vals if v is not None]
        return max(vals) if vals else None

    lines = ["| method | " + " | ".join(f"@{k}x (%)" for k in keys) + " | HV<=3x | compute (image units) |",
             "|---|" + "---:|" * (len(keys) + 2)]
    for m in methods:
        rows = [r["methods"].get(m) for r in runs]
        accs = [ms([_pct(x["acc_at"][k]) if x else None for x in rows]) for k in keys]
        hv = ms([x["hypervolume_within_targets"] * 100 if x else None for x in rows])
        comp = statistics.mean(x["compute_images"] for x in rows if x)
        lines.append(f"| {m} | " + " | ".join(accs) + f" | {hv} (x100) | {comp:,.0f} |")
    gaps = []
    for k in keys:
        per = []
        for r in runs:
            a, b = r["methods"]["autoprune"]["acc_at"][k], best_baseline(r, k)
            per.append(None if a is None or b is None else (a - b) * 100)
        gaps.append(f"{k}x: " + ", ".join("-" if g is None else f"{g:+.2f}" for g in per) + f" (mean {ms(per)})")
    return "\n".join(lines) + "\n\nautoprune minus the best baseline, per seed, points: " + "; ".join(gaps)


def plot(results: dict, path: Path) -> None:
    """Test accuracy against MACs reduction for every method's points, with the targets marked (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoprune.files import atomic_write

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (name, r), marker in zip(results["methods"].items(), "o^sDvx"):
        pts = sorted((p["macs_reduction"], p["accuracy"] * 100) for p in r["points"])
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=marker, label=name)
    for t in TARGETS:
        ax.axvline(t, color="0.85", lw=0.8, zorder=0)
    b = results["budget"]
    ax.set(xlabel="MACs reduction (base / pruned)", ylabel="test accuracy, reporting half (%)",
           title=f"{b['model']}: {b['budget_epochs']:g} search epochs, {b['final_epochs']:g} final KD, seed {b['seed']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def plot_aggregate(runs: list[dict], path: Path) -> None:
    """Test accuracy at each target over several runs (seeds), per method: every seed as a small mark, the mean
    with one sample standard deviation as a bar; one panel per target, so each y axis shows its own spread (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoprune.files import atomic_write

    methods = list(dict.fromkeys(m for r in runs for m in r["methods"]))  # a method some runs lack: n= shows it
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(3.0 * len(TARGETS), 3.6), dpi=120)
    for ax, t in zip(axes, TARGETS):
        for i, m in enumerate(methods):
            v = [r["methods"][m]["acc_at"][f"{t:g}"] for r in runs if m in r["methods"]]
            v = [a * 100 for a in v if a is not None]
            if not v:
                continue
            ax.plot([i] * len(v), v, "o", ms=3, alpha=0.45, color=f"C{i}")
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            ax.errorbar(i + 0.18, statistics.mean(v), yerr=sd, fmt="s", color=f"C{i}", capsize=3)
        ax.set_xticks(range(len(methods)), [m.replace("_", "\n", 1) for m in methods], fontsize=7)
        ax.set_title(f"@{t:g}x fewer MACs", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy, reporting half (%)")
    b = runs[0]["budget"]
    fig.suptitle(f"{b['model']}: {len(runs)} seeds ({', '.join(str(r['budget']['seed']) for r in runs)}), "
                 f"mean ± sd", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
