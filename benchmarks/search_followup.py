"""What a `search_vs_baselines.py` run's two searches say beyond its table (issue 24's benchmark v5 diagnostics).

Reads the run's JSON and the studies its ``--workdir`` kept (``bench_<model>_autoprune``, ``bench_<model>_random``;
or the two study databases a run's ``v5_<model>_seed<N>_studies.tar.gz`` keeps, extracted into a new folder: the
pruned models are then rebuilt from their recorded plans) and writes one JSON with the sections asked for:

  candidates  every candidate of both searches: target, placed ratios, MACs, its score at every rung reached, warm
              start or not (kept so that later analyses need neither the study files nor the pruned models)
  curves      per target, the best rung-0 score so far against the number of rung-0 evaluations, both searches (both
              score rung 0 on the same 1,000 validation images); with ``--plot`` drawn to a PNG
  rescore     each search's 5 best candidates per target by rung-0 score, rebuilt, given the same BN re-calibration
              (checked: the rung-0 score comes back to the digit) and scored on the reporting half of the test split,
              5,000 images neither search saw: does the rung-0 leader stay ahead, or was it lucky on its subset?
  oracle      (``--oracle N``) per target, the N best allocations by rung-0 score pooled from both searches, plus every
              method's pick, each given the run's identical final recovery (the same stream and steps: one pick is
              recomputed and must give the run's figure to the digit); the oracle is the best on the reporting half
              (a ceiling: the maximum of noisy figures), and each method's share of the headroom between uniform L1
              and the oracle
  longer      (``--longer-epochs E``) every method's pick given E epochs of the same final recovery instead of the
              run's one (for information: does the ordering survive a longer fine-tune?), paired against random
              search on the same test images (McNemar)

Usage:
  python benchmarks/search_followup.py RUN.json --workdir runs/v5/w2 --checkpoint ../shared/weights/cifar10-resnet/resnet20.pt \\
      --data-root ../shared/datasets/cifar10 --out benchmarks/results/v5_resnet20_seed2_followup.json \\
      [--oracle 10] [--plot curves.png] [--longer-epochs 5 --methods autoprune random_adaptive_bn uniform_l1]
  python benchmarks/search_followup.py --aggregate RUN.json FOLLOWUP.json DIAGNOSTICS.json [RUN.json ...] \
      [--plot curves.png]      (markdown over several seeds; DIAGNOSTICS from allocation_breadth.py --diagnostics)
  python benchmarks/search_followup.py --oracle-table RUN.json FOLLOWUP.json [RUN.json FOLLOWUP.json ...]
A run made with ``search_vs_baselines.py --autoprune-of`` also needs ``--earlier-studies DIR``, the earlier run's
two studies: its autoprune candidates join the oracle's pool and its pick gets a share (``autoprune_earlier``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_vs_baselines as bench  # noqa: E402

from autoprune.engine.ask_tell import records  # noqa: E402
from autoprune.engine.context import StudyContext, prepare  # noqa: E402
from autoprune.engine.rebuild import rebuild  # noqa: E402
from autoprune.engine.record import TrialRecord, heads  # noqa: E402
from autoprune.engine.storage import load_optuna_study  # noqa: E402
from autoprune.metrics.costs import correct  # noqa: E402
from autoprune.metrics.mcnemar import decode_hits, paired  # noqa: E402
from autoprune.train.distill import recalibrate_bn  # noqa: E402
from autoprune.train.teacher_stream import build_stream  # noqa: E402

SEARCHES = ("autoprune", "random_adaptive_bn")
log = bench.log


# ------------------------------------------------------------------------------------------------ pure summaries
def best_so_far(scores: list[float]) -> list[float]:
    """The running maximum of ``scores`` in the order they were evaluated.

    >>> best_so_far([0.2, 0.1, 0.5, 0.4])
    [0.2, 0.2, 0.5, 0.5]
    """
    out, best = [], float("-inf")
    for s in scores:
        best = max(best, s)
        out.append(best)
    return out


def headroom_share(method: float, uniform: float, oracle: float) -> float | None:
    """The share of the gap between uniform pruning and the oracle that ``method`` closes (None when the oracle
    is not above uniform: no headroom to share).

    >>> headroom_share(0.86, 0.84, 0.87), headroom_share(0.83, 0.84, 0.87), headroom_share(0.9, 0.9, 0.9)
    (0.6667, -0.3333, None)
    """
    gap = oracle - uniform
    return round((method - uniform) / gap, 4) if gap > 0 else None


def pool(candidates: list[dict], target: float, n: int) -> list[dict]:
    """The ``n`` best distinct allocations at ``target`` by rung-0 score, pooled over the searches (ties: the
    earlier trial first).

    >>> c = [{"target": 2.0, "rung0": s, "ratios": {"a": r}, "search": m, "number": i}
    ...      for i, (s, r, m) in enumerate([(0.5, 0.1, "x"), (0.7, 0.2, "y"), (0.7, 0.2, "x"), (0.6, 0.3, "x")])]
    >>> [(d["search"], d["number"]) for d in pool(c, 2.0, 2)]
    [('y', 1), ('x', 3)]
    """
    seen, out = set(), []
    for c in sorted((c for c in candidates if c["target"] == target), key=lambda c: (-c["rung0"], c["number"])):
        key = tuple(sorted((g, round(r, 4)) for g, r in c["ratios"].items()))
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out[:n]


# ------------------------------------------------------------------------------------------------ the studies
def contexts(run: dict, args) -> dict[str, StudyContext]:
    """Both searches' studies as the run prepared them (its seed, model, data and threads)."""
    b = run["budget"]
    ns = SimpleNamespace(seed=b["seed"], model=b["model"], checkpoint=args.checkpoint, data_root=args.data_root,
                         threads=b["threads"], study=b.get("study") or str(bench.STUDY))
    torch.set_num_threads(b["threads"])
    workdir = Path(args.workdir)
    studies = [("autoprune", workdir, "autoprune", None, ns),
               ("random_adaptive_bn", workdir, "random", bench.RANDOM_OVERRIDES, ns)]
    if "autoprune_earlier" in run["methods"]:  # an --autoprune-of run: the earlier search's candidates join the pool
        if not args.earlier_studies:
            bench.refuse(f"{args.run} re-searched autoprune over an earlier run: give that run's studies, "
                         "--earlier-studies DIR")
        studies.append(("autoprune_earlier", Path(args.earlier_studies), "autoprune", None,
                        SimpleNamespace(**{**vars(ns), "study": str(bench.STUDY)})))
    for _, folder, name, _, _ in studies:
        if not (folder / f"bench_{b['model']}_{name}" / "study.db").is_file():
            bench.refuse(f"{folder}: no bench_{b['model']}_{name}/study.db")
    return {search: prepare(bench.load(spec, f"bench_{b['model']}_{name}", folder, extra), b["device"],
                            measure_reference=False, recovery_stream=False)
            for search, folder, name, extra, spec in studies}


