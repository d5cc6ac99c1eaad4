"""How a candidate is scored: top-1 accuracy on the validation split (the default), or the user's own
``score(model) -> float`` (higher is better), checked to be a finite number and named in every table.

Example:
    >>> import torch
    >>> s = Score(lambda model: 0.5, "half")
    >>> s(torch.nn.Linear(2, 2)), s.name
    (0.5, 'half')
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from autoprune.errors import AutopruneError, first_line


class ScoreError(AutopruneError):
    """The user's score function raised, or returned something other than a finite number."""


def score_name(fn: Callable[..., object], default: str = "score") -> str:
    """What a score function is called in the tables: its ``__name__`` (a lambda or a partial: ``default``).

    >>> def mean_iou(model): ...
    >>> score_name(mean_iou), score_name(lambda m: 1.0)
    ('mean_iou', 'score')
    """
    name = getattr(fn, "__name__", "")
    return name if name and name.isidentifier() and name != "<lambda>" else default


def as_number(value: object, name: str) -> float:
    """``value`` as a float when it is a finite real number (a Python or numpy number, a one-element tensor);
    else a ScoreError naming the function.

    >>> as_number(torch.tensor(0.25), "miou")
    0.25
    >>> as_number(float("nan"), "miou")
    Traceback (most recent call last):
    ...
    autoprune.metrics.scoring.ScoreError: score function 'miou' returned nan; expected a finite number, higher is better
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        shown = f"a {type(value).__name__}" if not isinstance(value, (str, bool)) else repr(value)
        raise ScoreError(f"score function {name!r} returned {shown}; expected a finite number, higher is better")
    if not math.isfinite(float(value)):
        raise ScoreError(f"score function {name!r} returned {float(value)}; expected a finite number, higher is "
                         "better")
    return float(value)


@dataclass(frozen=True)
class Score:
    """The user's score function and its name; calling it scores a model in eval mode, without gradients."""

    fn: Callable[[nn.Module], object]
    name: str

    def __call__(self, model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                value = self.fn(model)
        except Exception as exc:  # noqa: BLE001 - the user's function: any error is theirs
            raise ScoreError(f"score function {self.name!r} failed: {first_line(exc)}") from exc
        finally:
            model.train(was_training)
        return as_number(value, self.name)
