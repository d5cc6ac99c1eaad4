"""``autoprune.search``: a search over the objects a user already has (a model, data loaders or data sets, a score),
run by the same preparation, backends and trials as ``autoprune search study.yaml``.

Every setting of a study file is a keyword argument (``recovery={"steps": 40}``, ``fidelity=...``, ``sampler=...``),
validated by the same models with the same messages; ``space=`` is the search space. The model and data are checked
against each other (a batch through the model, the default score and loss on it, the user's score on the base)
before anything is written.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import nn

from autoprune.api.result import SearchResult
from autoprune.config import SearchSpaceConfig, Study
from autoprune.config.loading import study_from_settings
from autoprune.config.study import GIVEN
from autoprune.data.given import BatchAdapter, given_splits, item_split
from autoprune.errors import AutopruneError, first_line
from autoprune.metrics.scoring import Score, score_name
from autoprune.models.fit_check import model_output
from autoprune.train.distill import LossFn, kd_loss

RESERVED = ("name", "model", "data", "search_space")  # set from the objects and arguments, not as settings


def search(model: nn.Module, example_inputs: torch.Tensor | None = None, *, train_data: Any, val_data: Any,
           test_data: Any | None = None, targets: list[float] | dict[str, Any] | None = None,
           score: Callable[[nn.Module], Any] | None = None, loss: LossFn | None = None,
           batch: BatchAdapter | None = None,
           n_trials: int | None = None, storage: str | None = None, study_name: str | None = None,
           workers: int = 1, backend: str = "optuna", ray_address: str | None = None, cpus_per_trial: float = 1.0,
           gpus_per_trial: float = 0.0, device: str | None = None, seed: int = 0,
           space: dict[str, Any] | SearchSpaceConfig | None = None, progress: bool = True,
           **settings: Any) -> SearchResult:
    """Search per-group pruning allocations of ``model`` and return the Pareto front of score against cost.

    Args:
        model: the trained model (it is copied, never changed).
        example_inputs: one batch of inputs, checked against the data (optional: the data gives one).
        train_data, val_data: DataLoaders or map-style Datasets; the candidates recover on ``train_data`` and are
            scored on ``val_data``. Shuffling is autoprune's own, seeded; a loader gives its data set, collate
            function and workers. ``test_data``: what a final evaluation reports (default: ``val_data``).
        targets: cost targets, ``[1.5, 2, 3]`` (fewer MACs) or ``{"latency_reduction": [2]}``; None: candidates
            anywhere on the cost axis.
        score: ``score(model) -> float``, higher is better, replacing top-1 accuracy everywhere (named after the
            function in every table).
        loss: ``loss(outputs, teacher_outputs, targets) -> scalar tensor``, the recovery loss (default:
            distillation from the unpruned model plus cross-entropy, for logits and dense logits alike).
        batch: ``batch(what the loader yields) -> (inputs, targets)``; default: a pair, or a dict by its usual keys.
        n_trials, storage, study_name: the budget, an Optuna storage URL (default: SQLite in ``runs/<name>``)
            and the study's name; calling again with the same storage and name resumes the study.
        workers, backend, ray_address, cpus_per_trial, gpus_per_trial: as ``autoprune search``'s options: with
            ``workers > 1`` (local processes) or ``backend="ray"`` the model, data and functions travel to the
            workers pickled by cloudpickle (by value where defined in a script or notebook, by import path where
            importable); one that cannot travel is an error naming it before anything runs.
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA where there is one).
        seed: the study's seed (data order, sampler, trials).
        space: the search space, as the search-space file's mapping (default: its defaults).
        progress: a progress bar (it renders in a notebook too).
        **settings: any other field of a study file, e.g. ``recovery={"steps": 40}``.

    Raises:
        AutopruneError: bad input (a ConfigError for a setting), before anything is written.
    """
    from autoprune.engine.backends import BACKENDS, SearchOptions
    from autoprune.engine.context import prepare

    if backend not in BACKENDS:
        BACKENDS.get(backend)  # the registry's error, listing the backends
    given = hand_over(model, example_inputs, (train_data, val_data, test_data), score, loss, batch,
                      travels=workers > 1 or backend != "optuna")
    study = build_study(model, given.data, targets=targets, n_trials=n_trials, storage=storage, study_name=study_name,
                        seed=seed, space=space, settings=settings)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    options = SearchOptions(study.config.budget.n_trials, study.config.budget.timeout, None, device, workers,
                            ray_address, cpus_per_trial, gpus_per_trial)
    ctx, outcome = run_study(study, options, backend, lambda s: prepare(s, device, given=given),
                             lambda ctx: _progress(progress, options.n_trials, ctx.score_name))
    return SearchResult.of(outcome.study, ctx.fresh_model, interrupted=outcome.interrupted, context=ctx)


def run_study(study: Study, options: Any, backend: str, prepare: Callable[[Study], Any],
              monitor: Callable[[Any], ContextManager[tuple[Callable[..., None], Callable[[str], None]]]]
              ) -> tuple[Any, Any]:
    """The one way a search runs, from Python and from ``autoprune search``: the study checked against its storage,
    prepared (``prepare``: data, base model, groups, reference), then the rest of its budget run by ``backend``
    while ``monitor(ctx)`` yields the ``(on_trial, log)`` callbacks (a progress bar, a table). Returns
    ``(ctx, outcome)``."""
    from autoprune.engine.backends import BACKENDS
    from autoprune.engine.storage import preflight

    preflight(study)
    ctx = prepare(study)
    with monitor(ctx) as (on_trial, log):
        outcome = BACKENDS.get(backend)(ctx, options, on_trial, log)
        on_trial(outcome.study)  # the end: the monitor shows the final state
    return ctx, outcome


def hand_over(model: nn.Module, example_inputs: torch.Tensor | None, data: tuple[Any, Any, Any],
              score: Callable[[nn.Module], Any] | None, loss: LossFn | None, batch: BatchAdapter | None,
              travels: bool) -> Any:
    """The objects as a search takes them (:class:`~autoprune.engine.context.Given`), checked against each other
    (:func:`check_fits`) and, when they go to other processes (``travels``), checked to pickle."""
    from autoprune.engine.context import Given
    from autoprune.engine.travel import pack

    splits = given_splits(*data, _num_classes(model, data[1], batch), batch)
    scorer = Score(score, score_name(score)) if score is not None else None
    check_fits(model, splits, example_inputs, scorer, loss)
    given = Given(model, splits, scorer, loss)
    if travels:
        pack(given)  # every part must travel to the workers: checked before anything is written
    return given


def build_study(model: nn.Module, splits: Any, *, targets: Any, n_trials: int | None, storage: str | None,
                study_name: str | None, seed: int, space: Any, settings: dict[str, Any]) -> Study:
    """The study a search from Python runs: its settings validated as a study file's, the model and data named
    ``given:<class>`` (so a resumed study must be given objects of the same classes and sizes)."""
    reserved = sorted(set(settings) & set(RESERVED))
    if reserved:
        raise AutopruneError(f"{', '.join(reserved)} cannot be set here: the model and data are the objects given "
                             "and the study's name is study_name=", field=reserved[0])
    train = splits.train.fetch.dataset
    data: dict[str, Any] = {
        "name": study_name or "autoprune", "seed": seed, "search_space": "(space=...)", **settings,
        "model": {"name": f"{GIVEN}{_qualname(model)}"},
        # val_source "test": validation is not carved from the training data (a retrain trains on train_data alone)
        "data": {"name": f"{GIVEN}{_qualname(train)}", "val_source": "test",
                 "kwargs": {"sizes": [len(splits.train), len(splits.val), len(splits.test)]}},
    }
    if n_trials is not None:
        data["budget"] = {**data.get("budget", {}), "n_trials": n_trials}
    if storage is not None:
        data["storage"] = {**data.get("storage", {}), "url": storage}
    if targets is not None:
        data["targets"] = {"macs_reduction": list(targets)} if isinstance(targets, (list, tuple)) else targets
    return study_from_settings(data, space)


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _num_classes(model: nn.Module, val_data: Any, adapter: BatchAdapter | None) -> int:
    """The width of the model's output (classes, or channels of a dense output) on one batch of ``val_data``."""
    x, _ = item_split(val_data, "val_data", adapter).read(torch.arange(1))
    out = _forward(model, x, "val_data")
    return int(out.shape[1]) if out.ndim >= 2 else 1


