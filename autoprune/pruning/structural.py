"""Structural pruning with torch-pruning: name the groups, prune a copy by per-group ratios, record and replay.

A *group layout* names the units that share one pruning ratio: torch-pruning dependency groups (named by
their root layer), the model's stages, user-named sets of layers, or one global ratio. Pruning builds a
``MetaPruner`` on a copy of the model with a per-root-layer ratio dict; the output layer is never pruned.
The plan torch-pruning applied (``pruning_history()``) is recorded so the exact structure can be rebuilt.
"""

from __future__ import annotations

import fnmatch
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from autoprune.errors import AutopruneError, first_line
from autoprune.models.copying import copy_model
from autoprune.models.fit_check import model_output
from autoprune.pruning.graph_hints import after_pruning, customized_pruners, failing_layer, pruner_kwargs
from autoprune.pruning.scorers import resolve_scorer

ROOT_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)


@dataclass
class GroupLayout:
    """Which root layers each named group prunes, and which layers are kept whole.

    Attributes:
        roots: group name -> names of the root layers (their output channels are pruned at the group's ratio).
        ignored: names of layers never pruned (output layer, layers outside ``prunable``, ``ignore`` patterns).
        output_layer: the name of the layer that produces the logits.
        channels: group name -> number of prunable channels it holds (summed over its roots).
    """

    roots: dict[str, list[str]]
    ignored: list[str]
    output_layer: str
    channels: dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.roots)


