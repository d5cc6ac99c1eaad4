"""What every backend takes and returns: the search options and the outcome of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna


@dataclass
class SearchOutcome:
    """How a search run ended: the study, its COMPLETE trials, what this run ran and failed, whether it was
    interrupted, and the backend's messages about errored trials."""

    study: optuna.Study
    completed: int
    ran_here: int
    failed_here: int
    interrupted: bool = False
    messages: list[str] = field(default_factory=list)
    restored: bool = False


@dataclass
class SearchOptions:
    """How to run the rest of a study's budget (``autoprune search``'s options)."""

    n_trials: int
    timeout: float | None = None
    seed: int | None = None
    device: str = "cpu"
    workers: int = 1
    ray_address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    worker_args: list[str] = field(default_factory=list)  # the `autoprune` arguments a local worker repeats
