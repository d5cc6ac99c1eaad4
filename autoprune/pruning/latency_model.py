"""Per-group latency cost model: how much of the base's latency each group's channels cost, measured once per study.

For a study with latency targets (``targets: {latency_reduction: [1.5, 2]}``), every group is pruned alone at a
few ratios and timed paired with the base on the study's backend and batch size (:func:`scan`); the fraction of
the base's time each saves is interpolated between the scanned ratios, and a candidate's predicted latency is the
base's less the groups' savings added up (:class:`LatencyCostModel`). :func:`autoprune.engine.allocation.place` places an
allocation on a latency target with it as it places one on a MACs target with :class:`autoprune.pruning.macs_model.CostModel`,
so the search aims at a speed-up directly: on a runtime where some layers' channels cost more time per MAC than
others, the cheap-in-MACs but slow layers are the ones worth pruning. The scan is cached in the study folder,
keyed by the base weights, the groups, the backend, the batch size and the ratios.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from autoprune.files import atomic_write_text
from autoprune.metrics.latency import Deployed, paired_latency
from autoprune.pruning.structural import GroupLayout, prune_with_plan

SCAN_RATIOS = (0.25, 0.5, 0.75)
FLOOR = 0.05  # a prediction never goes below 5 % of the base's time (the unprunable part is never free)


def interpolate(points: Mapping[float, float], ratio: float) -> float:
    """Piecewise-linear ``points`` (ratio -> value) at ``ratio``, through (0, 0) and flat beyond the last point.

    >>> pts = {0.25: 0.1, 0.5: 0.3}
    >>> [round(interpolate(pts, r), 4) for r in (0.375, 0.1, 0.9)]
    [0.2, 0.04, 0.3]
    """
    xs = [0.0] + sorted(points)
    ys = [0.0] + [points[x] for x in xs[1:]]
    if ratio >= xs[-1]:
        return ys[-1]
    i = next(k for k in range(1, len(xs)) if ratio <= xs[k])
    t = (ratio - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + t * (ys[i] - ys[i - 1])


def monotone(points: Mapping[float, float]) -> dict[float, float]:
    """Savings that never fall as the ratio grows (a running maximum): pruning more of a group does not make
    the model slower; a dip is timing noise or a slow odd width, and would make the bisection's cost
    non-monotone.

    >>> monotone({0.25: 0.1, 0.5: 0.05, 0.75: 0.3})
    {0.25: 0.1, 0.5: 0.1, 0.75: 0.3}
    """
    out, top = {}, 0.0
    for r in sorted(points):
        top = max(top, points[r])
        out[r] = top
    return out


@dataclass(frozen=True)
class LatencyCostModel:
    """``savings``: group -> {ratio: the fraction of the base's latency saved by pruning that group alone at that
    ratio}. Savings are assumed to add up across groups (each group's layers run one after another)."""

    savings: dict[str, dict[float, float]]
    base_ms: float

    def ratio(self, ratios: Mapping[str, float]) -> float:
        """Predicted latency of the base pruned at ``ratios`` over the base's.

        >>> m = LatencyCostModel({"a": {0.5: 0.2}, "b": {0.5: 0.1}}, 1.0)
        >>> round(m.ratio({"a": 0.5, "b": 0.25}), 4), m.ratio({})
        (0.75, 1.0)
        """
        saved = sum(interpolate(self.savings[g], r) for g, r in ratios.items() if g in self.savings and r > 0)
        return max(FLOOR, 1.0 - saved)

    def reduction(self, ratios: Mapping[str, float]) -> float:
        """Base latency over predicted latency: 2.0 means twice as fast."""
        return 1.0 / self.ratio(ratios)

    def to_dict(self) -> dict:
        return {"base_ms": self.base_ms, "savings": {g: {str(r): s for r, s in v.items()} for g, v in self.savings.items()}}

    @classmethod
    def from_dict(cls, blob: Mapping) -> LatencyCostModel:
        return cls({g: {float(r): float(s) for r, s in v.items()} for g, v in blob["savings"].items()},
                   float(blob["base_ms"]))


def scan(base: nn.Module, deployed_base: Deployed, example: torch.Tensor, latency_input: torch.Tensor,
         layout: GroupLayout, backend: str, repeats: int, warmup: int, round_to: int | None,
         ratios: Sequence[float] = SCAN_RATIOS, on_step: Callable[[int, int], None] | None = None) -> LatencyCostModel:
    """Time every group pruned alone (L1) at every ratio, paired with the base; a saving below 0 (noise, or a
    slower odd width) counts as 0, and a group's savings never fall as its ratio grows (:func:`monotone`)."""
    savings: dict[str, dict[float, float]] = {}
    base_ms, total, done = [], len(layout.names) * len(ratios), 0
    for group in layout.names:
        savings[group] = {}
        for r in ratios:
            model, _ = prune_with_plan(base, example, {g: (r if g == group else 0.0) for g in layout.names}, "l1",
                                       layout=layout, round_to=round_to)
            lat = paired_latency(model.eval(), deployed_base, latency_input, repeats, warmup, backend)
            savings[group][float(r)] = round(max(0.0, 1.0 - lat.ratio), 5)
            base_ms.append(lat.base_ms)
            done += 1
            if on_step:
                on_step(done, total)
        savings[group] = monotone(savings[group])
    return LatencyCostModel(savings, float(torch.tensor(base_ms).median()))


def cache_key(weights_digest: str, layout: GroupLayout, backend: str, batch_size: int, repeats: int,
              round_to: int | None, ratios: Sequence[float] = SCAN_RATIOS) -> str:
    blob = json.dumps({"weights": weights_digest, "groups": layout.roots, "backend": backend, "batch": batch_size,
                       "repeats": repeats, "round_to": round_to, "ratios": list(ratios)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_or_scan(workdir: Path, key: str, run: Callable[[], LatencyCostModel],
                 log: Callable[[str], None]) -> LatencyCostModel:
    """The cached model for ``key`` in ``workdir``, or ``run()`` saved there (atomically)."""
    path = Path(workdir) / f"latency-model-{key}.json"
    if path.is_file():
        try:
            return LatencyCostModel.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, AttributeError, TypeError):
            log(f"latency model {path} is unreadable; measuring again")
    model = run()
    atomic_write_text(path, json.dumps(model.to_dict(), indent=1))
    log(f"latency model: each group timed alone at {list(SCAN_RATIOS)}, cached at {path}")
    return model
