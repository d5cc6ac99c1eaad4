"""A user model ("tests.failing_models:fails_when_pruned") that breaks the way real ones do, but only once pruned.

The unpruned model trains and evaluates normally, so the base model is built (and cached) as usual. The kind of
failure is read from the environment variable ``FAILING_MODEL`` at every forward pass, so one trained base serves
every kind, in this process and in the ``autoprune`` processes a test starts:

- ``oom``, ``bug``, ``nan``: in training mode (BN re-calibration and fine-tuning), with ``features.0`` pruned to
  half its width or less, forward raises CUDA's out-of-memory error, raises :class:`ModelBug`, or returns NaN.
- ``view``: forward views the last stage's output with its unpruned width hard-coded, so a plan that prunes
  ``features.7`` leaves a model that no longer runs, which torch-pruning cannot see while applying the plan.
- ``slow``: every forward pass of a pruned copy in training mode sleeps 50 ms: trials last long enough to
  interrupt (the base trains at full speed).
- unset or empty: no failure.

Milder plans complete, so a search sees both.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from autoprune.models.factory import QuickstartCNN


class ModelBug(Exception):
    """An exception type of the user's own, derived from nothing but Exception."""


class FailsWhenPruned(QuickstartCNN):
    """The quickstart CNN, failing as ``$FAILING_MODEL`` says once pruned (see the module's docstring)."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__(num_classes, width=width)
        self.full_width = width
        self.full_params = sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = os.environ.get("FAILING_MODEL", "")
        h = self.features(x)
        h = h.view(x.shape[0], 2 * self.full_width) if kind == "view" else torch.flatten(h, 1)
        logits = self.classifier(h)
        if kind == "slow" and self.training and sum(p.numel() for p in self.parameters()) < self.full_params:
            time.sleep(0.05)
        if not (self.training and self.features[0].out_channels <= self.full_width // 2):
            return logits
        if kind == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)")
        if kind == "bug":
            raise ModelBug("the user's layer met a shape it does not handle")
        if kind == "nan":
            return logits * float("nan")
        return logits


def fails_when_pruned(num_classes: int = 10, **kwargs) -> nn.Module:
    return FailsWhenPruned(num_classes, **kwargs)
