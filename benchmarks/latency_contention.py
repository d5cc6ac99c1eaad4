"""Latency under load: do the speed-ups a search records while every core is busy agree with an idle machine's?

Issue 13's target: with every core kept busy by another program, the speed-ups a quickstart search records
agree within 30 % with the same models' speed-ups measured on an idle machine.

1. *Loaded*: ``--load`` processes (default: one per core) spin in a tight loop while the study's search runs in
   this process (``--trials`` trials, a fresh study folder). Each trial records its paired speed-up
   (1 / ``metrics.latency_ratio``) and whether the measurement was reliable. For contrast, the speed-up an
   unpaired measurement would print: the base's reference time (taken once, at the start) over the trial's time.
2. *Idle*: the load stops; every trial's saved model is timed again paired with the base, ``--idle-repeats``
   pairs, on the same backend, batch size and threads: the reference speed-up.

Per trial: loaded / idle speed-up. Reported: the median and the worst of |loaded / idle - 1| over all trials and
over the reliable ones, how many are within 30 %, how many were flagged, and the same for the unpaired figure.
Run it on an otherwise idle machine (the idle phase needs one).

Usage:
  python benchmarks/latency_contention.py --study studies/quickstart.yaml --trials 24 \
      --out benchmarks/results/latency_contention.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.config import load_study  # noqa: E402
from autoprune.engine.ask_tell import records  # noqa: E402
from autoprune.engine.backends.optuna_backend import run_search  # noqa: E402
from autoprune.engine.context import prepare  # noqa: E402
from autoprune.metrics.latency import paired_latency  # noqa: E402
from autoprune.pruning.saving import load_pruned  # noqa: E402

WITHIN = 0.30


def _spin(stop) -> None:
    while not stop.is_set():
        for _ in range(100_000):
            pass


class Load:
    """``n`` processes, each keeping one core busy until :meth:`stop`."""

    def __init__(self, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._procs = [ctx.Process(target=_spin, args=(self._stop,), daemon=True) for _ in range(n)]

    def __enter__(self) -> Load:
        for p in self._procs:
            p.start()
        time.sleep(1.0)  # let them reach the loop
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for p in self._procs:
            p.join(10)
            if p.is_alive():
                p.terminate()


def agreement(loaded: list[float], idle: list[float]) -> dict:
    """How far ``loaded`` speed-ups are from ``idle`` ones: |loaded / idle - 1| per pair, summarised.

    >>> agreement([1.0, 2.4], [1.0, 2.0])["median_error"], agreement([1.0, 2.4], [1.0, 2.0])["within"]
    (0.1, 2)
    """
    errors = [abs(a / b - 1) for a, b in zip(loaded, idle)]
    if not errors:
        return {"n": 0, "median_error": None, "worst_error": None, "within": 0}
    return {"n": len(errors), "median_error": round(statistics.median(errors), 4),
            "worst_error": round(max(errors), 4), "within": sum(e <= WITHIN for e in errors)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "quickstart.yaml"))
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--load", type=int, default=os.cpu_count() or 1, help="spinning processes (default: one per core)")
    ap.add_argument("--idle-repeats", type=int, default=40, help="pairs per model in the idle measurement")
    ap.add_argument("--workdir", help="study folder (default: a temporary one)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.trials < 1 or args.load < 1 or args.idle_repeats < 1:
        ap.error("--trials, --load and --idle-repeats must be at least 1")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="latency_contention_"))
    study = load_study(args.study, {"workdir": str(workdir / "study"), "budget.n_trials": args.trials})
    m = study.config.measure

    t0 = time.time()
    with Load(args.load):
        ctx = prepare(study)  # the reference (base paired with itself) is taken under load too
        searched = run_search(ctx, n_trials=args.trials)
    loaded_s = time.time() - t0
    recs = [r for r in records(searched.study) if r.completed and r.metrics.latency_ratio]
    rows = []
    for r in recs:
        model = load_pruned(r.model_file, ctx.fresh_model()).eval()
        idle = paired_latency(model, ctx.latency_base, ctx.latency_input, args.idle_repeats, m.latency_warmup,
                              m.latency_backend)
        rows.append({"trial": r.number, "macs_reduction": round(ctx.reference["macs"] / r.metrics.macs, 3),
                     "loaded_speedup": round(1 / r.metrics.latency_ratio, 4),
                     "loaded_dispersion": r.metrics.latency_dispersion, "loaded_reliable": r.metrics.latency_reliable,
                     "unpaired_speedup": round(ctx.reference["latency_ms"] / r.metrics.latency_ms, 4),
                     "idle_speedup": round(1 / idle.ratio, 4), "idle_dispersion": round(idle.dispersion, 4),
                     "idle_reliable": idle.reliable})
    reliable = [x for x in rows if x["loaded_reliable"]]
    out = {
        "machine": {"platform": platform.platform(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")},
        "study": str(args.study), "trials": len(rows), "load_processes": args.load, "loaded_search_s": round(loaded_s, 1),
        "backend": m.latency_backend, "latency_batch_size": m.latency_batch_size, "within": WITHIN,
        "reference_dispersion_loaded": ctx.reference.get("latency_dispersion"),
        "paired_all": agreement([x["loaded_speedup"] for x in rows], [x["idle_speedup"] for x in rows]),
        "paired_reliable": agreement([x["loaded_speedup"] for x in reliable], [x["idle_speedup"] for x in reliable]),
        "flagged": len(rows) - len(reliable),
        "unpaired_all": agreement([x["unpaired_speedup"] for x in rows], [x["idle_speedup"] for x in rows]),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    for key in ("paired_all", "paired_reliable", "unpaired_all"):
        print(f"{key:16s} {out[key]}")
    print(f"flagged unreliable: {out['flagged']} of {len(rows)}; loaded search {loaded_s:.0f} s")


if __name__ == "__main__":
    main()
