"""Prune a semantic-segmentation network with your own data and score: torchvision's LR-ASPP MobileNetV3, trained
briefly on generated shapes, searched by mean IoU, a pick retrained and exported to ONNX.

    python examples/segmentation.py                 # about ten minutes on two CPU cores
    python examples/segmentation.py --small         # the suite's budget: a minute or two

Nothing here is special to autoprune except the last block: a model, two data sets, a score function.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

import autoprune

CLASSES = 3  # background, square, disc


class Shapes(Dataset):
    """Images of one square and one disc on noise; the mask says which pixel is which (seeded, no files)."""

    def __init__(self, n: int, size: int = 64, seed: int = 0) -> None:
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        s = self.size
        mask = torch.zeros(s, s, dtype=torch.long)
        y0, x0, side = (int(v) for v in torch.randint(0, s // 2, (3,), generator=g))
        mask[y0 : y0 + side // 2 + 6, x0 : x0 + side // 2 + 6] = 1
        cy, cx, r = (int(v) for v in torch.randint(s // 4, 3 * s // 4, (3,), generator=g))
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= (r // 3 + 4) ** 2] = 2
        colour = torch.tensor([[0.1, 0.1, 0.1], [0.9, 0.3, 0.2], [0.2, 0.4, 0.9]])[mask].permute(2, 0, 1)
        image = colour + 0.15 * torch.randn(3, s, s, generator=g)
        return (image - 0.4) / 0.3, mask


class LRASPP(nn.Module):
    """torchvision's LR-ASPP MobileNetV3 returning its logits (torchvision returns a dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def class_iou(model: nn.Module, data: DataLoader) -> float:
    """Mean intersection over union over the classes, on every pixel of ``data``."""
    inter, union = torch.zeros(CLASSES), torch.zeros(CLASSES)
    for x, mask in data:
        pred = model(x).argmax(1)
        for c in range(CLASSES):
            inter[c] += ((pred == c) & (mask == c)).sum()
            union[c] += ((pred == c) | (mask == c)).sum()
    return float((inter / union.clamp(min=1)).mean())


def train(model: nn.Module, data: DataLoader, epochs: int) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    steps = epochs * len(data)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    for _ in range(epochs):
        for x, mask in data:
            loss = nn.functional.cross_entropy(model(x), mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    # MobileNetV3's BatchNorm keeps its running statistics with momentum 0.01: after a short training they still
    # lag far behind the weights, so they are re-estimated on the training images (cumulative average, no gradients)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for x, _ in data:
            model(x)
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the suite's budget")
    parser.add_argument("--out", default="runs/segmentation", help="the study's folder")
    args = parser.parse_args()
    size, n_train, epochs, trials, steps = (32, 128, 6, 5, 4) if args.small else (64, 1024, 8, 24, 40)
    torch.manual_seed(0)
    train_set, val_set = Shapes(n_train, size, seed=0), Shapes(64, size, seed=1)
    model = LRASPP()
    train(model, DataLoader(train_set, batch_size=16, shuffle=True), epochs)
    val_loader = DataLoader(val_set, batch_size=32)

    def mean_iou(m: nn.Module) -> float:  # the score, named as the function is; higher is better
        return class_iou(m, val_loader)

    out = Path(args.out)
    recovery = {"steps": steps, "batch_size": 16, "bn_recalibration_batches": 2 if args.small else 10}
    result = autoprune.search(model, train_data=DataLoader(train_set, batch_size=16), val_data=val_set, score=mean_iou,
                              targets=[1.5, 2], n_trials=trials, storage=f"sqlite:///{out / 'study.db'}",
                              study_name="segmentation", workdir=str(out), recovery=recovery,
                              measure={"latency_repeats": 3})
    print(result)
    pick = result.select(knee=True)
    print(f"picked trial {pick.trial}: {pick.reason}")
    final = pick.retrain(epochs=1)
    report = final.export(out / "final")
    onnx = report["exports"]["onnx"]
    print(f"mean IoU: base {report['base']['test_accuracy']:.3f} -> retrained {report['final']['test_accuracy']:.3f}; "
          f"MACs {report['base']['macs']:,} -> {report['final']['macs']:,}; ONNX {onnx['file']} (max abs "
          f"difference {onnx.get('max_abs_diff', float('nan')):.1e}); report {out / 'final' / 'report.html'}")


if __name__ == "__main__":
    main()
