"""Streamed data: the memory and time of a search on a large JPEG image folder, and CIFAR-10 fine-tune speed
through the in-memory split and the streamed split side by side.

Usage: python benchmarks/data_streaming.py [--images 30000] [--workers N] [--cifar-steps 300] [--out FILE]
       python benchmarks/data_streaming.py --images 400 --trials 1 --base-epochs 1 --cifar-steps 3 --repeats 1
           (a quick check that it runs)

(a) Writes an ImageFolder of ``--images`` random 96 px JPEGs in four classes (plus a small val/ folder) into a
    temporary folder and runs ``autoprune search`` on it in a subprocess: the quickstart CNN with 3 input
    channels, ``image_size: 96``, ``train_subset: 2000``, ``--trials`` trials. Every 0.5 s it sums the
    proportional set size (Pss in /proc/<pid>/smaps_rollup) of the search process and all its descendants (the
    loader workers included) and reports the peak and the wall time. (Before streaming, 30,000 images: 2.8 GB
    and 9 minutes; the target is under 1.2 GB and faster.)
(b) Fine-tunes resnet20 (the shared CIFAR-10 checkpoint) for ``--cifar-steps`` steps through the in-memory
    Split and through a StreamSplit over the same arrays read item by item as a map-style data set (alternating,
    ``--repeats`` times each), and reports the images per second of each.
(c) With ``--floor``: the memory the search needs whatever the data: a fresh process's peak RSS after importing
    autoprune, two training steps of the same CNN at 96 px (batch 64) and one evaluation batch, no data read.
Prints one JSON object (also written to ``--out``). Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CLASSES = 4


# ------------------------------------------------------------------------------------- (a) image-folder search
def write_folder(root: Path, n_train: int, n_val: int, size: int = 96, seed: int = 0) -> None:
    """Random JPEGs, each class a different tint under the noise (so the CNN learns a little)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(CLASSES):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            tint = np.array([60 * c, 255 - 60 * c, 128], dtype=np.int16)
            for i in range(c, n, CLASSES):
                noise = rng.integers(-80, 80, (size, size, 3), dtype=np.int16)
                Image.fromarray(np.clip(tint + noise, 0, 255).astype(np.uint8)).save(d / f"{i:06d}.jpg", quality=85)


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def tree_pss_kb(pid: int) -> dict[int, int]:
    """Pss of ``pid`` and of each of its descendants, in kB (processes that just ended are left out)."""
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    found[p] = int(line.split()[1])
                    break
        except OSError:
            continue
        todo += _children(p)
    return found


def search_study(folder: Path, workdir: Path, trials: int, workers: int | None, base_epochs: int | None,
                 eval_batch: int | None = None) -> Path:
    study = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    study["search_space"] = str(ROOT / "search_spaces" / "quickstart.yaml")
    study["workdir"] = str(workdir)
    study["model"]["kwargs"] = {"in_channels": 3}
    if base_epochs is not None:
        study["model"]["base_training"]["epochs"] = base_epochs
    study["data"] = {"name": "imagefolder", "root": str(folder), "image_size": 96, "train_subset": 2000,
                     **({"num_workers": workers} if workers is not None else {}),
                     **({"batch_size": eval_batch} if eval_batch is not None else {})}
    study["budget"] = {"n_trials": trials}
    path = workdir.parent / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def run_search(study: Path, code: Path | None = None, huge_pages: bool = True) -> dict:
    """``autoprune search`` in a subprocess (of the checkout ``code`` if given: another commit, side by side);
    ``huge_pages=False`` sets AUTOPRUNE_HUGE_PAGES=0 (glibc's allocator as it is: see autoprune.cli.huge_pages)."""
    cmd = [sys.executable, "-m", "autoprune.cli", "search", str(study)]
    env = dict(os.environ, **({"PYTHONPATH": str(code)} if code else {}),
               **({} if huge_pages else {"AUTOPRUNE_HUGE_PAGES": "0"}))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(code) if code else None)
    peak, at_peak = 0, {}
    while proc.poll() is None:
        sample = tree_pss_kb(proc.pid)
        if sum(sample.values()) > peak:
            peak, at_peak = sum(sample.values()), sample
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"peak_pss_mb": round(peak / 1024, 1), "wall_s": round(wall, 1), "target_pss_mb": 1200,
            "peak_pss_mb_by_process": [round(v / 1024, 1) for v in at_peak.values()]}  # the search process first


def image_folder_search(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="autoprune-stream-") as tmp:
        folder = Path(tmp) / "images"
        t0 = time.perf_counter()
        write_folder(folder, args.images, args.val_images)
        made = time.perf_counter() - t0
        result = run_search(search_study(folder, Path(tmp) / "run", args.trials, args.workers, args.base_epochs,
                                         args.eval_batch), args.code, not args.no_huge_pages)
    return {"images": args.images, "val_images": args.val_images, "trials": args.trials,
            "num_workers": args.workers, "eval_batch": args.eval_batch, "code": str(args.code or ROOT),
            "huge_pages": not args.no_huge_pages,
            "folder_written_s": round(made, 1), **result}


