"""A trial's pruned model rebuilt from the base: its recorded torch-pruning history replayed on a copy (checked
against the trial's saved structure), or its plan applied again where the saved file is gone. Continuations and
the final retrain both start here."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autoprune.engine.context import StudyContext
from autoprune.engine.record import TrialRecord
from autoprune.errors import AutopruneError
from autoprune.models.copying import copy_model
from autoprune.pruning.depth import drop_blocks
from autoprune.pruning.structural import prune_with_plan, replay, structure


def trial_blob(record: TrialRecord) -> dict | None:
    path = record.model_file
    if not path or not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def base_copy(ctx: StudyContext, record: TrialRecord) -> nn.Module:
    """A copy of the base model without the residual blocks the trial dropped (depth pruning)."""
    return drop_blocks(copy_model(ctx.base), list(record.plan.dropped))


def rebuild(ctx: StudyContext, record: TrialRecord, trained: bool = False) -> tuple[nn.Module, list, bool]:
    """The trial's pruned structure with the base model's weights (with ``trained``, the trial's own fine-tuned
    weights where its saved model is there); returns (model, history, matches trial)."""
    blob = trial_blob(record)
    model = base_copy(ctx, record)
    if blob is not None:
        replay(model, ctx.example, blob["history"])
        want = {k: list(v.shape) for k, v in blob["state_dict"].items()}
        if structure(model) != want:
            raise AutopruneError(f"replaying trial {record.number}'s pruning history does not rebuild its structure")
        if trained:
            model.load_state_dict(blob["state_dict"])
        return model, [list(h) for h in blob["history"]], True
    plan = record.plan
    model, pplan = prune_with_plan(model, ctx.example, plan.ratios, plan.scorer, layout=ctx.layout,
                                   round_to=plan.round_to, calibration=ctx.calibration, inplace=True)
    params = sum(p.numel() for p in model.parameters())
    if params != record.metrics.params:
        raise AutopruneError(f"trial {record.number}'s saved model is gone and re-applying its plan gives "
                             f"{params} parameters, not the trial's {record.metrics.params}")
    return model, pplan.to_dict()["history"], True
