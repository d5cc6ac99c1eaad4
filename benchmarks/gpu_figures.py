"""The GPU figures of issue 14, in one run (GPU time is scarce): write them all to one folder.

1. Fine-tune throughput: images/s of autoprune's fine-tune (``distill.finetune`` on the cached teacher stream, as
   every trial runs it: bf16 autocast, channels_last, losses read back every 50 steps) against a plain bf16 loop
   of the same pruned ResNet-20 on the same batches and logits (autocast, SGD, nothing else). Alternated
   ``--repeats`` times; the median of each and their ratio (target: at least 0.9).
2. Trials per hour: the shipped targets study (ResNet-20, CIFAR-10) for ``--trials`` trials on the device, from the
   first trial's start to the last one's end, as ``benchmarks/throughput.py`` counts.
3. The final retrain of a ResNet-56 front model at about 2x fewer MACs (``benchmarks/resnet56_2x.py``: a short
   search, the front's best trial under half the base MACs plus 5 %, ``--epochs`` of retrain on all 50,000
   training images); the test accuracy against the base's 93.39 %.

Usage (on the GPU machine; ``--fast`` shrinks every part to check the script itself, on any device):
  python benchmarks/gpu_figures.py --data-root ../shared/datasets/cifar10 --weights ../shared/weights/cifar10-resnet \
      --device cuda --out "$OUT/gpu"
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoprune.config import RecoveryConfig, load_study  # noqa: E402
from autoprune.device import to_device  # noqa: E402
from autoprune.engine.context import prepare  # noqa: E402
from autoprune.engine.record import TrialRecord  # noqa: E402
from autoprune.engine.storage import load_optuna_study  # noqa: E402
from autoprune.pruning.structural import prune_with_plan  # noqa: E402
from autoprune.train.distill import autocast_dtype, finetune, kd_loss  # noqa: E402
from autoprune.train.teacher_stream import build_stream  # noqa: E402

STUDY = ROOT / "studies" / "cifar10_resnet20_targets.yaml"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model, stream, split, steps: int, settings: RecoveryConfig, device: torch.device) -> None:
    """What a user would write: autocast forward, KD loss on the cached logits, SGD; no checks, no read-back."""
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum, nesterov=True,
                          weight_decay=settings.weight_decay)
    dtype = autocast_dtype(settings.precision, device.type)
    model.train()
    for _, (x, y, logits) in zip(range(steps), stream.batches(split)):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = kd_loss(model(x).float(), logits, y, settings.temperature, settings.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def throughput(ctx, steps: int, repeats: int) -> dict:
    """Images/s of autoprune's fine-tune and of the plain loop, alternated, on a uniform 2x ResNet-20."""
    settings = RecoveryConfig(batch_size=128, lr=0.01)
    stream = build_stream(ctx.base, ctx.data.train, steps, settings.batch_size, True, 0)
    pruned, _ = prune_with_plan(ctx.base, ctx.example, 0.5, "l1", layout=ctx.layout)
    pruned = to_device(pruned, ctx.device)
    ours, plain = [], []
    runs = {"autoprune": lambda m: finetune(m, ctx.data.train, steps=steps, settings=settings, teacher=ctx.base,
                                            stream=stream),
            "plain": lambda m: plain_loop(m, stream, ctx.data.train, steps, settings, ctx.device)}
    for run in runs.values():  # warm-up: cudnn.benchmark picks its kernels
        run(copy.deepcopy(pruned))
    for i in range(repeats):
        for name in (("autoprune", "plain") if i % 2 == 0 else ("plain", "autoprune")):
            model = copy.deepcopy(pruned)
            _sync(ctx.device)
            t0 = time.perf_counter()
            runs[name](model)
            _sync(ctx.device)
            rate = steps * settings.batch_size / (time.perf_counter() - t0)
            (ours if name == "autoprune" else plain).append(rate)
            log(f"throughput {name}: {rate:,.0f} images/s")
    return {"steps": steps, "batch_size": settings.batch_size, "precision": settings.precision,
            "autoprune_images_per_s": [round(r) for r in ours], "plain_images_per_s": [round(r) for r in plain],
            "median_ratio": round(statistics.median(ours) / statistics.median(plain), 4)}


def cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"autoprune {' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def trials_per_hour(args, out: Path) -> dict:
    """The shipped targets study for ``args.trials`` trials on the device; throughput over the trials' own span."""
    workdir = out / "trials_study"
    common = [str(STUDY), "--checkpoint", str(Path(args.weights) / "resnet20.pt"), "--data-root", args.data_root,
              "--set", f"workdir={workdir}"]
    t0 = time.perf_counter()
    cli("search", *common, "--n-trials", str(args.trials), "--device", args.device)
    wall = time.perf_counter() - t0
    study = load_optuna_study(load_study(STUDY, {"workdir": str(workdir)}))
    done = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    rungs = [TrialRecord.from_frozen(t).fidelity.steps for t in done]
    return {"trials": len(done), "span_s": round(span, 1), "command_wall_s": round(wall, 1),
            "trials_per_hour": round(len(done) / span * 3600), "trials_by_rung": {str(r): rungs.count(r)
                                                                                for r in sorted(set(rungs))}}


def resnet56(args, out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "resnet56_2x.py"), "--checkpoint",
           str(Path(args.weights) / "resnet56.pt"), "--data-root", args.data_root, "--device", args.device,
           "--epochs", str(args.epochs), "--train-subset", str(args.train_subset), "--trials", str(args.r56_trials),
           "--workdir", str(out / "resnet56_2x")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return {**json.loads(proc.stdout), "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--weights", required=True, help="folder with resnet20.pt and resnet56.pt")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True, help="folder for figures.json and the studies")
    ap.add_argument("--steps", type=int, default=400, help="fine-tune steps per throughput sample")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=25, help="ResNet-56 retrain epochs")
    ap.add_argument("--train-subset", type=int, default=0, help="ResNet-56 training images (0: all 50,000)")
    ap.add_argument("--r56-trials", type=int, default=6)
    ap.add_argument("--parts", default="throughput,trials,resnet56")
    ap.add_argument("--fast", action="store_true", help="tiny settings: check the script, not the machine")
    args = ap.parse_args()
    if args.fast:
        args.steps, args.repeats, args.trials, args.epochs, args.train_subset, args.r56_trials = 4, 2, 2, 1, 512, 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    figures: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                     or platform.machine(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
                     "fast": args.fast}
    parts = args.parts.split(",")
    if "throughput" in parts:
        study = load_study(STUDY, {"model.checkpoint": str(Path(args.weights) / "resnet20.pt"),
                                   "data.root": args.data_root, "workdir": str(out / "throughput_study")})
        ctx = prepare(study, args.device, measure_reference=False)
        figures["finetune_throughput"] = throughput(ctx, args.steps, args.repeats)
    if "trials" in parts:
        figures["trials_per_hour"] = trials_per_hour(args, out)
        log(f"trials per hour: {figures['trials_per_hour']}")
    if "resnet56" in parts:
        figures["resnet56_2x_retrain"] = resnet56(args, out)
        log(f"resnet56: {figures['resnet56_2x_retrain']}")
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
