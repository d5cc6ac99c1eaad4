"""autoprune: automated structured-pruning search for PyTorch.

Public API:
    prune(model, example_inputs, ratios=..., scorer=...) -> a structurally pruned copy
    measure(model, example_inputs) -> {"macs", "params", "latency_ms"}
    load_pruned(path, model) -> a pruned model rebuilt from its saved history and weights
    load_study(path) -> a validated study
    search(model, train_data=..., val_data=..., targets=...) -> the Pareto front of a search over your own objects
    load_result(storage, study_name, model=None) -> a stored search, to inspect
"""

from __future__ import annotations

from autoprune.api import Candidate, Final, SearchResult, load_result, search
from autoprune.config import load_study
from autoprune.errors import AutopruneError, ConfigError
from autoprune.metrics.costs import measure
from autoprune.pruning.one_shot import prune
from autoprune.pruning.saving import load_pruned

__all__ = ["AutopruneError", "Candidate", "ConfigError", "Final", "SearchResult", "load_pruned", "load_result", "load_study",
           "measure", "prune", "search"]
__version__ = "0.1.0"
