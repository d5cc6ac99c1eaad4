"""Per-group sensitivity scan: narrow each group's ratio range before the search.

Each group is pruned alone at a few ratios (L1 filter norm: weights only, no data), its BatchNorm statistics are
re-calibrated, and it is scored on part of the validation split. A group's upper ratio becomes the largest scanned
ratio whose accuracy drop stays within ``max_drop`` (at least the smallest scanned ratio), so the sampler does not
spend trials where one group alone already ruins the model. The scan is cached in the study folder, keyed by the
base weights, the group layout and the scan settings, so every worker on the machine reuses it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from autoprune.config import SensitivityConfig
from autoprune.data.splits import DataSplits
from autoprune.files import atomic_write_text
from autoprune.metrics.costs import accuracy
from autoprune.pruning.structural import GroupLayout, prune_with_plan
from autoprune.train.distill import recalibrate_bn


def narrowed_highs(scores: Mapping[str, Mapping[float, float]], base_accuracy: float, max_drop: float,
                   high: float) -> dict[str, float]:
    """Each group's upper ratio: the largest scanned ratio with ``base_accuracy - score <= max_drop``, at least
    the smallest scanned ratio, at most ``high``.

    >>> narrowed_highs({"a": {0.25: 0.9, 0.5: 0.85, 0.75: 0.5}, "b": {0.25: 0.4, 0.5: 0.3}}, 0.92, 0.1, 0.7)
    {'a': 0.5, 'b': 0.25}
    """
    out = {}
    for group, by_ratio in scores.items():
        ratios = sorted(by_ratio)
        ok = [r for r in ratios if base_accuracy - by_ratio[r] <= max_drop]
        out[group] = min(high, max(ok) if ok else ratios[0])
    return out


def scan(base: nn.Module, example: torch.Tensor, layout: GroupLayout, data: DataSplits, cfg: SensitivityConfig,
         scorer: str, bn_batches: int, batch_size: int, seed: int,
         on_step: Callable[[int, int], None] | None = None) -> dict:
    """Score every group pruned alone at every ratio of ``cfg``; returns ``{"base": acc, "scores": {g: {r: acc}}}``."""
    val = data.val.subset(torch.arange(min(cfg.eval_images, len(data.val))))
    base_acc = accuracy(base, val, batch_size)
    scores: dict[str, dict[float, float]] = {}
    total, done = len(layout.names) * len(cfg.ratios), 0
    for group in layout.names:
        scores[group] = {}
        for ratio in cfg.ratios:
            ratios = {g: (ratio if g == group else 0.0) for g in layout.names}
            model, _ = prune_with_plan(base, example, ratios, scorer, layout=layout)
            recalibrate_bn(model, data.train, bn_batches, batch_size, generator=torch.Generator().manual_seed(seed))
            scores[group][ratio] = accuracy(model, val, batch_size)
            done += 1
            if on_step:
                on_step(done, total)
    return {"base": base_acc, "scores": scores}


def cache_key(weights_digest: str, layout: GroupLayout, cfg: SensitivityConfig, scorer: str, extra: Sequence) -> str:
    blob = json.dumps({"weights": weights_digest, "groups": layout.roots, "cfg": cfg.model_dump(), "scorer": scorer,
                       "extra": list(extra)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_or_scan(workdir: Path, key: str, run: Callable[[], dict], log: Callable[[str], None]) -> dict:
    """The cached scan for ``key`` in ``workdir``, or ``run()`` saved there (atomically)."""
    path = Path(workdir) / f"sensitivity-{key}.json"
    if path.is_file():
        try:
            blob = json.loads(path.read_text())
            return {"base": blob["base"], "scores": {g: {float(r): a for r, a in s.items()}
                                                      for g, s in blob["scores"].items()}}
        except (ValueError, KeyError, AttributeError):
            log(f"sensitivity scan {path} is unreadable; scanning again")
    result = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1))
    return result
