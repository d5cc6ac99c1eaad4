"""User models for the architecture contract ("tests.user_models:<factory>"), on 1-channel 8x8 digits.

``branchy``: concatenation of two branches, a grouped convolution (behind a 1x1 fusion: torch-pruning cannot
prune a grouped convolution fed straight by a concatenation) and a custom layer of the user's own
(``ChannelScale``: a per-channel learned scale torch-pruning has no pruner for, whose 1-D parameter it prunes
correctly by guessing its last dimension). ``mixing``: the same with a custom ``ChannelMixer`` (a learned channel
matrix applied with einsum) that torch-pruning cannot see through, so pruning the layer before it breaks the
model. ``mixing_with_pruner``: the same model carrying a customized torch-pruning pruner for ``ChannelMixer``.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn


class ChannelScale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


class ChannelMixer(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels_out, channels_in) / channels_in ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,dc->bdhw", x, self.weight)


class ChannelMixerPruner(tp.pruner.function.BasePruningFunc):
    """Rows of the mixer's matrix are its output channels, columns its input channels."""

    def prune_out_channels(self, layer: ChannelMixer, idxs: list) -> nn.Module:
        keep = sorted(set(range(layer.weight.shape[0])) - set(idxs))
        layer.weight = nn.Parameter(layer.weight.data[keep].clone())
        return layer

    def prune_in_channels(self, layer: ChannelMixer, idxs: list) -> nn.Module:
        keep = sorted(set(range(layer.weight.shape[1])) - set(idxs))
        layer.weight = nn.Parameter(layer.weight.data[:, keep].clone())
        return layer

    def get_out_channels(self, layer: ChannelMixer) -> int:
        return layer.weight.shape[0]

    def get_in_channels(self, layer: ChannelMixer) -> int:
        return layer.weight.shape[1]


class Branchy(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16, mixer: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.fuse = nn.Conv2d(2 * width, 2 * width, 1, bias=False)
        self.grouped = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=4, bias=False),
                                     nn.BatchNorm2d(2 * width), nn.ReLU())
        self.scale = ChannelScale(2 * width)
        self.project = nn.Conv2d(2 * width, 2 * width, 1, bias=False)
        self.mixer = ChannelMixer(2 * width, 2 * width) if mixer else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.cat([self.left(h), self.right(h)], dim=1)
        h = self.project(self.scale(self.grouped(self.fuse(h))))
        h = self.mixer(h)
        return self.fc(torch.flatten(self.pool(h), 1))


def branchy(num_classes: int = 10, width: int = 16) -> nn.Module:
    return Branchy(num_classes, width)


def mixing(num_classes: int = 10, width: int = 16) -> nn.Module:
    return Branchy(num_classes, width, mixer=True)


def mixing_with_pruner(num_classes: int = 10, width: int = 16) -> nn.Module:
    model = Branchy(num_classes, width, mixer=True)
    model.autoprune_pruners = {ChannelMixer: ChannelMixerPruner()}
    return model
