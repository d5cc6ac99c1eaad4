"""Validated study and search-space models, and their YAML loading.

A study file names the model, the data, the search space (a separate YAML file), the objectives, the recovery
settings, the budget and the storage. Every model forbids unknown keys; a failed validation becomes one
:class:`~autoprune.errors.ConfigError` naming the file and the dotted field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, field_validator,
                      model_serializer, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from autoprune.errors import AutopruneError, ConfigError
from autoprune.pareto import Direction

METRICS = ("accuracy", "macs", "params", "latency_ms")
DIRECTIONS = {"accuracy": Direction.MAXIMIZE, "macs": Direction.MINIMIZE, "params": Direction.MINIMIZE,
              "latency_ms": Direction.MINIMIZE}
DEFAULT_OBJECTIVES = ("accuracy", "macs")  # a study's objectives when its file (or its stored study) names none
RECOVERY_SEARCHABLE = ("lr", "temperature", "alpha")
# recovery.steps is not a search-space parameter: a trial's fine-tune budgets are the study's rung ladder
STEPS_NOT_SEARCHED = ("cannot be set in the search space: fine-tune budgets are the rung ladder; set recovery.steps "
                      "in the study file, and fidelity.promote_steps for longer rungs")


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


# --------------------------------------------------------------------------------------------- model and data
class BaseTrainingConfig(_Strict):
    """How the base model is trained when the study names no checkpoint."""

    epochs: int = Field(20, ge=1)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(5e-4, ge=0)


class ModelConfig(_Strict):
    name: str = Field(..., min_length=1)
    num_classes: int | None = Field(None, ge=2)
    checkpoint: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    base_training: BaseTrainingConfig = Field(default_factory=BaseTrainingConfig)

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from autoprune.models import resolve_model

        return _known(resolve_model, v)


class DataConfig(_Strict):
    name: str  # a name in autoprune.data.DATASETS, or "package.module:factory" (see autoprune.data.resolve_data)
    root: str | None = None  # a factory gets it as root= (when set)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # a factory's keyword arguments
    val_source: Literal["train", "test"] = "train"
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)  # only for data sets without an official test split
    seed: int = 0
    mean: list[float] | None = None
    std: list[float] | None = None
    augment: bool = False
    image_size: int = Field(224, ge=8)  # ImageFolder images are resized to this
    train_subset: int | None = Field(None, ge=1)  # use at most this many training images (seeded)
    batch_size: int = Field(256, ge=1)  # evaluation batch size
    # loader worker processes of a streamed data set (image folders, user data sets); None: the machine's
    # default (autoprune.streaming.default_workers). It changes no result, so it is in no fingerprint or cache key
    num_workers: int | None = Field(None, ge=0)
    # streamed splits (image folders, user data sets) whose decoded images together fit in this many MB are
    # decoded once, through the workers, and held in memory (a train_subset, a small folder); 0: always stream.
    # Like num_workers it changes no result, so it is in no fingerprint
    memory_mb: int = Field(1024, ge=0)

    @field_validator("name")
    @classmethod
    def _known_data_set(cls, v: str) -> str:
        from autoprune.data import resolve_data

        return _known(resolve_data, v)

    @model_validator(mode="after")
    def _stats(self) -> "DataConfig":
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        if self.name == "imagefolder" and not self.root:
            raise ValueError("data.root is required for imagefolder")
        if self.kwargs and ":" not in self.name:
            raise ValueError("data.kwargs is only for a package.module:factory data set")
        if "root" in self.kwargs:
            raise ValueError("give the folder as data.root (the factory gets it as root=), not data.kwargs.root")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Empty kwargs are left out, so studies written before kwargs existed keep their fingerprint and caches;
        num_workers and memory_mb always are: they change how the data is read, not what is read."""
        dumped = handler(self)
        if not self.kwargs:
            dumped.pop("kwargs", None)
        dumped.pop("num_workers", None)
        dumped.pop("memory_mb", None)
        return dumped


# ------------------------------------------------------------------------------------------------ search space
class RangeParam(_Strict):
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _order(self) -> "RangeParam":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("a log range cannot have a step")
        return self


class ChoiceParam(_Strict):
    choices: list[Union[float, int, str]] = Field(..., min_length=1)


