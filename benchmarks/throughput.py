"""Trial throughput of the quickstart: 1 vs 2 Optuna workers (one torch thread each), and Ray's per-trial overhead.

Usage: python benchmarks/throughput.py [--study studies/quickstart.yaml] [--trials 24] [--repeats 3]

Each configuration runs the real CLI (`autoprune search ...`) on a fresh study in a temporary folder that shares
one cached base model, interleaved across repeats so machine noise hits every configuration alike. Throughput is
trials per hour over the span from the first trial's start to the last trial's end (process start-up excluded,
reported separately as the command's wall time).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from autoprune.engine.record import TrialRecord

CONFIGS = {
    "optuna, 1 worker x 1 thread": ["--workers", "1"],
    "optuna, 2 workers x 1 thread": ["--workers", "2"],
    "ray (local), 1 trial at a time x 1 cpu": ["--backend", "ray", "--workers", "1", "--cpus-per-trial", "1"],
}


def run(study: str, workdir: Path, trials: int, extra: list[str]) -> dict[str, float]:
    db = workdir / "study.db"
    if db.exists():
        db.unlink()
    shutil.rmtree(workdir / "models", ignore_errors=True)
    cmd = [sys.executable, "-m", "autoprune.cli", "search", study, "--n-trials", str(trials),
           "--set", f"workdir={workdir}", "--set", "measure.threads=1", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    name = Path(study).stem
    done = [t for t in optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials
            if t.state == optuna.trial.TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    busy = statistics.median(TrialRecord.from_frozen(t).timings["total"] for t in done)
    return {"trials_per_hour": len(done) / span * 3600, "span_s": span, "wall_s": wall, "trial_s": busy,
            "complete": len(done)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="studies/quickstart.yaml")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="apbench") as tmp:
        work = Path(tmp) / "w"
        # Train and cache the base model once, outside the timings.
        run(args.study, work, 1, ["--workers", "1"])
        results: dict[str, list[dict[str, float]]] = {k: [] for k in CONFIGS}
        for _ in range(args.repeats):
            for label, extra in CONFIGS.items():
                results[label].append(run(args.study, work, args.trials, extra))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; study {args.study}, {args.trials} trials, "
          f"{args.repeats} repeats (medians)")
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    print(f"{'configuration':<42} {'trials/h':>9} {'span s':>8} {'wall s':>8} {'trial s':>8}")
    for label, m in med.items():
        print(f"{label:<42} {m['trials_per_hour']:9.0f} {m['span_s']:8.1f} {m['wall_s']:8.1f} {m['trial_s']:8.2f}")
    one, two = med["optuna, 1 worker x 1 thread"], med["optuna, 2 workers x 1 thread"]
    ray = med["ray (local), 1 trial at a time x 1 cpu"]
    print(f"2 workers / 1 worker throughput: {two['trials_per_hour'] / one['trials_per_hour']:.2f}x")
    per_trial = (ray["span_s"] - one["span_s"]) / args.trials
    print(f"Ray per-trial overhead vs the Optuna backend: {per_trial * 1000:.0f} ms "
          f"(span {ray['span_s']:.1f} s vs {one['span_s']:.1f} s); command wall {ray['wall_s']:.1f} s vs {one['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
