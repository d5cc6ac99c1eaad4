"""The trial record: what one trial did and measured, as one typed object.

A trial (:func:`autoprune.engine.trial.run_trial`) returns a :class:`TrialRecord`; the backends store it on the Optuna
trial with :meth:`TrialRecord.to_user_attrs` (:mod:`autoprune.engine.ask_tell`), and every reader (``status``,
``pareto``, ``select``, ``retrain``, the reports, promotion) reads it back with :meth:`TrialRecord.from_frozen`.
Nothing else parses Optuna's user attributes. The stored layout (keys ``metrics``, ``plan``, ``fidelity``,
``timings``, ``model_file``, ``fail_reason``, ``traceback``, ``ray``) is the one studies have used since the first
release, so older studies load unchanged (``tests/data/legacy_study``).

Example:
    >>> rec = TrialRecord(metrics=Metrics(0.9, 1000, 50, 0.2), plan=PlanRecord("l1", {"g": 0.3}))
    >>> TrialRecord.from_user_attrs(rec.to_user_attrs()).metrics.accuracy
    0.9
"""

from __future__ import annotations

import json
import traceback as tb
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from autoprune.errors import first_line

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from autoprune.config import ConstraintsConfig, RecoveryConfig

METRIC_NAMES = ("accuracy", "macs", "params", "latency_ms")
_PAIRED = ("latency_ratio", "latency_dispersion", "latency_reliable")  # Metrics' paired-latency fields


