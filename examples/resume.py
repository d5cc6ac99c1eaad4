"""Inspect a stored search and resume it: the study the classifier example wrote (run that first), loaded from its
storage alone, its front and a selection printed, a candidate rebuilt; then the search taken further.

    python examples/classifier.py --small && python examples/resume.py --small
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision
from classifier import digits, settings  # the example beside this one
from torch.utils.data import DataLoader

import autoprune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the suite's budget")
    parser.add_argument("--out", default="runs/classifier", help="the classifier example's study folder")
    args = parser.parse_args()
    out = Path(args.out)
    storage = f"sqlite:///{out / 'study.db'}"
    stored = autoprune.load_result(storage, "classifier")  # no model, no data: the front and selection only
    print(stored)
    floor = stored.base["accuracy"] - 0.1  # within 10 points of the unpruned model
    print(f"cheapest with accuracy >= {floor:.3f}:", stored.select(min_accuracy=floor).trial)
    train, val = digits()
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(torch.load(out / "base.pt", weights_only=True))  # the model the search pruned
    model.eval()
    candidate = autoprune.load_result(storage, "classifier", model=model).front[0]
    print(f"trial {candidate.trial} rebuilt:", autoprune.measure(candidate.model(), val[0][0][None]))
    more = len(stored.study.trials) + (2 if args.small else 10)
    resumed = autoprune.search(model, train_data=DataLoader(train, batch_size=64), val_data=val, targets=[1.5, 2],
                               n_trials=more, storage=storage, study_name="classifier", workdir=str(out),
                               **settings(args.small))
    print(resumed)


if __name__ == "__main__":
    main()
