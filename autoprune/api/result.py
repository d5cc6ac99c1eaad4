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
from pathlib import Path
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
    _result: SearchResult | None = field(default=None, repr=False)

    def model(self) -> nn.Module:
        """The pruned, recovered model as the search left it (rebuilt from its saved pruning history)."""
        from autoprune.pruning.saving import load_pruned

        if not self.model_file or not Path(self.model_file).is_file():
            raise AutopruneError(f"trial {self.trial}'s model file {self.model_file!r} is gone (a study's models "
                                 "live in its folder's models/)")
        if self._unpruned is None:
            raise AutopruneError("this result was loaded without the unpruned model; pass model= to load_result to "
                                 "rebuild candidates")
        return load_pruned(self.model_file, self._unpruned())

    def retrain(self, epochs: int = 1, *, out_dir: str | Path | None = None, progressive_steps: int = 1,
                lr: float | None = None) -> Final:
        """Distil this candidate longer on the whole training data, as ``autoprune retrain`` does (checkpointed
        every epoch in ``out_dir``, default ``<study folder>/final-<trial>``: calling again resumes)."""
        from autoprune.deliver.retrain import retrain
        from autoprune.engine.storage import get_record

        ctx = self._context()
        record = get_record(self._result.study, self.trial)
        out = Path(out_dir) if out_dir else ctx.study.workdir / f"final-{self.trial}"
        done = retrain(ctx, record, epochs=epochs, out_dir=out, progressive_steps=progressive_steps, lr=lr)
        return Final(self, record, done, out)

    def _context(self) -> Any:
        if self._result is None or self._result.context is None:
            raise AutopruneError("retraining needs the search's model and data: retrain a candidate of the result "
                                 "autoprune.search returned")
        return self._result.context


@dataclass
class Final:
    """A retrained candidate: ``model`` (pruned, retrained), and :meth:`export` for the files and the report."""

    candidate: Candidate
    record: Any  # the trial's TrialRecord
    retrained: Any  # the RetrainResult
    out_dir: Path
    report: dict[str, Any] | None = None

    @property
    def model(self) -> nn.Module:
        return self.retrained.model

    def export(self, out_dir: str | Path | None = None, *, int8: bool = False) -> dict[str, Any]:
        """Measure the base and the retrained model (test accuracy or the study's own score, MACs, latency paired
        with the base), save the model, export TorchScript and ONNX (each checked against the model; with
        ``int8``, static int8 ONNX too) and write report.json and report.html; returns the report."""
        from autoprune.deliver.finalize import finalize

        ctx = self.candidate._context()
        out = Path(out_dir) if out_dir else self.out_dir
        self.report = finalize(ctx, self.candidate._result.study, self.record, self.retrained, out, int8=int8)
        return self.report


@dataclass
class SearchResult:
    """A finished (or stopped) search: the Optuna study, the base model's reference figures and the front."""

    study: optuna.Study
    base: dict[str, Any]
    front: list[Candidate]
    score_name: str = "accuracy"
    interrupted: bool = False
    context: Any = field(default=None, repr=False)  # the prepared StudyContext (None: loaded from storage alone)

    @classmethod
    def of(cls, ost: optuna.Study, unpruned: Callable[[], nn.Module] | None, rung: int | None = None,
           interrupted: bool = False, context: Any = None) -> SearchResult:
        from autoprune.engine.storage import StudyAttrs, front

        base = StudyAttrs.from_study(ost).base
        name = base.get("score_name", "accuracy")
        result = cls(ost, base, [], name, interrupted, context)
        result.front = [Candidate(e["trial"], {name: e["accuracy"], **{k: e.get(k) for k in COLUMNS[2:]}},
                                  e["plan"], _model_file(ost, e["trial"]), unpruned, _result=result)
                        for e in front(ost, rung)]
        return result

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
                         why.replace("accuracy", self.score_name), self)

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


def load_result(storage: str, study_name: str, model: nn.Module | None = None, rung: int | None = None
                ) -> SearchResult:
    """A stored search (``autoprune.search``'s or ``autoprune search``'s), to inspect: its front and selection; with
    the unpruned ``model``, its candidates' models too. To resume the search, call ``autoprune.search`` again with
    the same storage and study name.

    Raises:
        AutopruneError: no such study in the storage (the message lists the ones there).
    """
    import copy

    import optuna

    from autoprune.engine.storage import display_url, open_storage

    store = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if study_name not in names:
        raise AutopruneError(f"no study {study_name!r} in {display_url(storage)}; it holds: {', '.join(names) or 'none'}",
                             field="study_name")
    ost = optuna.load_study(study_name=study_name, storage=store)
    return SearchResult.of(ost, (lambda: copy.deepcopy(model)) if model is not None else None, rung)


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