def _forward(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    """The model's output on ``x`` (eval mode, no gradients); an error naming the data when it does not fit."""
    return model_output(model, x, f"the model fails on a batch of {name} (inputs {list(x.shape)} {x.dtype})",
                        field=name)


def check_fits(model: nn.Module, splits: Any, example_inputs: torch.Tensor | None, scorer: Score | None,
               loss: LossFn | None = None) -> None:
    """The model, the data and the score checked against each other before anything is written: a batch of each
    split through the model, the recovery loss on a training batch, the default score's needs (logits and class
    labels) or the user's score on the unpruned model."""
    if example_inputs is not None and tuple(example_inputs.shape[1:]) != splits.val.shape:
        raise AutopruneError(f"example_inputs are {list(example_inputs.shape)} but val_data's inputs are "
                             f"[N, {', '.join(map(str, splits.val.shape))}]", field="example_inputs")
    rows = torch.arange(min(2, len(splits.train)))
    x, y = splits.train.read(rows)
    out = _forward(model, x, "train_data")
    _check_loss(loss, out, y)
    vx, vy = splits.val.read(torch.arange(min(2, len(splits.val))))
    vout = _forward(model, vx, "val_data")
    if scorer is not None:
        scorer(model)
    elif not (vout.ndim == 2 and isinstance(vy, torch.Tensor) and vy.ndim == 1 and not vy.is_floating_point()):
        raise AutopruneError(f"the default score is top-1 accuracy, over [N, classes] outputs and integer labels; the "
                             f"model returns {list(vout.shape)} and val_data's targets are {_describe(vy)}: pass "
                             "score=a function of the model (higher is better)", field="score")


def _check_loss(loss: LossFn | None, out: torch.Tensor, y: Any) -> None:
    """The recovery loss on a training batch (the model's outputs as the teacher's too): it must run and, for the
    user's own loss, give a finite scalar tensor."""
    name = "the recovery loss (distillation + cross-entropy)" if loss is None else f"loss function {score_name(loss, 'loss')!r}"
    try:
        value = kd_loss(out.float(), out.float(), y) if loss is None else loss(out, out, y)
    except Exception as exc:  # noqa: BLE001 - the user's function, or a target the default loss cannot take
        raise AutopruneError(f"{name} fails on train_data's batch (outputs {list(out.shape)}, targets {_describe(y)}): "
                             f"{first_line(exc, 200)}", field="loss" if loss else "train_data") from None
    if not (isinstance(value, torch.Tensor) and value.numel() == 1 and torch.isfinite(value).all()):
        raise AutopruneError(f"{name} returned {_describe(value) if isinstance(value, torch.Tensor) else repr(value)} "
                             "on train_data's batch; expected a finite scalar tensor to minimise", field="loss")


def _describe(y: Any) -> str:
    return f"a {list(y.shape)} {y.dtype} tensor" if isinstance(y, torch.Tensor) else f"a {type(y).__name__}"


@contextlib.contextmanager
def _progress(show: bool, total: int, name: str) -> Iterator[tuple[Callable[..., None], Callable[[str], None]]]:
    """(on_trial, log) for a backend: a progress bar over the study's COMPLETE trials with the best score so far
    (rich: a live bar in a terminal, an updating output in a notebook), or nothing."""
    if not show:
        yield (lambda ost, frozen=None: None), (lambda msg: None)
        return
    from optuna.trial import TrialState
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task("search", total=total)

        def on_trial(ost, frozen=None) -> None:  # noqa: ARG001
            done = ost.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            at = list(ost.user_attrs.get("objectives") or ["accuracy"]).index("accuracy")
            best = max((t.values[at] for t in done if t.values), default=None)
            said = f"search, best {name} {best:.4f}" if best is not None else "search"
            bar.update(task, completed=min(len(done), total), description=said)

        yield on_trial, lambda msg: console.print(msg, markup=False, highlight=False)

