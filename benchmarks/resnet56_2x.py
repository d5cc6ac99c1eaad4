"""ResNet-56 on CIFAR-10 at about 2x fewer MACs: a short search, the front's best trial under half the base MACs
(plus 5 %), a retrain within a stated CPU budget, and the test accuracy on the held-out half and the full test set.

Usage:
  python benchmarks/resnet56_2x.py --checkpoint ../shared/weights/cifar10-resnet/resnet56.pt \
      --data-root ../shared/datasets/cifar10 [--trials 3] [--epochs 1] [--train-subset 10000] [--device cpu]

Every step is the real CLI; the figures it prints go into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def cli(*args: str) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"autoprune {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    print(f"[{time.perf_counter() - t0:7.1f} s] autoprune {args[0]}", file=sys.stderr)
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--search-steps", type=int, default=60, help="distillation steps per search trial")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-subset", type=int, default=10000, help="training images used (all 50,000: 0)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default="runs/resnet56_2x")
    args = ap.parse_args()
    common = ["studies/cifar10_resnet56.yaml", "--checkpoint", args.checkpoint, "--data-root", args.data_root,
              "--study-name", "resnet56_2x", "--set", f"workdir={args.workdir}",
              "--set", "search_space=../search_spaces/cifar_resnet_stages_2x.yaml",
              "--set", f"recovery.steps={args.search_steps}", "--set", "measure.latency_batch_size=32"]
    if args.train_subset:
        common += ["--set", f"data.train_subset={args.train_subset}"]
    t0 = time.perf_counter()
    cli("search", *common, "--n-trials", str(args.trials), "--device", args.device)
    t_search = time.perf_counter() - t0
    front = json.loads(cli("pareto", *common, "--json"))
    base_macs = front["base"]["macs"]
    chosen = json.loads(cli("select", *common, "--max-macs", str(base_macs / 2 * 1.05), "--json"))
    t1 = time.perf_counter()
    cli("retrain", *common, "--trial", str(chosen["trial"]), "--epochs", str(args.epochs), "--device", args.device,
        "--out", f"{args.workdir}/final")
    t_retrain = time.perf_counter() - t1
    report = json.loads(open(f"{args.workdir}/final/report.json").read())
    print(json.dumps({
        "chosen_trial": chosen["trial"], "macs_reduction": report["speedup"]["macs_reduction"],
        "base_macs": report["base"]["macs"], "final_macs": report["final"]["macs"],
        "base_test_half": report["base"]["test_accuracy"], "final_test_half": report["final"]["test_accuracy"],
        "base_test_full": report["base"]["test_full_accuracy"], "final_test_full": report["final"]["test_full_accuracy"],
        "search_val_accuracy": chosen["accuracy"],
        "retrain": report["finetune"], "search_seconds": round(t_search), "retrain_seconds": round(t_retrain),
        "budget": {"search_trials": args.trials, "search_steps_per_trial": args.search_steps,
                   "retrain_epochs": args.epochs, "train_images": args.train_subset or 50000, "device": args.device},
    }, indent=2))


if __name__ == "__main__":
    main()