@dataclass(frozen=True)
class Metrics:
    """What a trial measured: validation accuracy (0..1, at the trial's final fidelity), MACs, parameters and the
    latency in milliseconds at the study's latency batch size.

    The latency is measured paired with the base model (:func:`autoprune.metrics.latency.paired_latency`):
    ``latency_ratio`` is the candidate's time over the base's in the same window, ``latency_dispersion`` the
    relative interquartile range of the per-pair ratios and ``latency_reliable`` whether that was low enough to
    trust. Records older than paired measurement have None for all three.
    """

    accuracy: float
    macs: int
    params: int
    latency_ms: float
    latency_ratio: float | None = None
    latency_dispersion: float | None = None
    latency_reliable: bool | None = None

    def __getitem__(self, name: str) -> float:
        """The metric an objective names (``"accuracy"``, ``"macs"``, ``"params"`` or ``"latency_ms"``)."""
        if name not in METRIC_NAMES:
            raise KeyError(f"unknown metric {name!r}; expected one of {list(METRIC_NAMES)}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}  # no paired latency: the older layout

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Metrics:
        ratio, dispersion, reliable = (d.get(k) for k in _PAIRED)
        return cls(float(d.get("accuracy", float("nan"))), int(d.get("macs", 0)), int(d.get("params", 0)),
                   float(d.get("latency_ms", float("nan"))), None if ratio is None else float(ratio),
                   None if dispersion is None else float(dispersion), None if reliable is None else bool(reliable))


@dataclass(frozen=True)
class Fidelity:
    """The rungs a trial climbed: its validation accuracy after each fine-tune budget it reached.

    ``scores``: fine-tune steps -> accuracy after them (0: BatchNorm re-calibration only); ``images``: steps -> the
    validation images that score used. Every score records its rung, so comparisons can be made at one rung
    (:func:`common_rung`). The first rung is the *short* score every trial has; a trial that climbed further was
    *promoted*, and its reported accuracy is the one at its highest rung.
    """

    scores: dict[int, float]
    images: dict[int, int | None] = field(default_factory=dict)
    hits: dict[int, str] = field(default_factory=dict)  # steps -> which images it got right (compare.encode_hits)

    @property
    def steps(self) -> int:
        """Fine-tune steps behind the reported (highest-rung) accuracy."""
        return max(self.scores)

    @property
    def short_steps(self) -> int:
        return min(self.scores)

    @property
    def short_accuracy(self) -> float:
        return self.scores[self.short_steps]

    @property
    def promoted(self) -> bool:
        return len(self.scores) > 1

    def score(self, steps: int) -> float | None:
        """The accuracy at the rung of ``steps`` fine-tune steps, if the trial reached it."""
        return self.scores.get(steps)

    def to_dict(self, accuracy: float) -> dict[str, Any]:
        return {"steps": self.steps, "short_steps": self.short_steps, "short_accuracy": self.short_accuracy,
                "accuracy": accuracy, "promoted": self.promoted,
                "short_val_images": self.images.get(self.short_steps), "val_images": self.images.get(self.steps),
                "scores": {str(k): v for k, v in sorted(self.scores.items())},
                "images": {str(k): v for k, v in sorted(self.images.items())},
                **({"hits": {str(k): v for k, v in sorted(self.hits.items())}} if self.hits else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], accuracy: float, steps: int) -> Fidelity:
        """Today's layout (``scores`` per rung) or the older one (a short score, and a longer one if promoted)."""
        if "scores" in d:
            return cls({int(k): float(v) for k, v in d["scores"].items()},
                       {int(k): v for k, v in (d.get("images") or {}).items()},
                       {int(k): str(v) for k, v in (d.get("hits") or {}).items()})
        top, short = int(d.get("steps", steps)), int(d.get("short_steps", d.get("steps", steps)))
        scores = {short: float(d.get("short_accuracy", accuracy))}
        images = {short: d.get("short_val_images")}
        if d.get("promoted") and top != short:
            scores[top], images[top] = float(d.get("accuracy", accuracy)), d.get("val_images")
        return cls(scores, images)


def common_rung(fidelities: Sequence[Fidelity]) -> int | None:
    """The highest rung (fine-tune steps) that every one of ``fidelities`` reached: the rung at which they can
    be compared (None for none).

    >>> common_rung([Fidelity({0: 0.5, 20: 0.8}), Fidelity({0: 0.4, 20: 0.7, 220: 0.9})])
    20
    >>> common_rung([Fidelity({0: 0.5}), Fidelity({20: 0.7})]) is None
    True
    """
    if not fidelities:
        return None
    shared = set(fidelities[0].scores).intersection(*(f.scores for f in fidelities[1:]))
    return max(shared) if shared else None


def heads(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Each candidate once: a trial that a completed trial continued (took a rung further) is left out, since its
    continuation holds all its scores and more. A candidate's lineage is its first trial and its continuations.

    >>> m = Metrics(0.9, 1.0, 1.0, 1.0)
    >>> a, b = TrialRecord(m, number=0), TrialRecord(m, number=1, continues=0)
    >>> [r.number for r in heads([a, b])], [r.number for r in heads([a])]
    ([1], [0])
    """
    continued = {r.continues for r in records if r.continues is not None and r.completed}
    return [r for r in records if r.number not in continued]


@dataclass(frozen=True)
class PlanRecord:
    """What a trial applied: the scorer, the per-group ratios, the blocks it dropped and the recovery it ran.

    ``recovery`` holds the trial's recovery settings (a :class:`~autoprune.config.RecoveryConfig` dump): the final
    retrain reads them with :meth:`recovery_settings`, so a change to recovery changes both.
    """

    scorer: str
    ratios: dict[str, float]
    round_to: int | None = None
    dropped: tuple[str, ...] = ()
    recovery: dict[str, Any] = field(default_factory=dict)
    finetune_steps: int = 0
    finetune_images: int = 0
    seed: int | None = None
    latency_method: str = ""
    teacher: str = ""
    target: float | None = None  # the MACs-reduction target the allocation was placed on (studies with targets)
    latency_backend: str | None = None  # the runtime latency was measured on (measure.latency_backend); None: older

    def recovery_settings(self, defaults: RecoveryConfig) -> RecoveryConfig:
        """The recovery settings the trial ran, ``defaults`` (the study's) filling what an old record lacks."""
        known = {k: v for k, v in self.recovery.items() if k in type(defaults).model_fields}
        return type(defaults).model_validate({**defaults.model_dump(), **known})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dropped"] = list(self.dropped)
        for key in ("target", "latency_backend"):
            if d[key] is None:
                del d[key]  # a study without targets (or an older trial) stores what it always stored
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanRecord:
        rec = dict(d.get("recovery") or {})
        steps = int(d.get("finetune_steps", rec.get("steps", 0)))
        return cls(str(d.get("scorer", "")), {str(k): float(v) for k, v in (d.get("ratios") or {}).items()},
                   d.get("round_to"), tuple(d.get("dropped") or ()), rec, steps,
                   int(d.get("finetune_images", steps * int(rec.get("batch_size", 0)))), d.get("seed"),
                   str(d.get("latency_method", "")), str(d.get("teacher", "")),
                   float(d["target"]) if d.get("target") is not None else None,
                   str(d["latency_backend"]) if d.get("latency_backend") is not None else None)


@dataclass(frozen=True)
class Failure:
    """Why a trial failed: the exception's type and first line, and the end of its traceback."""

    reason: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        """The failure of the exception being handled (call inside ``except``)."""
        return cls(first_line(exc), tb.format_exc()[-4000:])


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its plan, metrics, fidelity, timings, saved model, or its failure.

    ``number``, ``state`` and ``params`` are filled when the record is read back from a study
    (:meth:`from_frozen`); a record a trial returns has none of them.
    """

    metrics: Metrics | None = None
    plan: PlanRecord | None = None
    fidelity: Fidelity | None = None
    timings: dict[str, float] = field(default_factory=dict)
    model_file: str | None = None
    failure: Failure | None = None
    node: dict[str, str] | None = None  # where a Ray trial ran: {"node", "host"}
    number: int | None = None
    state: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # why a trial past the shared budget did not run
    warm_start: str | None = None  # the hand-set baseline the trial is: "uniform" or "global" ("baseline": older)
    continues: int | None = None  # the trial this one took one rung further (deferred promotion)

    @property
    def completed(self) -> bool:
        return self.metrics is not None and self.failure is None

    @property
    def promoted(self) -> bool:
        return bool(self.fidelity and self.fidelity.promoted)

    @property
    def target(self) -> float | None:
        """The cost target the trial's allocation was placed on (None: a study without targets, or no plan)."""
        return self.plan.target if self.plan is not None else None

    @property
    def short_accuracy(self) -> float:
        """The accuracy at the first rung (the reported accuracy for a trial never promoted)."""
        if self.metrics is None:
            raise ValueError("a failed trial has no accuracy")
        return self.fidelity.short_accuracy if self.fidelity else self.metrics.accuracy

    def accuracy_at(self, steps: int | None) -> float | None:
        """The accuracy at the rung of ``steps`` fine-tune steps (None: the reported one), if reached."""
        if self.metrics is None:
            return None
        if steps is None:
            return self.metrics.accuracy
        return self.fidelity.score(steps) if self.fidelity else None

    def objective_values(self, objectives: Sequence[str]) -> list[float]:
        if self.metrics is None:
            raise ValueError("a failed trial has no objective values")
        return [float(self.metrics[o]) for o in objectives]

    def short_point(self, objectives: Sequence[str]) -> list[float]:
        """The objective vector at the short fidelity (the short-recovery accuracy in place of accuracy)."""
        return [self.short_accuracy if o == "accuracy" else v for o, v in zip(objectives, self.objective_values(objectives))]

    def constraint_values(self, constraints: ConstraintsConfig) -> dict[str, float]:
        """Optuna constraint values (<= 0 is feasible) for the study's constraints that are set."""
        if self.metrics is None:
            raise ValueError("a failed trial has no constraint values")
        m, c, out = self.metrics, constraints, {}
        if c.min_accuracy is not None:
            out["min_accuracy"] = c.min_accuracy - m.accuracy
        if c.max_macs is not None:
            out["max_macs"] = m.macs - c.max_macs
        if c.max_latency_ms is not None:
            out["max_latency_ms"] = m.latency_ms - c.max_latency_ms
        return out

    def with_failure(self, failure: Failure) -> TrialRecord:
        return replace(self, failure=failure)

    # ------------------------------------------------------------------------------------ the ask/tell boundary
    def to_user_attrs(self) -> dict[str, Any]:
        """The Optuna user attributes this record is stored as (JSON-serialisable)."""
        out: dict[str, Any] = {}
        if self.metrics is not None:
            out["metrics"] = self.metrics.to_dict()
        if self.timings:
            out["timings"] = {k: round(float(v), 4) for k, v in self.timings.items()}
        if self.plan is not None:
            out["plan"] = self.plan.to_dict()
        if self.model_file:
            out["model_file"] = self.model_file
        if self.fidelity is not None and self.metrics is not None:
            out["fidelity"] = self.fidelity.to_dict(self.metrics.accuracy)
        if self.failure is not None:
            out["fail_reason"] = self.failure.reason
            if self.failure.traceback:
                out["traceback"] = self.failure.traceback
        if self.node:
            out["ray"] = dict(self.node)
        if self.warm_start:
            out["warm_start"] = self.warm_start
        if self.continues is not None:
            out["continues"] = self.continues
        return out

    @classmethod
    def from_user_attrs(cls, attrs: Mapping[str, Any], *, number: int | None = None, state: str | None = None,
                        params: Mapping[str, Any] | None = None) -> TrialRecord:
        """Read a record back from Optuna user attributes (today's and older studies' layouts)."""
        metrics = Metrics.from_dict(attrs["metrics"]) if "metrics" in attrs else None
        plan = PlanRecord.from_dict(attrs["plan"]) if "plan" in attrs else None
        fidelity = None
        if metrics is not None:
            fidelity = Fidelity.from_dict(attrs.get("fidelity") or {}, metrics.accuracy,
                                          plan.finetune_steps if plan else 0)
        failure = Failure(str(attrs["fail_reason"]), str(attrs.get("traceback", ""))) if "fail_reason" in attrs else None
        return cls(metrics, plan, fidelity, dict(attrs.get("timings") or {}), attrs.get("model_file"), failure,
                   attrs.get("ray"), number, state, dict(params or {}), attrs.get("skipped"),
                   _baseline_kind(attrs.get("warm_start")),
                   int(attrs["continues"]) if attrs.get("continues") is not None else None)

    @classmethod
    def from_frozen(cls, frozen: FrozenTrial) -> TrialRecord:
        return cls.from_user_attrs(frozen.user_attrs, number=frozen.number, state=frozen.state.name,
                                   params=frozen.params)

    def to_json(self) -> str:
        """For carrying a record between processes (a Ray worker to its driver)."""
        return json.dumps(self.to_user_attrs())

    @classmethod
    def from_json(cls, text: str) -> TrialRecord:
        return cls.from_user_attrs(json.loads(text))

    def entry(self, rung: int | None = None) -> dict[str, Any]:
        """A completed trial as a front entry (``pareto --json``): trial, accuracy (at the rung of ``rung``
        fine-tune steps; None: the reported one), rung, macs, params, latency_ms (and, where measured paired
        with the base, latency_ratio, latency_dispersion, latency_reliable), config (the sampled parameters),
        plan, timings, fidelity."""
        m = self.metrics or Metrics.from_dict({})
        acc = self.accuracy_at(rung)
        return {"trial": self.number, "accuracy": m.accuracy if acc is None else acc,
                "rung": self.fidelity.steps if rung is None and self.fidelity else rung,
                "macs": m.macs, "params": m.params, "latency_ms": m.latency_ms,
                **{k: getattr(m, k) for k in _PAIRED if getattr(m, k) is not None},
                "config": dict(self.params),
                "plan": self.plan.to_dict() if self.plan else {}, "timings": dict(self.timings),
                "fidelity": self.fidelity.to_dict(m.accuracy) if self.fidelity else {}}


def _baseline_kind(value: Any) -> str | None:
    """Older studies stored ``warm_start: true``; newer ones the baseline's kind."""
    if value is True:
        return "baseline"
    return str(value) if value else None
