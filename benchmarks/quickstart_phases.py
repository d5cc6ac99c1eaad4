"""Run the quickstart study from scratch and print its wall time split by phase.

Usage: python benchmarks/quickstart_phases.py [--study studies/quickstart.yaml] [--repeats 1]

Each repeat uses a fresh temporary study folder, so base training is included. Phases: base training (and data
loading), and over all trials: pruning, recovery (BN re-calibration + distillation fine-tune), measurement
(validation accuracy + MACs/params/latency); "search overhead" is the rest (sampler, storage).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch

from autoprune.config import load_study
from autoprune.engine.ask_tell import records
from autoprune.engine.backends.optuna_backend import run_search
from autoprune.engine.context import prepare
from autoprune.engine.storage import front


def one_run(study_file: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        study = load_study(study_file, {"workdir": tmp})
        t0 = time.perf_counter()
        ctx = prepare(study, "cpu")
        t_prepare = time.perf_counter() - t0
        t1 = time.perf_counter()
        outcome = run_search(ctx, n_trials=study.config.budget.n_trials, storage_url=study.storage_url,
                             study_name=study.study_name)
        t_search = time.perf_counter() - t1
        trials = [r for r in records(outcome.study) if r.timings]
        tot = lambda *keys: sum(r.timings.get(k, 0.0) for r in trials for k in keys)  # noqa: E731
        phases = {
            "base training + data + reference": t_prepare,
            "pruning": tot("prune"),
            "recovery (BN calibration + fine-tune)": tot("bn_calibration", "finetune"),
            "measurement (accuracy + MACs/params/latency)": tot("evaluate", "measure"),
        }
        phases["search overhead (sampler, storage)"] = t_search - tot("total")
        phases["total"] = t_prepare + t_search
        base = ctx.reference
        fr = front(outcome.study)
        half = [e for e in fr if e["macs"] <= base["macs"] / 2 and e["accuracy"] >= base["accuracy"] - 0.02]
        phases["_trials"] = outcome.completed
        phases["_front"] = len(fr)
        phases["_half_macs_within_2pts"] = len(half)
        return phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="studies/quickstart.yaml")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    runs = [one_run(args.study) for _ in range(args.repeats)]
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"study: {args.study}, repeats: {args.repeats} (medians)")
    for key in runs[0]:
        med = statistics.median(r[key] for r in runs)
        if key.startswith("_"):
            print(f"{key[1:]:<46} {med:g}")
        else:
            share = 100 * med / statistics.median(r["total"] for r in runs)
            print(f"{key:<46} {med:8.2f} s  {share:5.1f} %")


if __name__ == "__main__":
    main()
