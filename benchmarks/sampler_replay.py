"""Samplers replayed on a synthetic allocation landscape: breadth, and how close each gets to the optimum (v5).

Issue 24's replay, kept as a script: 9 groups (the blocks of a CIFAR ResNet-20), a MACs cost that falls with each
group's ratio in proportion to the group's share, three targets taking turns, and a score whose loss grows with
``sensitivity_g * ratio_g ** 2`` (a non-uniform optimum, most sensitive groups kept nearly whole, as random
search's 3x winners keep ``layer3.0``), observed with the binomial noise of 1,000 images. The uniform allocation
is enqueued at every target as a warm start, as autoprune does. Each sampler gets the same number of trials;
reported per sampler and target: the median coefficient of variation of the placed ratios (breadth), the true
score of the candidate the noisy scores pick, and its regret against the landscape's optimum.

No model is trained: seconds per seed, so the sampler's details can be chosen by measurement before a benchmark
seed spends 45 minutes. Usage:
  python benchmarks/sampler_replay.py --samplers allocation tpe random --seeds 0 1 2 3 4 --trials 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.config import SamplerConfig  # noqa: E402
from autoprune.engine.allocation import place  # noqa: E402
from autoprune.engine.allocation_sampler import Placing
from autoprune.engine.ask_tell import ask, enqueued_attrs  # noqa: E402
from autoprune.engine.record import Fidelity, Metrics, PlanRecord, TrialRecord  # noqa: E402
from autoprune.engine.samplers import make_sampler  # noqa: E402
from autoprune.engine.surrogate import coefficient_of_variation  # noqa: E402

GROUPS = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
SHARE = np.full(9, 0.9 / 9)  # each block's inner convolutions: 10 % of the MACs, the stem and shortcuts the rest
SENSITIVITY = np.array([0.4, 0.3, 0.3, 0.7, 0.5, 0.45, 2.2, 1.0, 0.7])  # layer3.0 most, stage 1 least
TARGETS = (1.5, 2.0, 3.0)
BOUNDS = {g: (0.0, 0.9) for g in GROUPS}
IMAGES = 1000


def reduction(ratios) -> float:
    r = np.array([ratios[g] for g in GROUPS])
    return 1.0 / (1.0 - float(SHARE @ r))


def true_score(ratios) -> float:
    """0.9 less a loss that grows with each group's ratio squared, weighted by its sensitivity: uniform pruning
    scores about 0.75 / 0.56 / 0.30 at 1.5x / 2x / 3x, as BN-only scores of the ResNet-20 roughly do."""
    r = np.array([ratios[g] for g in GROUPS])
    return 0.9 - 1.1 * float(SENSITIVITY @ r**2) / float(SENSITIVITY.sum())


def placed(weights, target: float) -> dict[str, float]:
    return place(weights, target, reduction, BOUNDS).ratios


def optimum(target: float, rng: np.random.Generator, n: int = 20000) -> float:
    """The landscape's best true score at ``target`` (weights proportional to 1 / sensitivity, refined by random
    local search)."""
    best_w = 1.0 / SENSITIVITY / np.max(1.0 / SENSITIVITY)
    best = true_score(placed(dict(zip(GROUPS, best_w)), target))
    for _ in range(n // 100):
        for w in np.clip(best_w * np.exp(rng.normal(0, 0.2, (100, 9))), 0, 1):
            s = true_score(placed(dict(zip(GROUPS, w)), target))
            if s > best:
                best, best_w = s, w
    return best


def run(sampler_name: str, seed: int, trials: int, screen: int) -> dict:
    dists = {f"alloc.{g}": FloatDistribution(0.0, 1.0) for g in GROUPS}
    placing = Placing(TARGETS, dists, placed, seed)
    sampler = make_sampler(SamplerConfig(name=sampler_name, n_startup_trials=screen), seed, placing)
    ost = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for t in TARGETS:  # the uniform warm start at every target, as autoprune enqueues it
        ost.enqueue_trial({f"alloc.{g}": 1.0 for g in GROUPS}, user_attrs=enqueued_attrs(t, "uniform"))
    rng = np.random.default_rng(seed + 10_000)
    rows = []
    for _ in range(trials * len(TARGETS) + len(TARGETS)):
        trial = ost.ask()
        asked = ask(trial, dists, TARGETS, seed)
        ratios = placed({g: asked.params[f"alloc.{g}"] for g in GROUPS}, asked.target)
        true = true_score(ratios)
        score = float(rng.binomial(IMAGES, np.clip(true, 0, 1)) / IMAGES)
        rec = TrialRecord(Metrics(score, int(1e6 / reduction(ratios)), 1000, 1.0),
                          PlanRecord("l1", ratios, target=asked.target), Fidelity({0: score}, {0: IMAGES}))
        for k, v in rec.to_user_attrs().items():
            trial.set_user_attr(k, v)
        ost.tell(trial, [score, rec.metrics.macs])
        rows.append({"target": asked.target, "warm": trial.user_attrs.get("warm_start") is not None,
                     "cv": coefficient_of_variation(np.array([ratios[g] for g in GROUPS])), "true": true,
                     "score": score, "number": trial.number})
    out = summarise(rows, screen)
    if hasattr(sampler, "denoised"):
        out["promotion"] = promotion(rows, sampler.denoised(ost))
    return out


def promotion(rows: list[dict], means: dict[int, float], eta: int = 4) -> dict:
    """Per target, the best ``1/eta`` of the model candidates ranked on the surrogate's mean and on their noisy
    score: the promoted set's mean true score under each ranking."""
    out = {}
    for t in TARGETS:
        mine = [r for r in rows if r["target"] == t and r["number"] in means]
        k = max(1, len(mine) // eta)
        by_mean = sorted(mine, key=lambda r: -means[r["number"]])[:k]
        by_score = sorted(mine, key=lambda r: -r["score"])[:k]
        out[str(t)] = {"promoted_true_by_mean": statistics.mean(r["true"] for r in by_mean),
                       "promoted_true_by_score": statistics.mean(r["true"] for r in by_score)}
    return out


def summarise(rows: list[dict], screen: int) -> dict:
    out = {}
    for t in TARGETS:
        mine = [r for r in rows if r["target"] == t and not r["warm"]]
        pick = max((r for r in rows if r["target"] == t), key=lambda r: r["score"])
        out[str(t)] = {"cv_screen": statistics.median(r["cv"] for r in mine[:screen]),
                       "cv_after": statistics.median(r["cv"] for r in mine[screen:]) if mine[screen:] else None,
                       "picked_true": pick["true"], "best_true": max(r["true"] for r in mine)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samplers", nargs="+", default=["allocation", "tpe", "random"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=40, help="trials per target (besides the warm starts)")
    ap.add_argument("--screen", type=int, default=12, help="n_startup_trials (per target for 'allocation')")
    ap.add_argument("--out")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rng = np.random.default_rng(0)
    optima = {str(t): optimum(t, rng) for t in TARGETS}
    results = {name: {s: run(name, s, args.trials, args.screen) for s in args.seeds} for name in args.samplers}
    print(f"{'sampler':<11} {'target':>6} {'cv screen':>9} {'cv after':>9} {'regret of pick':>15} {'best regret':>12}")
    for name, per_seed in results.items():
        for t in map(str, TARGETS):
            rows = [per_seed[s][t] for s in args.seeds]
            after = [r["cv_after"] for r in rows if r["cv_after"] is not None]
            print(f"{name:<11} {t:>6} {statistics.median(r['cv_screen'] for r in rows):>9.3f} "
                  f"{(statistics.median(after) if after else float('nan')):>9.3f} "
                  f"{100 * statistics.mean(optima[t] - r['picked_true'] for r in rows):>14.2f}p "
                  f"{100 * statistics.mean(optima[t] - r['best_true'] for r in rows):>11.2f}p")
    for name, per_seed in results.items():
        for t in map(str, TARGETS):
            rows = [per_seed[s]["promotion"][t] for s in args.seeds if "promotion" in per_seed[s]]
            if rows:
                print(f"{name:<11} {t:>6} promoted quarter's mean true score: ranked on the surrogate's mean "
                      f"{statistics.mean(r['promoted_true_by_mean'] for r in rows):.4f}, on the noisy score "
                      f"{statistics.mean(r['promoted_true_by_score'] for r in rows):.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"optima": optima, "results": results}, indent=1))


if __name__ == "__main__":
    main()
