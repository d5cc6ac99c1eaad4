"""The models wing: the model registry (torchvision classifiers, CIFAR ResNets, the quickstart CNN, timm, your
own ``package.module:factory``), checkpoints, and the check that a model fits the data. Depends on the ground floor
only.
"""

from __future__ import annotations

from autoprune.models.factory import MODELS, create_model, load_checkpoint, resolve_model

__all__ = ["MODELS", "create_model", "load_checkpoint", "resolve_model"]