def lineages(ctx: StudyContext) -> list[tuple[TrialRecord, TrialRecord]]:
    """(first trial, head) of every completed candidate, by trial number: the first holds the rung-0 model's plan
    and seed, the head every rung's score."""
    recs = records(load_optuna_study(ctx.study))
    by_number = {r.number: r for r in recs}
    out = []
    for head in heads(recs):
        if not head.completed or head.plan is None or head.plan.target is None or 0 not in head.fidelity.scores:
            continue
        first = head
        while first.continues is not None:
            first = by_number[first.continues]
        out.append((first, head))
    return sorted(out, key=lambda p: p[0].number)


def candidates(ctxs: dict[str, StudyContext]) -> list[dict]:
    out = []
    for search, ctx in ctxs.items():
        for first, head in lineages(ctx):
            out.append({"search": search, "number": first.number, "head": head.number, "target": head.plan.target,
                        "warm_start": head.warm_start, "ratios": {g: round(r, 5) for g, r in head.plan.ratios.items()},
                        "macs": head.metrics.macs, "rung0": head.fidelity.scores[0],
                        "scores": {str(k): v for k, v in sorted(head.fidelity.scores.items())}})
    return out


def curves(cands: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per target and search, the best rung-0 score so far after each rung-0 evaluation (warm starts included:
    they were evaluated too)."""
    out: dict[str, dict[str, list[float]]] = {}
    for c in sorted(cands, key=lambda c: c["number"]):
        out.setdefault(f"{c['target']:g}", {}).setdefault(c["search"], []).append(c["rung0"])
    return {t: {s: best_so_far(v) for s, v in per.items()} for t, per in out.items()}


def rung0_model(ctx: StudyContext, first: TrialRecord):
    """The candidate as its rung-0 trial scored it: its structure with the base weights, BN re-calibrated with the
    trial's settings and seed."""
    model = rebuild(ctx, first)[0].to(ctx.device)
    rec = first.plan.recovery_settings(ctx.study.config.recovery)
    torch.manual_seed(first.plan.seed)
    gen = torch.Generator().manual_seed(first.plan.seed)
    recalibrate_bn(model, ctx.data.train, rec.bn_recalibration_batches, rec.batch_size, generator=gen)
    return model.eval()


def rescore(ctxs: dict[str, StudyContext], top: int = 5) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for search, ctx in ctxs.items():
        ranked: dict[float, list] = {}
        for first, head in lineages(ctx):
            ranked.setdefault(head.plan.target, []).append((head.fidelity.scores[0], first))
        for t, v in sorted(ranked.items()):
            rows = []
            for score, first in sorted(v, key=lambda p: (-p[0], p[1].number))[:top]:
                model = rung0_model(ctx, first)
                again = float(correct(model, ctx.short_val, 500).float().mean())
                unseen = float(correct(model, ctx.data.test, 500).float().mean())
                rows.append({"number": first.number, "rung0": score, "rung0_again": round(again, 6),
                             "unseen": round(unseen, 6)})
                log(f"rescore {search} @ {t:g}x: trial {first.number} rung 0 {score:.4f} (again {again:.4f}), "
                    f"unseen {unseen:.4f}")
            out.setdefault(search, {})[f"{t:g}"] = {
                "top": rows, "rung0_mean": round(statistics.mean(r["rung0"] for r in rows), 4),
                "unseen_mean": round(statistics.mean(r["unseen"] for r in rows), 4),
                "unseen_best": max(r["unseen"] for r in rows), "leader_unseen": rows[0]["unseen"]}
    return out


# ------------------------------------------------------------------------------------------------ the oracle
def oracle(run: dict, ctxs: dict[str, StudyContext], cands: list[dict], n: int) -> dict:
    ctx = ctxs["autoprune"]
    b = run["budget"]
    steps = int(b["final_epochs"] * (50000 // bench.BATCH))
    stream = build_stream(ctx.base, ctx.data.train, steps, bench.BATCH, True, b["seed"] + 1)
    picks = {m: {p["target"]: p for p in r["points"]} for m, r in run["methods"].items()}
    check_pick = picks["autoprune"][bench.TARGETS[-1]]
    first = {(s, n): f for s, c in ctxs.items() for f, h in lineages(c) for n in (f.number, h.number)}  # by either
    got = bench.final_recovery(ctx, rebuild(ctx, first[("autoprune", check_pick["trial"])])[0], stream, steps, {})
    log(f"oracle check: autoprune's {bench.TARGETS[-1]:g}x pick recovered again: test {got['accuracy']:.4f}, "
        f"the run's {check_pick['accuracy']:.4f}")
    if got["accuracy"] != check_pick["accuracy"]:
        sys.exit("the final recovery here does not reproduce the run's: another commit, thread count or machine")
    out: dict = {"pool_size": n, "final_steps": steps, "check": [got["accuracy"], check_pick["accuracy"]],
                 "targets": {}}
    for t in bench.TARGETS:
        picked = {(m, p.get("trial")) for m, per in picks.items() if m in ctxs and (p := per.get(t))}
        rows = []
        for c in pool(cands, t, n):
            if (c["search"], c["number"]) in picked or (c["search"], c["head"]) in picked:
                continue  # a method's pick: its figures are the run's own, below
            model = rebuild(ctxs[c["search"]], first[(c["search"], c["number"])])[0]
            r = bench.final_recovery(ctx, model, stream, steps, {})
            rows.append({"search": c["search"], "number": c["number"], "rung0": c["rung0"],
                         "test": r["accuracy"], "val": r["val_accuracy"],
                         "reduction": round(run["base"]["macs"] / r["macs"], 4)})
            log(f"oracle @ {t:g}x: {c['search']} trial {c['number']} (rung 0 {c['rung0']:.4f}) -> test "
                f"{r['accuracy']:.4f}, val {r['val_accuracy']:.4f}")
        for m, per in picks.items():
            if (p := per.get(t)) is not None and abs(p["macs_reduction"] / t - 1) <= bench.TOLERANCE:
                rows.append({"search": m, "number": p.get("trial"), "pick": True, "test": p["accuracy"],
                             "val": p["val_accuracy"], "reduction": p["macs_reduction"]})
        best = max(rows, key=lambda r: r["test"])
        by_val = max(rows, key=lambda r: r["val"])
        uniform = picks["uniform_l1"][t]["accuracy"]
        out["targets"][f"{t:g}"] = {
            "rows": rows, "oracle": best["test"], "oracle_from": [best["search"], best["number"]],
            "val_selected": by_val["test"], "uniform": uniform,
            "share": {m: headroom_share(p["accuracy"], uniform, best["test"]) for m, per in picks.items()
                      if (p := per.get(t)) is not None and abs(p["macs_reduction"] / t - 1) <= bench.TOLERANCE}}
        log(f"oracle @ {t:g}x: {best['test']:.4f} ({best['search']} {best['number']}); shares "
            + ", ".join(f"{m} {s}" for m, s in out["targets"][f'{t:g}']["share"].items()))
    return out


# ------------------------------------------------------------------------------------------------ longer recovery
def picked_models(run: dict, ctxs: dict[str, StudyContext], methods: list[str]) -> dict[tuple[str, float], object]:
    """Every method's pick per target as the run recovered it: the searches' picks rebuilt from their studies,
    the hand-set baselines placed again (checked: each has the run's MACs)."""
    ctx = ctxs["autoprune"]
    heads_to_first = {(s, h.number): f for s, c in ctxs.items() for f, h in lineages(c)}
    hand = bench.baselines(ctx)[0] if set(methods) - set(ctxs) else {}
    out = {}
    for m in methods:
        for p in run["methods"][m]["points"]:
            t = p["target"]
            model = (rebuild(ctxs[m], heads_to_first[(m, p["trial"])])[0] if m in ctxs
                     else copy.deepcopy(hand[m][t][1]))
            if (macs := bench.count_macs(model, ctx.example)) != p["macs"]:
                sys.exit(f"{m} @ {t:g}x rebuilt has {macs:,} MACs, the run's pick {p['macs']:,}")
            out[(m, t)] = model
    return out


def longer(run: dict, ctxs: dict[str, StudyContext], epochs: float, methods: list[str]) -> dict:
    ctx = ctxs["autoprune"]
    steps = int(epochs * (50000 // bench.BATCH))
    stream = build_stream(ctx.base, ctx.data.train, steps, bench.BATCH, True, run["budget"]["seed"] + 1)
    found: dict[str, dict] = {}
    for (m, t), model in picked_models(run, ctxs, methods).items():
        r = bench.final_recovery(ctx, model, stream, steps, {})
        r.pop("_model")
        one = next(p["accuracy"] for p in run["methods"][m]["points"] if p["target"] == t)
        found.setdefault(m, {})[f"{t:g}"] = {"accuracy": r["accuracy"], "one_epoch": one,
                                             "val_accuracy": r["val_accuracy"], "test_hits": r["test_hits"],
                                             "test_images": r["test_images"], "finetune_s": r["finetune_s"]}
        log(f"longer: {m} @ {t:g}x after {epochs:g} epochs: test {r['accuracy']:.4f} (one epoch {one:.4f})")
    if "random_adaptive_bn" in found:
        ref = found["random_adaptive_bn"]
        for m, per in found.items():
            for t, row in per.items():
                if m != "random_adaptive_bn" and t in ref:
                    row["vs_random"] = paired(decode_hits(row["test_hits"], row["test_images"]),
                                              decode_hits(ref[t]["test_hits"], ref[t]["test_images"])).to_dict()
    return {"epochs": epochs, "steps": steps, "methods": found}


# ------------------------------------------------------------------------------------------------ over seeds
def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.mean(v) if v else None


def _f(x: float | None, scale: float = 100, digits: int = 2) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}"


def oracle_table(seeds: list[tuple[dict, dict]], keys: list[str]) -> list[str]:
    """The oracle's markdown table over seeds, each given as (run JSON, follow-up JSON): per target the means of
    uniform L1, the oracle, the row the validation half would pick, the pooled allocations' own mean, and each
    method's pick with its share of the headroom (of the means; per seed in brackets)."""
    methods = [m for m in seeds[0][0]["methods"] if m != "uniform_l1" and m in seeds[0][1]["oracle"]["targets"][
        keys[-1]]["share"]]
    lines = [f"Oracle ceiling ({len(seeds)} seeds: {', '.join(str(r['budget']['seed']) for r, _ in seeds)}; the "
             f"{seeds[0][1]['oracle']['pool_size']} best allocations per target by rung-0 score pooled over the "
             "searches, plus every pick): the best after the identical final recovery, test %, and each method's "
             "pick with its share of the headroom over uniform L1 (of the means; per seed in brackets)", "",
             "| target | uniform | oracle | oracle picked on val | pooled, mean | "
             + " | ".join(f"{m} (share)" for m in methods) + " |", "|---|---:|---:|---:|---:|" + "---:|" * len(methods)]
    for k in keys:
        o = [f["oracle"]["targets"][k] for _, f in seeds]
        u, orc = _mean(x["uniform"] for x in o), _mean(x["oracle"] for x in o)
        pooled = _mean(_mean(row["test"] for row in x["rows"] if not row.get("pick")) for x in o)
        cells = []
        for m in methods:
            pick = _mean(r["methods"][m]["acc_at"][k] for r, _ in seeds)
            per = " ".join("-" if x["share"].get(m) is None else f"{x['share'][m]:.2f}" for x in o)
            cells.append(f"{_f(pick)} ({_f(headroom_share(pick, u, orc), 1)}; {per})")
        lines.append(f"| {k}x | {_f(u)} | {_f(orc)} | {_f(_mean(x['val_selected'] for x in o))} | {_f(pooled)} | "
                     + " | ".join(cells) + " |")
    return lines


def aggregate(triples: list[tuple[dict, dict, dict]]) -> str:
    """Markdown tables over seeds, each seed given as (run JSON, follow-up JSON, allocation_breadth diagnostics):
    the best rung-0 score so far, the top 5 re-scored on unseen images, the oracle's headroom, the spread per
    phase, the surrogate's and the rungs' rank agreement, and the compute per method and phase (means)."""
    keys = [f"{t:g}" for t in bench.TARGETS]
    lines = [f"Seeds {', '.join(str(r['budget']['seed']) for r, _, _ in triples)}; means over them.", "",
             "Best rung-0 score so far (same 1,000 validation images), % : autoprune after all its rung-0 evaluations"
             " (n), random search after as many, and after all of its own (n)", "",
             "| target | autoprune (n) | random at autoprune's n | random, all (n) |", "|---|---:|---:|---:|"]
    for k in keys:
        a, r_same, r_all, na, nr = [], [], [], [], []
        for _, f, _ in triples:
            ca, cr = f["curves"][k]["autoprune"], f["curves"][k]["random_adaptive_bn"]
            a.append(ca[-1]), r_same.append(cr[min(len(ca), len(cr)) - 1]), r_all.append(cr[-1])
            na.append(len(ca)), nr.append(len(cr))
        lines.append(f"| {k}x | {_f(_mean(a))} ({_mean(na):.0f}) | {_f(_mean(r_same))} | {_f(_mean(r_all))} "
                     f"({_mean(nr):.0f}) |")
    lines += ["", "Each search's top 5 by rung-0 score, re-scored after the same BN re-calibration on the 5,000-image"
              " reporting half neither search saw, %", "",
              "| target | search | top-5 rung 0 | top-5 unseen | leader unseen | best of 5 unseen |",
              "|---|---|---:|---:|---:|---:|"]
    for k in keys:
        for s in SEARCHES:
            rows = [f["rescore"][s][k] for _, f, _ in triples if f.get("rescore")]
            if rows:
                lines.append(f"| {k}x | {s} | {_f(_mean(r['rung0_mean'] for r in rows))} | "
                             f"{_f(_mean(r['unseen_mean'] for r in rows))} | "
                             f"{_f(_mean(r['leader_unseen'] for r in rows))} | "
                             f"{_f(_mean(r['unseen_best'] for r in rows))} |")
    with_oracle = [(r, f) for r, f, _ in triples if f.get("oracle")]
    if with_oracle:
        lines += ["", *oracle_table(with_oracle, keys)]
    lines += ["", "autoprune's diagnostics (allocation_breadth.py --diagnostics): median spread (CV of the placed "
              "ratios) of its warm starts, screen and surrogate phases, random search's median spread, the "
              "surrogate's held-out Kendall tau, and rung 0 against rung 20 (tau, share of pairs reversed)", "",
              "| target | warm | screen | surrogate | random | surrogate tau | rung0-rung20 tau | reversed |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k in keys:
        ph, rnd, sur, tau, rev = [], [], [], [], []
        for _, _, d in triples:
            ap = next(v for f, v in d.items() if f.rstrip("/").endswith("_autoprune"))
            rd = next(v for f, v in d.items() if f.rstrip("/").endswith("_random"))
            ph.append(ap["spread_by_phase"].get(k, {})), rnd.append(rd["targets"][k]["median_spread"])
            sur.append(ap["surrogate_holdout_tau"].get(k))
            rr = ap["rung0_vs_rung20"].get(k, {})
            tau.append(rr.get("kendall_tau")), rev.append(rr.get("reversed_pairs"))
        cells = [_f(_mean(p.get(x) for p in ph), 1) for x in ("warm", "screen", "model")]
        lines.append(f"| {k}x | " + " | ".join(cells) + f" | {_f(_mean(rnd), 1)} | {_f(_mean(sur), 1)} | "
                     f"{_f(_mean(tau), 1)} | {_f(_mean(rev), 1)} |")
    lines += ["", "Compute per method and phase (means; image units: a training image 1, a forward-only image 1/3)",
              "", "| method | trials | candidates | forward-only units (BN, scoring, latency) | fine-tune images | "
              "fine-tuned | taken further | trials' own clocks (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ap = [r["autoprune"] for r, _, _ in triples]
    rn = [r["random_adaptive_bn"] for r, _, _ in triples]
    lines.append(f"| autoprune | {_mean(a['trials'] for a in ap):.0f} | {_mean(a['candidates'] for a in ap):.0f} | "
                 f"{_mean(a['units'] - a['cost']['finetune_images'] for a in ap):,.0f} | "
                 f"{_mean(a['cost']['finetune_images'] for a in ap):,.0f} | "
                 f"{_mean(a['reached'].get('20', 0) for a in ap):.1f} (rung 20) | "
                 f"{_mean(a['reached'].get('100', 0) for a in ap):.1f} (rung 100) | "
                 f"{_mean(a['cost']['time_s']['total'] for a in ap):,.0f} |")
    lines.append(f"| random_adaptive_bn | {_mean(a['trials'] for a in rn):.0f} | "
                 f"{_mean(a['candidates'] for a in rn):.0f} | {_mean(a['units'] for a in rn):,.0f} | "
                 f"{_mean(a['finetune_units'] for a in rn):,.0f} | {_mean(a['top_per_target'] for a in rn) * 3:.0f} "
                 f"(the rest of the budget) | - | {_mean(a['cost']['time_s']['total'] for a in rn):,.0f} (screen) |")
    return "\n".join(lines)


def plot_mean_curves(followups: list[dict], path: Path, title: str) -> None:
    """The best-so-far curves averaged over seeds (each cut to the seeds' shortest), one panel per target."""
    found = {}
    for k in followups[0]["curves"]:
        found[k] = {}
        for s in SEARCHES:
            curves = [f["curves"][k][s] for f in followups]
            n = min(len(c) for c in curves)
            found[k][s] = [statistics.mean(c[i] for c in curves) for i in range(n)]
    plot_curves(found, path, title)


def plot_curves(found: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoprune.files import atomic_write

    targets = sorted(found, key=float)
    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3.4), dpi=120)
    for ax, t in zip(axes, targets):
        for i, (search, v) in enumerate(sorted(found[t].items())):
            ax.plot(range(1, len(v) + 1), [x * 100 for x in v], color=f"C{i}", label=search)
        ax.set(title=f"@{t}x fewer MACs", xlabel="rung-0 evaluations")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("best rung-0 score so far (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="?", help="the search_vs_baselines.py JSON")
    ap.add_argument("--workdir", help="the run's --workdir (its two studies)")
    ap.add_argument("--earlier-studies", help="for a run made with --autoprune-of: the earlier run's studies (its "
                    "autoprune candidates join the oracle's pool)")
    ap.add_argument("--checkpoint")
    ap.add_argument("--data-root")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--aggregate", nargs="+", type=Path, metavar="JSON", help="only the tables over seeds, from "
                    "triples: run JSON, its follow-up JSON, its allocation_breadth diagnostics JSON")
    ap.add_argument("--oracle-table", nargs="+", type=Path, metavar="JSON", help="only the oracle's table over seeds, "
                    "from pairs: run JSON, its follow-up JSON made with --oracle")
    ap.add_argument("--oracle", type=int, default=0, metavar="N", help="also the oracle over the N best per target "
                    "(N final recoveries per target, about 90 s each for ResNet-20 on 2 cores)")
    ap.add_argument("--top", type=int, default=5, help="candidates re-scored per search and target "
                    "(0: none)")
    ap.add_argument("--plot", type=Path, help="draw the best-so-far curves to this PNG")
    ap.add_argument("--longer-epochs", type=float, default=0, metavar="E", help="also every pick given E epochs of "
                    "final recovery (one recovery per method and target)")
    ap.add_argument("--methods", nargs="+", default=["autoprune", "random_adaptive_bn", "uniform_l1", "tp_global_l1",
                    "sensitivity_knapsack"], help="the methods --longer-epochs recovers again")
    args = ap.parse_args()
    if args.aggregate:
        if len(args.aggregate) % 3:
            ap.error("--aggregate takes triples: run JSON, follow-up JSON, diagnostics JSON per seed")
        loaded = [json.loads(p.read_text()) for p in args.aggregate]
        triples = [tuple(loaded[i:i + 3]) for i in range(0, len(loaded), 3)]
        print(aggregate(triples))
        if args.plot:
            plot_mean_curves([f for _, f, _ in triples], args.plot, f"best rung-0 score so far, mean of "
                             f"{len(triples)} seeds")
        return
    if args.oracle_table:
        loaded = [json.loads(p.read_text()) for p in args.oracle_table]
        if len(loaded) % 2 or not all(f.get("oracle") for f in loaded[1::2]):
            ap.error("--oracle-table takes pairs: run JSON, then its follow-up JSON made with --oracle")
        print("\n".join(oracle_table(list(zip(loaded[::2], loaded[1::2])), [f"{t:g}" for t in bench.TARGETS])))
        return
    missing = [f"--{n.replace('_', '-')}" for n in ("workdir", "checkpoint", "data_root", "out") if not getattr(args, n)]
    if args.run is None or missing:
        ap.error(f"the following arguments are required: {', '.join((['RUN'] if args.run is None else []) + missing)}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    run = json.loads(args.run.read_text())
    t0 = time.perf_counter()
    ctxs = contexts(run, args)
    cands = candidates(ctxs)
    out = {"run": args.run.name, "seed": run["budget"]["seed"], "candidates": cands, "curves": curves(cands),
           "rescore": rescore(ctxs, args.top) if args.top else None}
    if args.oracle:
        out["oracle"] = oracle(run, ctxs, cands, args.oracle)
    if args.longer_epochs:
        unknown = sorted(set(args.methods) - set(run["methods"]))
        if unknown:
            ap.error(f"--methods: {', '.join(unknown)} not in {args.run} (it has {', '.join(run['methods'])})")
        out["longer"] = longer(run, ctxs, args.longer_epochs, args.methods)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    if args.plot:
        plot_curves(out["curves"], args.plot, f"{run['budget']['model']} seed {run['budget']['seed']}: best rung-0 "
                    "score so far, same 1,000 validation images")
    log(f"wrote {args.out} in {out['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
