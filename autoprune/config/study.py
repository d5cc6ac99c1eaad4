"""The study file: model, data, objectives, recovery, rungs, measurement, targets, budget, storage, sampler."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from autoprune.config.base import DEFAULT_OBJECTIVES, _known, _Strict

GIVEN = "given:"  # model.name / data.name of objects handed to autoprune.search, accepted only from Python


def _given(info: ValidationInfo, name: str) -> bool:
    """Whether ``name`` names an object handed over from Python (``autoprune.search`` validates with the context
    ``{"given": True}``; a study file cannot)."""
    return name.startswith(GIVEN) and bool(info.context and info.context.get("given"))


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
    def _known_model(cls, v: str, info: ValidationInfo) -> str:
        from autoprune.models.factory import resolve_model

        if _given(info, v):
            return v
        return _known(resolve_model, v)


class DataConfig(_Strict):
    name: str  # a name in autoprune.data.splits.DATASETS, or "package.module:factory" (see autoprune.data.splits.resolve_data)
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
    # default (autoprune.data.streaming.default_workers). It changes no result, so it is in no fingerprint or cache key
    num_workers: int | None = Field(None, ge=0)
    # streamed splits (image folders, user data sets) whose decoded images together fit in this many MB are
    # decoded once, through the workers, and held in memory (a train_subset, a small folder); 0: always stream.
    # Like num_workers it changes no result, so it is in no fingerprint
    memory_mb: int = Field(1024, ge=0)

    @field_validator("name")
    @classmethod
    def _known_data_set(cls, v: str, info: ValidationInfo) -> str:
        from autoprune.data.splits import resolve_data

        if _given(info, v):
            return v
        return _known(resolve_data, v)

    @model_validator(mode="after")
    def _stats(self) -> DataConfig:
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


class RecoveryConfig(_Strict):
    """Fixed recovery settings; the search space may make lr, temperature and alpha searchable (``steps`` is the
    first rung of the fine-tune ladder, :func:`autoprune.engine.fidelity.rung_ladder`, set here only)."""

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
    non-dominated rank is continued one rung further by a later trial (:func:`autoprune.engine.fidelity.due`)."""

    promote_steps: int = Field(0, ge=0)
    # one factor for every promotion, or one per promotion, lowest rung first ([12, 2]: the best twelfth of rung 0
    # go up to the short recovery, the best half of those to the longer one)
    eta: float | list[float] = 3.0

    @field_validator("eta")
    @classmethod
    def _eta_above_one(cls, v: float | list[float]) -> float | list[float]:
        if not all(e > 1 for e in (v if isinstance(v, list) else [v])) or v == []:
            raise ValueError(f"eta must be above 1 (one number, or one per promotion): {v}")
        return v

    # Rung 0: every candidate is first scored after BatchNorm re-calibration alone (a few forward passes), and
    # only the best 1/eta of each target's rung-0 candidates are continued with the short recovery.
    bn_rung: bool = False
    # Score the first rung on this many validation images (a seeded subset) instead of all of them; every later
    # rung is scored on the whole validation split. None: every score uses the whole split.
    short_val_images: int | None = Field(None, ge=1)
    # a rung's places go to candidates whose ratios lie at least this far apart (Euclidean over the groups; 0: off),
    # so promotion does not spend its places on near-copies of one allocation
    min_distance: float = Field(0.0, ge=0)

    def ladder(self, steps: int) -> list[int]:
        """The rungs as cumulative fine-tune steps, given the short recovery's ``steps``
        (:func:`autoprune.engine.fidelity.rung_ladder` reads a study's from here)."""
        return sorted(set(([0] if self.bn_rung else []) + [steps] + ([steps + self.promote_steps]
                                                                       if self.promote_steps else [])))


class MeasureConfig(_Strict):
    latency_batch_size: int = Field(1, ge=1)
    latency_repeats: int = Field(20, ge=1)
    latency_warmup: int = Field(5, ge=0)
    threads: int | None = Field(None, ge=1)  # torch threads for measurement and training (None: torch default)
    latency_backend: str = "torch"  # torch | torchscript | onnxruntime (autoprune.metrics.latency.LATENCY_BACKENDS)

    @field_validator("latency_backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from autoprune.metrics.latency import LATENCY_BACKENDS

        return _known(LATENCY_BACKENDS.get, v)


class ConstraintsConfig(_Strict):
    min_accuracy: float | None = Field(None, ge=0, le=1)
    max_macs: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)