FLOOR = """
import json, sys, torch
import autoprune.cli  # noqa: F401 - what the search process imports
from autoprune.models.factory import QuickstartCNN
def rss():  # peak RSS of this program (VmHWM starts afresh at exec; ru_maxrss keeps the forking parent's)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) // 1024
out = {"imports_mb": rss()}
m, (train_batch, eval_batch) = QuickstartCNN(num_classes=4, in_channels=3), map(int, sys.argv[1:3])
opt = torch.optim.SGD(m.parameters(), lr=0.01)
for _ in range(2):
    x, y = torch.randn(train_batch, 3, 96, 96), torch.randint(0, 4, (train_batch,))
    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
out["after_training_mb"] = rss()
with torch.inference_mode():
    m.eval()(torch.randn(eval_batch, 3, 96, 96))
out["after_evaluation_mb"] = rss()
print(json.dumps(out))
"""


def compute_floor(train_batch: int, eval_batch: int) -> dict:
    """(c) Peak RSS (VmHWM) of one fresh process that reads no data: imports, two training steps of the quickstart CNN
    (3 channels, 96 px) at the recovery batch, one evaluation batch. What the search needs whatever the data."""
    done = subprocess.run([sys.executable, "-c", FLOOR, str(train_batch), str(eval_batch)], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    return {"train_batch": train_batch, "eval_batch": eval_batch, **json.loads(done.stdout.strip().splitlines()[-1])}


# ----------------------------------------------------------------------------------- (b) CIFAR-10 fine-tune
class ArrayItems(torch.utils.data.Dataset):
    """NHWC uint8 arrays as a map-style data set of (CHW uint8 tensor, label) items."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.image(i), int(self.y[i])

    def image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.x[i].transpose(2, 0, 1)))


def cifar_finetune(args: argparse.Namespace) -> dict:
    from autoprune.config import DataConfig, RecoveryConfig
    from autoprune.data.splits import CIFAR_STATS, Split, workers
    from autoprune.data.streaming import StreamSplit
    from autoprune.device import resolve_device, to_device
    from autoprune.models.factory import create_model, load_checkpoint
    from autoprune.train.distill import finetune

    root, ckpt = SHARED / "datasets" / "cifar10", SHARED / "weights" / "cifar10-resnet" / "resnet20.pt"
    if not (root / "train.npz").is_file() or not ckpt.is_file():
        return {"skipped": f"needs {root}/train.npz and {ckpt}"}
    device = resolve_device(args.device if args.device != "auto" else
                            "cuda" if torch.cuda.is_available() else "cpu")
    tr = np.load(root / "train.npz")
    x, y = tr["x"], tr["y"].astype(np.int64)
    mean, std = (torch.tensor(v) for v in CIFAR_STATS["cifar10"])
    n_workers = workers(DataConfig(name="cifar10", num_workers=args.workers))
    held = Split(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y), mean, std)
    items = ArrayItems(x, y)
    streamed = StreamSplit(items.image, torch.arange(len(y)), torch.from_numpy(y), mean, std,
                           (3, 32, 32), n_workers)
    splits = {"in_memory": held.to(device), "streamed": streamed.to(device)}
    settings = RecoveryConfig(batch_size=args.batch_size, lr=0.01)
    rates: dict[str, list[float]] = {k: [] for k in splits}
    for repeat in range(args.repeats):
        for name, split in splits.items():
            model = to_device(load_checkpoint(create_model("resnet20", num_classes=10), ckpt), device)
            gen = torch.Generator().manual_seed(repeat)
            finetune(model, split, steps=2, settings=settings, augment=True, generator=gen)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            finetune(model, split, steps=args.cifar_steps, settings=settings, augment=True, generator=gen)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name].append(args.cifar_steps * args.batch_size / (time.perf_counter() - t0))
    return {"device": str(device), "batch_size": args.batch_size, "steps": args.cifar_steps, "num_workers": n_workers,
            **{f"{k}_images_per_s": round(statistics.median(v), 1) for k, v in rates.items()},
            "runs": {k: [round(r, 1) for r in v] for k, v in rates.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=30000, help="training images in the generated folder")
    ap.add_argument("--val-images", type=int, default=1000, help="images in its val/ folder")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--base-epochs", type=int, default=None, help="base training epochs (default: quickstart's)")
    ap.add_argument("--workers", type=int, default=None, help="data.num_workers (default: the machine's)")
    ap.add_argument("--eval-batch", type=int, default=None,
                    help="data.batch_size, the evaluation batch (default: 256)")
    ap.add_argument("--cifar-steps", type=int, default=300, help="timed fine-tune steps per run (0: skip (b))")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--code", type=Path, default=None,
                    help="run the search from this checkout (e.g. a worktree of the commit before streaming)")
    ap.add_argument("--no-huge-pages", action="store_true",
                    help="the search with AUTOPRUNE_HUGE_PAGES=0 (large CPU tensors on 4 kB pages, as before)")
    ap.add_argument("--skip-search", action="store_true", help="only (b) and (c)")
    ap.add_argument("--floor", action="store_true",
                    help="(c): the compute floor, no data read: a fresh process's peak RSS after importing "
                         "autoprune, two training steps of the search's CNN at 96 px and one evaluation batch")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = {"cpus": os.cpu_count(), "torch": torch.__version__}
    if not args.skip_search:
        result["image_folder_search"] = image_folder_search(args)
    if args.cifar_steps > 0:
        result["cifar10_finetune"] = cifar_finetune(args)
    if args.floor:
        result["compute_floor"] = compute_floor(64, args.eval_batch or 256)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