def _match(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def find_output_layer(model: nn.Module, example_inputs: torch.Tensor) -> str:
    """The name of the last conv/linear layer whose output width equals the model's output width."""
    out = model_output(model, example_inputs, f"the model fails on the example inputs ({list(example_inputs.shape)} "
                       f"{example_inputs.dtype})")
    out_dim = out.shape[-1] if out.dim() == 2 else out.shape[1]
    candidates = [n for n, m in model.named_modules() if isinstance(m, ROOT_TYPES)
                  and (getattr(m, "out_features", None) or getattr(m, "out_channels", None)) == out_dim]
    if not candidates:
        raise AutopruneError(f"cannot find the output layer: no conv/linear layer has {out_dim} outputs")
    return candidates[-1]


def _ignored_layers(modules: Mapping[str, nn.Module], output_layer: str, prunable: Sequence[str] | None,
                    ignore: Sequence[str]) -> list[str]:
    """The output layer, and every conv/linear layer matching ``ignore`` or outside ``prunable``."""
    ignored = [output_layer]
    for name, m in modules.items():
        if not isinstance(m, ROOT_TYPES) or name == output_layer:
            continue
        if _match(name, ignore) or (prunable is not None and not _match(name, prunable)):
            ignored.append(name)
    return ignored


def _group_roots(dg, modules: Mapping[str, nn.Module], ignored: Sequence[str], by: str,
                 named: Mapping[str, Sequence[str]] | None, progress: dict | None = None
                 ) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Group name -> the root layers of torch-pruning's dependency groups it holds, and its channel count
    (``progress["groups"]`` counts the groups as torch-pruning yields them)."""
    names_of = {m: n for n, m in modules.items()}
    ignored_modules = [x for n in ignored for x in modules[n].modules()]
    roots: dict[str, list[str]] = {}
    channels: dict[str, int] = {}
    for group in dg.get_all_groups(ignored_layers=ignored_modules, root_module_types=list(ROOT_TYPES)):
        if progress is not None:
            progress["groups"] += 1
        root = group[0].dep.target.module
        members = [names_of[dep.target.module] for dep, _ in group
                   if dg.is_out_channel_pruning_fn(dep.handler) and dep.target.module in names_of]
        if by == "dependency":
            key: str | None = names_of[root]
        elif by == "global":
            key = "all"
        else:
            if not named:
                raise AutopruneError(f"groups by {by!r} need named groups, and none are defined for this model",
                                     field="groups")
            key = next((g for member in members for g, pats in named.items() if _match(member, pats)), None)
        if key is None:
            continue
        roots.setdefault(key, []).append(names_of[root])
        channels[key] = channels.get(key, 0) + int(dg.get_out_channels(root))
    return roots, channels


GRAPH_SECONDS = 300.0  # the longest torch-pruning may take to build and group a model's dependency graph
WAIT_NOTE_SECONDS = 15.0  # while it works, a line of progress this often


def _within(work: Callable[[dict], Any], model: nn.Module, seconds: float | None,
            log: Callable[[str], None] | None) -> Any:
    """``work(progress)`` run in a background thread for at most ``seconds`` (default ``GRAPH_SECONDS``, or the
    environment's ``AUTOPRUNE_GRAPH_SECONDS``), a line of progress logged every ``WAIT_NOTE_SECONDS``. Past the
    bound it is one AutopruneError saying so (the thread is left to finish; a command exits with the error). An
    exception of ``work`` is raised here, in the caller's thread."""
    limit = seconds or float(os.environ.get("AUTOPRUNE_GRAPH_SECONDS") or GRAPH_SECONDS)
    progress: dict[str, Any] = {"groups": 0}
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["value"] = work(progress)
        except BaseException as exc:  # noqa: BLE001 - reported below, in the caller's thread
            done["error"] = exc

    worker = threading.Thread(target=run, daemon=True, name="autoprune-dependency-graph")
    t0 = time.monotonic()
    worker.start()
    while worker.is_alive() and time.monotonic() - t0 < limit:
        worker.join(min(WAIT_NOTE_SECONDS, max(0.01, limit - (time.monotonic() - t0))))
        if worker.is_alive() and log is not None and time.monotonic() - t0 < limit:
            doing = f"grouping channels, {progress['groups']} groups so far" if "graph" in progress else "tracing"
            log(f"torch-pruning: {doing} ({time.monotonic() - t0:.0f} s)")
    if worker.is_alive():
        n = sum(1 for _ in model.modules())
        what = f"grouping its channels ({progress['groups']} groups so far)" if "graph" in progress else "tracing it"
        raise AutopruneError(f"torch-pruning took longer than {limit:g} s over this model ({n} modules), {what}; set "
                             "AUTOPRUNE_GRAPH_SECONDS to wait longer, or search part of the model ('prunable' or "
                             "'ignore' in the search space)")
    if "error" in done:
        raise done["error"]
    return done["value"]


def dependency_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``; a model it cannot trace is one AutopruneError."""
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False,
                                                     customized_pruners=customized_pruners(model))
    except Exception as exc:
        raise AutopruneError(f"torch-pruning cannot trace the model: {first_line(exc)}") from None


def build_layout(
    model: nn.Module,
    example_inputs: torch.Tensor,
    by: str = "dependency",
    named: Mapping[str, Sequence[str]] | None = None,
    prunable: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    seconds: float | None = None,
    log: Callable[[str], None] | None = None,
) -> GroupLayout:
    """Name the pruning groups of ``model``.

    Args:
        model: the model (not modified).
        example_inputs: a batch for tracing.
        by: ``dependency`` | ``stage``/``named`` (groups given in ``named``) | ``global``.
        named: group name -> module-name patterns (fnmatch); a dependency group joins the first named group any
            of its out-channel layers matches; groups matching none are not pruned.
        prunable: module-name patterns of layers whose output channels may be pruned (None: the model's own
            ``autoprune_prunable`` attribute if it has one, else all).
        ignore: module-name patterns never pruned.
        seconds, log: torch-pruning's tracing and grouping are bounded in time and report progress
            (:func:`_within`).

    Raises:
        AutopruneError: when nothing is left to prune, naming why; when torch-pruning cannot trace the model, or
            takes longer than the bound.
    """
    output_layer = find_output_layer(model, example_inputs)
    modules = dict(model.named_modules())
    ignored = _ignored_layers(modules, output_layer, getattr(model, "autoprune_prunable", None)
                              if prunable is None else prunable, ignore)
    def work(progress: dict) -> tuple[dict[str, list[str]], dict[str, int]]:
        dg = dependency_graph(model, example_inputs)
        progress["graph"] = True
        return _group_roots(dg, modules, ignored, by, named, progress)

    roots, channels = _within(work, model, seconds, log)
    if not roots:
        raise AutopruneError(
            "the model has no prunable groups (every conv/linear layer is the output layer, ignored, outside "
            "'prunable', or coupled to one that is); widen 'prunable' or narrow 'ignore' in the search space")
    order = {n: i for i, n in enumerate(modules)}
    if named and by in ("stage", "named"):
        roots = {g: roots[g] for g in named if g in roots}
    else:
        roots = dict(sorted(roots.items(), key=lambda kv: min(order[r] for r in kv[1])))
    return GroupLayout(roots, ignored, output_layer, channels)


def _expand_ratios(layout: GroupLayout, ratios: float | Mapping[str, float]) -> dict[str, float]:
    if isinstance(ratios, (int, float)):
        out = {g: float(ratios) for g in layout.names}
    else:
        unknown = sorted(set(ratios) - set(layout.names))
        if unknown:
            raise AutopruneError(f"unknown pruning group(s) {unknown}; valid groups: {layout.names}")
        out = {g: float(ratios.get(g, 0.0)) for g in layout.names}
    for g, r in out.items():
        if not 0.0 <= r < 1.0:
            raise AutopruneError(f"pruning ratio for {g!r} must lie in [0, 1), got {r}")
    return out


def rounded_ratio(channels: int, ratio: float, round_to: int | None) -> float:
    """The ratio that leaves ``channels`` a multiple of ``round_to``: the kept count nearest ``channels * (1 -
    ratio)``, at least ``round_to`` (a layer is never pruned away), and nothing pruned at ratio 0 or where the
    nearest multiple is the whole layer. torch-pruning's own ``round_to`` rounds the kept count down, so 16
    channels at 0.3 would keep 8, and at 0.75 would keep none (and then be skipped); this asks it for a count that
    is already a multiple. The returned ratio carries half a channel of margin against float truncation.

    >>> [round(rounded_ratio(64, r, 8) * 64, 2) for r in (0.0, 0.05, 0.3, 0.5, 0.95)]  # channels pruned
    [0.0, 0.0, 15.5, 31.5, 55.5]
    >>> rounded_ratio(64, 0.3, None)
    0.3
    """
    if not round_to or ratio <= 0.0:
        return ratio
    kept = max(round_to, round_to * math.floor(channels * (1.0 - ratio) / round_to + 0.5))
    if kept >= channels:
        return 0.0
    return 1.0 - (kept + 0.5) / channels


def _prepare_scorer(model: nn.Module, importance, needs: str, name: str,
                    calibration: Sequence[tuple[torch.Tensor, torch.Tensor]] | None):
    if needs == "weights":
        return None
    if not calibration:
        raise AutopruneError(f"scorer {name!r} needs calibration batches ({needs}); pass calibration=[(x, y), ...]")
    was_training = model.training
    model.eval()
    if needs == "gradients":
        for p in model.parameters():
            p.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        for x, y in calibration:
            F.cross_entropy(model(x), y).backward()
    else:
        x = torch.cat([b[0] for b in calibration])
        with torch.no_grad(), importance.compute_importance(model):
            model(x)
    model.train(was_training)


@dataclass
class PrunePlan:
    """What was pruned: enough to report it and to rebuild the exact structure."""

    scorer: str
    ratios: dict[str, float]
    round_to: int | None
    history: list = field(default_factory=list)  # torch-pruning pruning_history(): (layer, is_out, idxs)

    def to_dict(self) -> dict:
        return {"scorer": self.scorer, "ratios": self.ratios, "round_to": self.round_to,
                "history": [[n, bool(o), [int(i) for i in idx]] for n, o, idx in self.history]}


def prune_with_plan(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratios: float | Mapping[str, float],
    scorer="l1",
    *,
    layout: GroupLayout | None = None,
    round_to: int | None = None,
    calibration: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    inplace: bool = False,
    check_forward: bool = True,
) -> tuple[nn.Module, PrunePlan]:
    """Prune a copy of ``model`` (or the model itself with ``inplace``) and return it with its plan.

    With ``check_forward`` the pruned model is run once and an AutopruneError names the layer that fails."""
    layout = layout or build_layout(model, example_inputs)
    per_group = _expand_ratios(layout, ratios)
    importance, needs, scorer_name = resolve_scorer(scorer)
    target = model if inplace else copy_model(model)
    plan = PrunePlan(scorer_name, per_group, round_to)
    if all(r == 0.0 for r in per_group.values()):
        return target, plan
    modules = dict(target.named_modules())
    # layers missing from the model sit in blocks that depth pruning replaced by the identity
    ratio_dict = {modules[root]: rounded_ratio(out_width(modules[root]), per_group[g], round_to)
                  for g, roots in layout.roots.items() for root in roots if root in modules}
    ratio_dict = {m: r for m, r in ratio_dict.items() if r > 0.0}
    if not ratio_dict:
        return target, plan
    _prepare_scorer(target, importance, needs, scorer_name, calibration)
    try:
        pruner = tp.pruner.MetaPruner(
            target, example_inputs, importance=importance, pruning_ratio=0.0, pruning_ratio_dict=ratio_dict,
            ignored_layers=[modules[n] for n in layout.ignored if n in modules], **pruner_kwargs(target, round_to),
        )
        pruner.step()
        after_pruning(target)
    except AutopruneError:
        raise
    except Exception as exc:
        raise AutopruneError(f"torch-pruning could not apply the plan: {first_line(exc)}") from None
    finally:
        target.zero_grad(set_to_none=True)
        for m in target.modules():
            if hasattr(m, "_importance"):
                del m._importance
    plan.history = list(pruner.pruning_history())
    if check_forward:
        _check_forward(target, example_inputs)
    return target, plan


def out_width(module: nn.Module) -> int:
    """A conv's output channels or a linear layer's output features."""
    return int(getattr(module, "out_channels", None) or module.out_features)


def _check_forward(model: nn.Module, example_inputs: torch.Tensor) -> None:
    """A pruned model must still run: a tracer that mis-grouped channels leaves mismatched widths behind."""
    broken = failing_layer(model, example_inputs)
    if broken is not None:
        raise AutopruneError(
            f"the pruned model fails on forward in layer {broken[0]!r} ({broken[1]}), so torch-pruning mis-grouped "
            "some coupled channels; keep those layers whole with 'ignore' or narrow 'prunable'")


def replay(model: nn.Module, example_inputs: torch.Tensor, history: Sequence) -> nn.Module:
    """Apply a recorded ``pruning_history`` to an unpruned model (in place) to rebuild the pruned structure."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False,
                                               customized_pruners=customized_pruners(model))
    dg.load_pruning_history([(n, bool(o), list(idx)) for n, o, idx in history])
    return after_pruning(model)


def structure(model: nn.Module) -> dict[str, list[int]]:
    """Parameter name -> shape: equal structures have equal signatures."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}
