"""The search space file: which layers share a ratio, the ratio range, scorers, searchable recovery settings,
warm starts, depth, the sensitivity scan and cost-target allocations."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from autoprune.config.base import Param, RangeParam, _known, _Strict

RECOVERY_SEARCHABLE = ("lr", "temperature", "alpha")
# recovery.steps is not a search-space parameter: a trial's fine-tune budgets are the study's rung ladder
STEPS_NOT_SEARCHED = ("cannot be set in the search space: fine-tune budgets are the rung ladder; set recovery.steps "
                      "in the study file, and fidelity.promote_steps for longer rungs")


class GroupsConfig(_Strict):
    """How layers share pruning ratios.

    ``by``: ``dependency`` (one ratio per torch-pruning dependency group), ``stage`` (the model's named stages),
    ``named`` (the groups given in ``named``: name -> module-name patterns) or ``global`` (one ratio for all).
    """

    by: Literal["dependency", "stage", "named", "global"] = "dependency"
    named: dict[str, list[str]] | None = None

    @model_validator(mode="after")
    def _named(self) -> GroupsConfig:
        if self.by == "named" and not self.named:
            raise ValueError("by: named needs a non-empty 'named' mapping of group name -> module patterns")
        if self.named is not None and any(len(v) == 0 for v in self.named.values()):
            raise ValueError("every named group needs at least one module pattern")
        return self


class WarmStartConfig(_Strict):
    """The hand-set baselines enqueued as the study's first trials, so the search starts from them.

    ``uniform``: one ratio for every group (scored by the first scorer); ``global``: torch-pruning's global
    pruning with group magnitude at these ratios, translated into per-group ratios (snapped to the ratio grid).
    ``anchors`` (studies with cost targets): powers ``p``; for each, an allocation with weights proportional to
    each group's MACs per parameter to the power ``p`` (p > 0 prunes the high-resolution early layers harder),
    placed on every target.
    """

    uniform: list[float] = Field(default_factory=list)
    global_: list[float] = Field(default_factory=list, alias="global")
    anchors: list[float] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("uniform", "global_")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        bad = [r for r in v if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"warm-start ratios must lie in [0, 1); got {bad}")
        return v


class DepthConfig(_Strict):
    """Residual blocks (module-name patterns) that the search may drop, replacing them by the identity.

    Only blocks whose output has the shape of their input qualify; each becomes a ``drop.<block>`` choice.
    """

    blocks: list[str] = Field(..., min_length=1)


class SensitivityConfig(_Strict):
    """A scan before the search: each group pruned alone at ``ratios``, scored by validation accuracy (on the first
    ``eval_images`` validation images) after BN re-calibration; each group's upper ratio becomes the largest scanned
    ratio whose accuracy drop stays within ``max_drop`` (at least the smallest scanned ratio)."""

    ratios: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75], min_length=1)
    max_drop: float = Field(0.1, gt=0, le=1)
    eval_images: int = Field(2000, ge=1)

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < r < 1.0 for r in v):
            raise ValueError(f"sensitivity ratios must lie in (0, 1); got {v}")
        return sorted(v)


class AllocationConfig(_Strict):
    """Exact-cost candidates (used when the study lists ``targets``): the search samples one weight per group
    in ``[low, high]`` (how the pruning is shared), and the weights are scaled onto the trial's target
    (:mod:`autoprune.engine.allocation`). Equal weights are uniform pruning."""

    low: float = Field(0.05, ge=0)
    high: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> AllocationConfig:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        return self


class SearchSpaceConfig(_Strict):
    groups: GroupsConfig = Field(default_factory=GroupsConfig)
    prunable: list[str] | None = None  # module-name patterns whose output channels may be pruned (None: model default)
    ignore: list[str] = Field(default_factory=list)  # module-name patterns never pruned
    ratio: RangeParam = Field(default_factory=lambda: RangeParam(low=0.0, high=0.5, step=0.05))
    scorers: list[str] = Field(default_factory=lambda: ["l1"], min_length=1)
    # keep channel counts multiples of this; a list makes it a searchable choice (1: no rounding)
    round_to: int | list[int] | None = None
    recovery: dict[str, Param] = Field(default_factory=dict)
    warm_start: WarmStartConfig = Field(default_factory=WarmStartConfig)
    depth: DepthConfig | None = None
    sensitivity: SensitivityConfig | None = None
    allocation: AllocationConfig = Field(default_factory=AllocationConfig)

    @field_validator("ratio")
    @classmethod
    def _ratio_range(cls, v: RangeParam) -> RangeParam:
        if v.low < 0 or v.high >= 1:
            raise ValueError(f"pruning ratios must lie in [0, 1); got low={v.low}, high={v.high}")
        return v

    @field_validator("round_to")
    @classmethod
    def _round_to(cls, v: int | list[int] | None) -> int | list[int] | None:
        values = v if isinstance(v, list) else [] if v is None else [v]
        if isinstance(v, list) and not v:
            raise ValueError("round_to is an empty list; give one value, several to search over, or null")
        if any(r < 1 for r in values):
            raise ValueError(f"round_to values must be >= 1 (1: no rounding); got {v}")
        if len(set(values)) != len(values):
            raise ValueError(f"round_to repeats a value: {v}")
        return sorted(values) if isinstance(v, list) else v

    @property
    def round_to_choices(self) -> list[int] | None:
        """The ``round_to`` values the search chooses among (None: not searchable)."""
        return self.round_to if isinstance(self.round_to, list) and len(self.round_to) > 1 else None

    @property
    def fixed_round_to(self) -> int | None:
        """The ``round_to`` of anything not sampled (baselines, the cost model's default): the one value, or the
        smallest of a searchable list."""
        return self.round_to[0] if isinstance(self.round_to, list) else self.round_to

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, v: list[str]) -> list[str]:
        from autoprune.pruning.scorers import SCORERS

        for name in v:
            _known(SCORERS.get, name)
        if len(set(v)) != len(v):
            raise ValueError(f"scorers repeat a name: {v}")
        return v

    @field_validator("recovery")
    @classmethod
    def _recovery_keys(cls, v: dict[str, Param]) -> dict[str, Param]:
        if "steps" in v:  # an error located at recovery.steps, not at recovery
            detail = InitErrorDetails(type=PydanticCustomError("value_error", STEPS_NOT_SEARCHED), loc=("steps",),
                                      input=v["steps"])
            raise ValidationError.from_exception_data("recovery", [detail])
        for key in v:
            if key not in RECOVERY_SEARCHABLE:
                raise ValueError(f"unknown recovery parameter {key!r}; expected one of {list(RECOVERY_SEARCHABLE)}")
        return v


