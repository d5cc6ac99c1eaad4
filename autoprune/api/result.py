"""What a search from Python returns: the study, its Pareto front as :class:`Candidate` objects, the same selection
rules as ``autoprune select``, and a table that reads as text in a terminal and as HTML in a notebook.

Example:
    >>> result = autoprune.search(model, train_data=train, val_data=val, targets=[2, 3])  # doctest: +SKIP
    >>> pick = result.select(knee=True)  # doctest: +SKIP
    >>> pruned = pick.model()  # doctest: +SKIP
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from autoprune.errors import AutopruneError
from autoprune.pareto import select as select_entry

if TYPE_CHECKING:
    import optuna

COLUMNS = ("trial", "score", "macs", "params", "latency_ms", "rung")


@dataclass
class Candidate:
    """One candidate of a front: its trial number, its metrics (the score under its own name, MACs, parameters,
    latency, the rung it was compared at), its plan (per-group ratios, scorer), and its pruned, recovered model."""

    trial: int
    metrics: dict[str, Any]
    plan: dict[str, Any]
    model_file: str | None
    _unpruned: Callable[[], nn.Module] | None = field(default=None, repr=False)
    reason: str | None = None  # why it was selected (by :meth:`SearchResult.select`)

    def model(self) -> nn.Module:
        """The pruned, recovered model as the search left it (rebuilt from its saved pruning history)."""
        from pathlib import Path

        from autoprune.pruning.saving import load_pruned

        if not self.model_file or not Path(self.model_file).is_file():
            raise AutopruneError(f"trial {self.trial}'s model file {self.model_file!r} is gone (a study's models "
                                 "live in its folder's models/)")
        if self._unpruned is None:
            raise AutopruneError("this result was loaded without the unpruned model; pass model= to load_result to "
                                 "rebuild candidates")
        return load_pruned(self.model_file, self._unpruned())


@dataclass
class SearchResult:
    """A finished (or stopped) search: the Optuna study, the base model's reference figures and the front."""

    study: optuna.Study
    base: dict[str, Any]
    front: list[Candidate]
    score_name: str = "accuracy"
    interrupted: bool = False

    @classmethod
    def of(cls, ost: optuna.Study, unpruned: Callable[[], nn.Module] | None, rung: int | None = None,
           interrupted: bool = False) -> SearchResult:
        from autoprune.engine.storage import StudyAttrs, front

        base = StudyAttrs.from_study(ost).base
        name = base.get("score_name", "accuracy")
        cands = [Candidate(e["trial"], {name: e["accuracy"], **{k: e.get(k) for k in COLUMNS[2:]}},
                           e["plan"], _model_file(ost, e["trial"]), unpruned) for e in front(ost, rung)]
        return cls(ost, base, cands, name, interrupted)

    def select(self, *, min_score: float | None = None, max_macs: float | None = None,
               max_latency_ms: float | None = None, knee: bool = False, **named: float) -> Candidate:
        """One candidate of the front, by the rules of ``autoprune select``: caps (``max_macs``,
        ``max_latency_ms``) and a floor on the score filter the front, then ``knee=True`` picks its knee, a floor
        alone the cheapest, caps alone the most accurate. The floor may be named after the score
        (``min_accuracy=0.9``, ``min_mean_iou=0.5``). The reason is on ``.reason``."""
        floor = _floor(min_score, named, self.score_name)
        entries = [{"accuracy": c.metrics[self.score_name], "i": i, **c.metrics} for i, c in enumerate(self.front)]
        try:
            entry, why = select_entry(entries, "macs", min_accuracy=floor, max_macs=max_macs,
                                      max_latency_ms=max_latency_ms, knee=knee)
        except LookupError as exc:
            raise AutopruneError(str(exc).strip("'\"").replace("accuracy", self.score_name), field="select") from None
        chosen = self.front[entry["i"]]
        return Candidate(chosen.trial, chosen.metrics, chosen.plan, chosen.model_file, chosen._unpruned,
                         why.replace("accuracy", self.score_name))

    def rows(self) -> list[list[str]]:
        """The front as table rows (the base first), formatted."""
        base = ["base", f"{self.base.get('accuracy', float('nan')):.4f}", f"{self.base.get('macs', 0):,}",
                f"{self.base.get('params', 0):,}", f"{self.base.get('latency_ms', float('nan')):.3f}", "-"]
        return [base] + [[str(c.trial), f"{c.metrics[self.score_name]:.4f}", f"{c.metrics['macs']:,}",
                          f"{c.metrics['params']:,}", f"{c.metrics['latency_ms']:.3f}", str(c.metrics['rung'])]
                         for c in self.front]

    def header(self) -> list[str]:
        return ["trial", self.score_name, "MACs", "params", "latency ms", "rung"]

    def __str__(self) -> str:
        rows = [self.header(), *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
        return "\n".join([self._title(), *lines])

    def _title(self) -> str:
        stopped = ", interrupted" if self.interrupted else ""
        return f"study {self.study.study_name}: Pareto front of {len(self.front)} candidates{stopped}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header())
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in self.rows())
        return f"<p>{html.escape(self._title())}</p><table><tr>{head}</tr>{body}</table>"


def _floor(min_score: float | None, named: dict[str, float], score_name: str) -> float | None:
    """The score floor, given as ``min_score`` or as ``min_<score name>``; anything else is an error."""
    unknown = [k for k in named if k != f"min_{score_name}"]
    if unknown:
        raise TypeError(f"select() got unexpected keyword arguments {unknown}; the score is {score_name!r}, so its "
                        f"floor is min_score= or min_{score_name}=")
    if named and min_score is not None:
        raise TypeError(f"give min_score= or min_{score_name}=, not both")
    return named.get(f"min_{score_name}", min_score)


def _model_file(ost: optuna.Study, number: int) -> str | None:
    from autoprune.engine.storage import get_record

    return get_record(ost, number).model_file