Param = Union[float, int, RangeParam, ChoiceParam]


class GroupsConfig(_Strict):
    """How layers share pruning ratios.

    ``by``: ``dependency`` (one ratio per torch-pruning dependency group), ``stage`` (the model's named stages),
    ``named`` (the groups given in ``named``: name -> module-name patterns) or ``global`` (one ratio for all).
    """

    by: Literal["dependency", "stage", "named", "global"] = "dependency"
    named: dict[str, list[str]] | None = None

    @model_validator(mode="after")
    def _named(self) -> "GroupsConfig":
        if self.by == "named" and not self.named:
            raise ValueError("by: named needs a non-empty 'named' mapping of group name -> module patterns")
        if self.named is not None and any(len(v) == 0 for v in self.named.values()):
            raise ValueError("every named group needs at least one module pattern")
        return self


class WarmStartConfig(_Strict):
    """The hand-set baselines enqueued as the study's first trials, so the search starts from them.

    ``uniform``: one ratio for every group (scored by the first scorer); ``global``: torch-pruning's global
    pruning with group magnitude at these ratios, translated into per-group ratios (snapped to the ratio grid).
    """

    uniform: list[float] = Field(default_factory=list)
    global_: list[float] = Field(default_factory=list, alias="global")

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
    (:mod:`autoprune.allocation`). Equal weights are uniform pruning."""

    low: float = Field(0.05, ge=0)
    high: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> "AllocationConfig":
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
        from autoprune.scorers import SCORERS

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


# ------------------------------------------------------------------------------------------------ the study
class RecoveryConfig(_Strict):
    """Fixed recovery settings; the search space may make lr, temperature and alpha searchable (``steps`` is the
    first rung of the fine-tune ladder, :func:`autoprune.fidelity.rung_ladder`, set here only)."""

    bn_recalibration_batches: int = Field(10, ge=0)
    steps: int = Field(50, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)
    teacher_cache: bool = True  # every trial fine-tunes on one cached stream of batches with the teacher's logits
    # bf16 autocast in every fine-tune and the retrain; auto: bf16 on CUDA, fp32 elsewhere (the CPU's bf16 is slow)
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class FidelityConfig(_Strict):
    """Multi-fidelity search: rungs of BN re-calibration only (``bn_rung``), ``recovery.steps`` and
    ``promote_steps`` more (0: off); a candidate in the best 1/eta of its target's candidates at its rung by
    non-dominated rank is continued one rung further by a later trial (:func:`autoprune.fidelity.due`)."""

    promote_steps: int = Field(0, ge=0)
    eta: float = Field(3.0, gt=1)
    # Rung 0: every candidate is first scored after BatchNorm re-calibration alone (a few forward passes), and
    # only the best 1/eta of each target's rung-0 candidates are continued with the short recovery.
    bn_rung: bool = False
    # Score the short recovery on this many validation images (a seeded subset) instead of all of them; promoted
    # trials are re-scored on the whole validation split. None: every score uses the whole split.
    short_val_images: int | None = Field(None, ge=1)


class MeasureConfig(_Strict):
    latency_batch_size: int = Field(1, ge=1)
    latency_repeats: int = Field(20, ge=1)
    latency_warmup: int = Field(5, ge=0)
    threads: int | None = Field(None, ge=1)  # torch threads for measurement and training (None: torch default)
    latency_backend: str = "torch"  # torch | torchscript | onnxruntime (autoprune.latency.LATENCY_BACKENDS)

    @field_validator("latency_backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from autoprune.latency import LATENCY_BACKENDS

        return _known(LATENCY_BACKENDS.get, v)


class ConstraintsConfig(_Strict):
    min_accuracy: float | None = Field(None, ge=0, le=1)
    max_macs: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)


class TargetsConfig(_Strict):
    """Cost targets: every candidate is placed within 1 % of one of them (``macs_reduction: [1.5, 2, 3]``: 1.5x,
    2x and 3x fewer MACs than the base), so candidates of a target are compared at equal cost. Or
    ``latency_reduction``: placed on a predicted speed-up by the per-group latency model measured once per study
    (:mod:`autoprune.latency_model`). One of the two."""

    macs_reduction: list[float] | None = Field(None, min_length=1)
    latency_reduction: list[float] | None = Field(None, min_length=1)

    @field_validator("macs_reduction", "latency_reduction")
    @classmethod
    def _reductions(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        bad = [t for t in v if t <= 1.0]
        if bad:
            raise ValueError(f"a reduction target must be > 1 (2 = half the MACs, or twice as fast); got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"targets repeat a value: {v}")
        return sorted(float(t) for t in v)

    @model_validator(mode="after")
    def _one_kind(self) -> "TargetsConfig":
        if (self.macs_reduction is None) == (self.latency_reduction is None):
            raise ValueError("give one of macs_reduction or latency_reduction")
        return self

    @property
    def values(self) -> list[float]:
        """The targets, whichever kind."""
        return list(self.macs_reduction or self.latency_reduction or [])

    @property
    def objective(self) -> str:
        """The cost the targets pin: ``macs`` or ``latency_ms`` (candidates of a target differ in it only by noise
        or the tolerance, so promotion ranks them without it)."""
        return "macs" if self.macs_reduction is not None else "latency_ms"


class BudgetConfig(_Strict):
    n_trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0)
    max_initial_failures: int = Field(5, ge=1)  # stop when this run's first K trials all fail
    max_failures: int | None = Field(None, ge=1)  # stop when this run has failed this many trials (default: n_trials, at least max_initial_failures)


class StorageConfig(_Strict):
    url: str | None = None  # default: sqlite file in the study's folder
    study_name: str | None = None  # default: the study's name
    heartbeat_interval: int = Field(10, ge=1)  # seconds between a running trial's heartbeats
    grace_period: int = Field(60, ge=2)  # a RUNNING trial silent this long is stale: failed and retried
    max_retry: int = Field(2, ge=0)  # times a stale trial's parameters are retried


class SamplerConfig(_Strict):
    name: str = "tpe"  # a name in autoprune.samplers.SAMPLERS
    n_startup_trials: int = Field(10, ge=0)  # tpe and gp: random trials before the model takes over

    @field_validator("name")
    @classmethod
    def _known_sampler(cls, v: str) -> str:
        from autoprune.samplers import SAMPLERS

        return _known(SAMPLERS.get, v)


class StudyConfig(_Strict):
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    workdir: str | None = None  # default: runs/<name>
    seed: int = 0
    model: ModelConfig
    data: DataConfig
    search_space: str
    objectives: list[Literal["accuracy", "macs", "params", "latency_ms"]] = Field(
        default_factory=lambda: list(DEFAULT_OBJECTIVES), min_length=2
    )
    constraints: ConstraintsConfig = Field(default_factory=ConstraintsConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    targets: TargetsConfig | None = None  # cost targets: exact-cost candidates (None: candidates anywhere)

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"objectives repeat a metric: {v}")
        if "accuracy" not in v:
            raise ValueError("objectives must include accuracy")
        return v


class Study:
    """A loaded study: the validated config, its search space and where its files live.

    Example:
        >>> study = load_study("studies/quickstart.yaml")  # doctest: +SKIP
        >>> study.config.budget.n_trials  # doctest: +SKIP
        24
    """

    def __init__(self, config: StudyConfig, space: SearchSpaceConfig, path: Path | None, space_path: Path | None):
        self.config = config
        self.space = space
        self.path = path
        self.space_path = space_path

    @property
    def workdir(self) -> Path:
        return Path(self.config.workdir or f"runs/{self.config.name}")

    @property
    def study_name(self) -> str:
        return self.config.storage.study_name or self.config.name

    @property
    def storage_url(self) -> str:
        if self.config.storage.url:
            return self.config.storage.url
        return f"sqlite:///{(self.workdir / 'study.db').as_posix()}"

    @property
    def directions(self) -> list[Direction]:
        return [DIRECTIONS[m] for m in self.config.objectives]

    def _defining(self) -> dict[str, Any]:
        return {
            "model": self.config.model.model_dump(exclude={"checkpoint"}),
            "data": self.config.data.model_dump(exclude={"root"}),
            # allocation settings mean something only with targets: a study without them keeps the fingerprint it
            # had before they existed, so it resumes
            "space": self.space.model_dump(exclude=None if self.config.targets else {"allocation"}),
            "objectives": self.config.objectives,
            # precision counts only when set: studies from before it keep their fingerprint ("auto" follows the device)
            "recovery": self.config.recovery.model_dump(exclude={"precision"} if self.config.recovery.precision == "auto"
                                                        else None),
            # a setting added since (bn_rung) counts only when it is on, so older studies keep their fingerprint
            "fidelity": self.config.fidelity.model_dump(exclude=None if self.config.fidelity.bn_rung else {"bn_rung"}),
            **({"targets": self.config.targets.model_dump(exclude_none=True)} if self.config.targets else {}),
        }

    def fingerprint(self) -> str:
        """A hash of everything that defines what a trial means (not the budget or the storage)."""
        return _digest(self._defining())

    def fingerprint_parts(self) -> dict[str, str]:
        """One hash per part of :meth:`fingerprint`, so a mismatch can say which part differs."""
        return {key: _digest(value) for key, value in self._defining().items()}


def _digest(blob: Any) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# pydantic names the member of a union in an error's location: "recovery.lr.ChoiceParam.choices", or
# "recovery.lr.function-after[_order(), RangeParam]" for a model with a validator
_UNION_TAGS = {"float", "int", "str", "RangeParam", "ChoiceParam"}


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in _UNION_TAGS or part.startswith("function-"))
_WRONG_KIND = {"float_type", "int_type", "string_type", "model_type", "model_attributes_type"}


def _union_error(errors: list[Any]) -> Any:
    """Of the errors a union gives (one set per member), the member's the input was most likely meant for:
    not of the wrong kind, fewest errors, deepest location."""
    first = errors[0]
    at = next((i for i, part in enumerate(first["loc"]) if _is_tag(part)), None)
    if at is None:
        return first
    members: dict[str, list[Any]] = {}
    for e in errors:
        if tuple(e["loc"][:at]) == tuple(first["loc"][:at]) and len(e["loc"]) > at and _is_tag(e["loc"][at]):
            members.setdefault(e["loc"][at], []).append(e)
    ranked = sorted(members.values(), key=lambda es: (all(e["type"] in _WRONG_KIND for e in es), len(es),
                                                     -max(len(e["loc"]) for e in es)))
    return ranked[0][0]


def _format_validation(err: ValidationError) -> tuple[str, str]:
    first = _union_error(err.errors())
    field = ".".join(str(p) for p in first["loc"] if not _is_tag(p)) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required field is missing"
    elif "input" in first and first["type"] not in ("value_error",):
        msg = f"{msg} (got {first['input']!r})"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return field, msg


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("file not found", source=str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}", source=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level", source=str(path))
    return data


def parse_search_space(data: dict[str, Any], source: str = "<search space>") -> SearchSpaceConfig:
    try:
        return SearchSpaceConfig.model_validate(data)
    except ValidationError as err:
        field, msg = _format_validation(err)
        raise ConfigError(msg, source=source, field=field) from None


def load_search_space(path: str | Path) -> SearchSpaceConfig:
    path = Path(path)
    return parse_search_space(_read_yaml(path), source=str(path))


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> Study:
    """Load and validate a study file and the search space it names.

    Args:
        path: the study YAML.
        overrides: dotted keys to set before validation, e.g. ``{"model.checkpoint": "w.pt"}`` (CLI flags).

    Raises:
        ConfigError: naming the file and field of the first problem.
    """
    path = Path(path)
    data = _read_yaml(path)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            if node.get(key) is None:
                node[key] = {}
            if not isinstance(node[key], dict):
                raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a mapping", source=str(path), field=dotted)
            node = node[key]
        node[leaf] = value
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as err:
        field, msg = _format_validation(err)
        raise ConfigError(msg, source=str(path), field=field) from None
    space_path = Path(config.search_space)
    if not space_path.is_absolute():
        candidate = path.parent / space_path
        space_path = candidate if candidate.is_file() else space_path
    if not space_path.is_file():
        raise ConfigError(f"search space file {config.search_space!r} not found", source=str(path), field="search_space")
    space = load_search_space(space_path)
    if config.targets and space.depth is not None:
        raise ConfigError("cost targets cannot be combined with depth pruning yet (the cost model is of the model "
                          "without dropped blocks); remove 'depth' or the study's 'targets'", source=str(space_path),
                          field="depth")
    return Study(config, space, path, space_path)