class TargetsConfig(_Strict):
    """Cost targets: every candidate is placed within 1 % of one of them (``macs_reduction: [1.5, 2, 3]``: 1.5x,
    2x and 3x fewer MACs than the base), so candidates of a target are compared at equal cost. Or
    ``latency_reduction``: placed on a predicted speed-up by the per-group latency model measured once per study
    (:mod:`autoprune.pruning.latency_model`). One of the two."""

    macs_reduction: list[float] | None = Field(None, min_length=1)
    latency_reduction: list[float] | None = Field(None, min_length=1)
    # trials per turn of each target, in increasing order of the targets (None: one each): [1, 1, 2] gives 3x
    # twice the trials of 1.5x and 2x, where the allocation matters most
    shares: list[int] | None = None
    # True: a new candidate goes to the target whose new candidates fall furthest below its share (promotions do not
    # count); False: targets in turn by trial number, where a promotion takes the place of the target whose turn it
    # was (benchmark v5: 26 / 20 / 17 candidates at 1.5x / 2x / 3x). Off until benchmark v6 measures it.
    balance: bool = False

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
    def _one_kind(self) -> TargetsConfig:
        if (self.macs_reduction is None) == (self.latency_reduction is None):
            raise ValueError("give one of macs_reduction or latency_reduction")
        if self.shares is not None and (len(self.shares) != len(self.values) or min(self.shares) < 1):
            raise ValueError(f"shares needs one whole number >= 1 per target ({len(self.values)}); got {self.shares}")
        return self

    @property
    def turns(self) -> list[float]:
        """The targets in the order trials take them, each ``shares`` times per round, spread over the round.

        >>> TargetsConfig(macs_reduction=[1.5, 2, 3], shares=[1, 1, 2]).turns
        [3.0, 1.5, 2.0, 3.0]
        """
        shares = self.shares or [1] * len(self.values)
        slots = [((j + 0.5) / k, i) for i, k in enumerate(shares) for j in range(k)]
        return [self.values[i] for _, i in sorted(slots)]

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
    # stop when this run has failed this many trials (default: n_trials, at least max_initial_failures)
    max_failures: int | None = Field(None, ge=1)


class StorageConfig(_Strict):
    url: str | None = None  # default: sqlite file in the study's folder
    study_name: str | None = None  # default: the study's name
    heartbeat_interval: int = Field(10, ge=1)  # seconds between a running trial's heartbeats
    grace_period: int = Field(60, ge=2)  # a RUNNING trial silent this long is stale: failed and retried
    max_retry: int = Field(2, ge=0)  # times a stale trial's parameters are retried


# The names autoprune.engine.samplers.SAMPLERS registers (the engine wing sits above this one, so the names are
# spelled here; tests/test_config.py checks that both lists agree).
SAMPLER_NAMES = ("allocation", "gp", "nsga2", "random", "tpe")


class SamplerConfig(_Strict):
    name: str = "tpe"  # one of SAMPLER_NAMES
    # tpe and gp: random trials before the model takes over; allocation: quasi-random (Sobol) ones per target
    n_startup_trials: int = Field(10, ge=0)

    @field_validator("name")
    @classmethod
    def _known_sampler(cls, v: str) -> str:
        if v not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {v!r}; valid names: {', '.join(sorted(SAMPLER_NAMES))}")
        return v


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

    @model_validator(mode="after")
    def _one_eta_per_promotion(self) -> StudyConfig:
        ladder = self.fidelity.ladder(self.recovery.steps)
        if isinstance(self.fidelity.eta, list) and len(self.fidelity.eta) != len(ladder) - 1:
            raise ValueError(f"fidelity.eta lists {len(self.fidelity.eta)} factors; this ladder {ladder} has "
                             f"{len(ladder) - 1} promotion(s): give one factor per promotion")
        return self

    @model_validator(mode="after")
    def _allocation_needs_targets(self) -> StudyConfig:
        if self.sampler.name == "allocation" and self.targets is None:
            raise ValueError("sampler 'allocation' searches allocations placed on cost targets: add targets "
                             "(for example targets: {macs_reduction: [1.5, 2, 3]}) or name another sampler")
        return self

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"objectives repeat a metric: {v}")
        if "accuracy" not in v:
            raise ValueError("objectives must include accuracy")
        return v


