"""The config wing: validated study and search-space files (pydantic models, one per concern) and their loading.

Every model forbids unknown keys; a failed validation is one :class:`~autoprune.errors.ConfigError` naming the file
and the dotted field. Depends on the ground floor and, to check names a user writes, on the registries of the
models, data, metrics and pruning wings below it; never on the engine wing or above.
"""

from __future__ import annotations

from autoprune.config.base import DEFAULT_OBJECTIVES, DIRECTIONS, METRICS, ChoiceParam, Param, RangeParam
from autoprune.config.loading import Study, load_search_space, load_study, parse_search_space
from autoprune.config.space import (
                                    RECOVERY_SEARCHABLE,
                                    STEPS_NOT_SEARCHED,
                                    AllocationConfig,
                                    DepthConfig,
                                    GroupsConfig,
                                    SearchSpaceConfig,
                                    SensitivityConfig,
                                    WarmStartConfig,
)
from autoprune.config.study import (
                                    SAMPLER_NAMES,
                                    BaseTrainingConfig,
                                    BudgetConfig,
                                    ConstraintsConfig,
                                    DataConfig,
                                    FidelityConfig,
                                    MeasureConfig,
                                    ModelConfig,
                                    RecoveryConfig,
                                    SamplerConfig,
                                    StorageConfig,
                                    StudyConfig,
                                    TargetsConfig,
)

__all__ = [
    "DEFAULT_OBJECTIVES", "DIRECTIONS", "METRICS", "RECOVERY_SEARCHABLE", "SAMPLER_NAMES", "STEPS_NOT_SEARCHED",
    "AllocationConfig", "BaseTrainingConfig", "BudgetConfig", "ChoiceParam", "ConstraintsConfig", "DataConfig",
    "DepthConfig", "FidelityConfig", "GroupsConfig", "MeasureConfig", "ModelConfig", "Param", "RangeParam",
    "RecoveryConfig", "SamplerConfig", "SearchSpaceConfig", "SensitivityConfig", "StorageConfig", "Study",
    "StudyConfig", "TargetsConfig", "WarmStartConfig", "load_search_space", "load_study", "parse_search_space",
]
