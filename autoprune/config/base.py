"""The config wing's ground: a strict pydantic model (unknown keys are errors), the searchable parameter
kinds (a range or a list of choices), the metrics a study may name and their directions."""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoprune.errors import AutopruneError
from autoprune.pareto import Direction

METRICS = ("accuracy", "macs", "params", "latency_ms")
DIRECTIONS = {"accuracy": Direction.MAXIMIZE, "macs": Direction.MINIMIZE, "params": Direction.MINIMIZE,
              "latency_ms": Direction.MINIMIZE}
DEFAULT_OBJECTIVES = ("accuracy", "macs")  # a study's objectives when its file (or its stored study) names none


def _known(lookup: Callable[[str], Any], name: str) -> str:
    """``name`` if ``lookup`` (a registry's ``get``) knows it; else its message (which lists the valid names) as
    a validation error, so the field's name is added to it."""
    try:
        lookup(name)
    except AutopruneError as err:
        raise ValueError(err.message) from None
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RangeParam(_Strict):
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _order(self) -> RangeParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("a log range cannot have a step")
        return self


class ChoiceParam(_Strict):
    choices: list[float | int | str] = Field(..., min_length=1)


Param = float | int | RangeParam | ChoiceParam


