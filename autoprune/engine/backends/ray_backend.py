"""The Ray backend: Ray Tune runs the trials; a thin searcher asks and tells the study's own Optuna study (its
sampler and storage) through :mod:`autoprune.engine.ask_tell`, as the Optuna backend does.

Only the driver touches the Optuna storage (ask/tell in ``AutopruneSearcher``), so ``status``, ``pareto``,
``evaluate`` and resume behave as with the Optuna backend. Each Ray worker prepares the study once (data, base
model) and calls the same :func:`autoprune.engine.trial.run_trial`. Trials a dead driver left RUNNING are failed and
their parameters retried on the next run; errored Ray trials are reported, never hidden.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from autoprune.engine.ask_tell import ask, enqueue_due, fail_running, study_sampler, tell_failure, tell_result
from autoprune.engine.backends.base import SearchOutcome
from autoprune.engine.context import StudyContext
from autoprune.engine.record import Failure, TrialRecord
from autoprune.engine.storage import counts, create_or_load, get_record, open_storage
from autoprune.engine.travel import pack, unpack
from autoprune.engine.warm_start import enqueue_warm_start
from autoprune.errors import AutopruneError, first_line
from autoprune.optional import require

_WORKER_CTX: dict[str, StudyContext] = {}


def _require_ray():
    require("ray.tune", "ray", "the Ray backend (--backend ray)")
    import ray
    from ray import tune
    from ray.tune.search import Searcher

    return ray, tune, Searcher


def _worker_context(spec: dict[str, Any]) -> StudyContext:
    """The study prepared once per Ray worker process (actors are reused)."""
    from autoprune.config import SearchSpaceConfig, Study, StudyConfig
    from autoprune.engine.context import prepare

    given = spec.get("given")  # a search from Python: its objects, pickled (autoprune.engine.travel)
    key = json.dumps({k: v for k, v in spec.items() if k != "given"}, sort_keys=True) + str(hash(given))
    if key not in _WORKER_CTX:
        if spec.get("threads"):
            os.environ["AUTOPRUNE_THREADS"] = str(spec["threads"])
        study = Study(StudyConfig.model_validate(spec["config"], context={"given": given is not None}),
                      SearchSpaceConfig.model_validate(spec["space"]), None, None)
        ctx = prepare(study, spec["device"], measure_reference=False, given=unpack(given) if given else None)
        ctx.share_device()
        _WORKER_CTX[key] = ctx
    return _WORKER_CTX[key]


def trainable(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """The Ray Tune function: one trial, its record reported with ``ray.tune.report`` for the driver to tell."""
    import ray
    from ray import tune

    from autoprune.engine.trial import continue_trial, run_trial

    ctx = _worker_context(spec)
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    save_dir = Path(spec["models_dir"])
    try:
        if config.get("_continues") is None:
            record = run_trial(ctx, params, seed=int(config["_seed"]), save_dir=save_dir)
        else:  # a deferred promotion: read the candidate's record from the study (the driver alone writes)
            ost = optuna.load_study(study_name=spec["study_name"], storage=open_storage(spec["storage_url"]))
            record = continue_trial(ctx, get_record(ost, int(config["_continues"])), save_dir=save_dir)
    except Exception as exc:
        # Reported as this trial's final result, and the function returns: Ray always delivers a returning
        # trial's last report to the searcher, while a raising trial's last report may be dropped (its reason
        # lost). The driver tells the failure and counts the trial as errored (_error_messages).
        failure = Failure.from_exception(exc)
        nan = float("nan")
        tune.report({"accuracy": nan, "macs": nan, "params": nan, "latency_ms": nan,
                     "_autoprune_failure": json.dumps([failure.reason, failure.traceback])})
        return
    node = {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    record = replace(record, node=node)
    tune.report({**record.metrics.to_dict(), "_autoprune": record.to_json()})


def _searcher_class(Searcher):
    class AutopruneSearcher(Searcher):
        """Ray Tune's searcher for an autoprune study: a thin ask/tell adapter over ``ost`` (the study's own Optuna
        study, storage and sampler), through :mod:`autoprune.engine.ask_tell` as the Optuna backend. Its state is its own
        map from Ray trial id to the Optuna trial asked for it (saved with the experiment, so a restored one tells
        the trials the interrupted one asked)."""

        def __init__(self, ost: optuna.Study, study, dists: dict, seed: int, driver: str):
            super().__init__(metric=list(study.config.objectives),
                             mode=["max" if d == "maximize" else "min" for d in study.directions])
            self._ost, self._study, self._dists, self._base_seed, self._driver = ost, study, dists, seed, driver
            self._targets = study.config.targets.turns if study.config.targets else None
            self._balance = bool(study.config.targets and study.config.targets.balance)
            self._asked: dict[str, optuna.Trial] = {}

        def suggest(self, trial_id: str) -> dict[str, Any]:
            trial = self._asked.get(trial_id)
            if trial is None:
                trial = self._asked[trial_id] = self._ost.ask()
            trial.set_user_attr("driver", self._driver)
            asked = ask(trial, self._dists, self._targets, self._base_seed, self._balance)
            return {**asked.params, "_seed": asked.seed, "_continues": asked.continues}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            trial = self._asked.pop(trial_id, None)
            if trial is None:  # told already
                return
            values, state = None, TrialState.FAIL if error else TrialState.PRUNED
            if result and result.get("_autoprune_failure"):  # the trial caught its exception and reported it
                tell_failure(trial, Failure(*json.loads(result["_autoprune_failure"])))
                state = TrialState.FAIL
            elif result and "_autoprune" in result:
                values = tell_result(trial, TrialRecord.from_json(result["_autoprune"]), self._study)
                state = TrialState.COMPLETE
            elif error and TrialRecord.from_user_attrs(trial.user_attrs).failure is None:
                tell_failure(trial, Failure("the Ray trial errored (see the Ray trial's error file)"))
            self._ost.tell(trial, values, state=state, skip_if_finished=True)
            if state == TrialState.COMPLETE:
                enqueue_due(self._ost, self._study)  # the rungs' best go up next

        def save(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "wb") as f:
                pickle.dump(self._asked, f)

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "rb") as f:
                self._asked = pickle.load(f)

    return AutopruneSearcher


def _progress_callback(tune, notify: Callable[[], None]):
    class Progress(tune.Callback):
        """Calls ``notify`` when a trial ends; dropped when Tune pickles its state (the bar lives in the driver)."""

        def __init__(self, fn: Callable[[], None]) -> None:
            self.notify: Callable[[], None] | None = fn

        def __getstate__(self) -> dict:
            return {"notify": None}

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ARG002
            if self.notify:
                self.notify()

        on_trial_error = on_trial_complete

    return Progress(notify)


def fail_orphans(ost: optuna.Study, storage: optuna.storages.BaseStorage) -> list[int]:
    """Fail RUNNING trials whose Ray driver on this machine is gone, and enqueue their parameters for a retry."""
    host = socket.gethostname()
    failed = []
    for t in ost.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        driver = t.user_attrs.get("driver", "")
        d_host, _, pid = driver.rpartition(":")
        if d_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        fail_running(ost, storage, t.number, f"its Ray driver {driver} stopped")
        failed.append(t.number)
    return failed


def _stopped_here(ost: optuna.Study) -> list[int]:
    """RUNNING trials whose driver is this process or a dead process on this machine."""
    host = socket.gethostname()
    out = []
    for t in ost.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        d_host, _, pid = t.user_attrs.get("driver", "").rpartition(":")
        if d_host == host and pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            out.append(t.number)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ray_temp_dir(workdir: Path) -> str:
    """Ray's session files go in the study folder; where that path is too long for Ray's unix sockets (107 bytes
    with Ray's own suffixes), in a short folder under the system temp directory named after the study."""
    preferred = workdir / "ray"
    if len(str(preferred)) <= 40:
        return str(preferred)
    import hashlib
    import tempfile

    return str(Path(tempfile.gettempdir()) / f"autoprune-ray-{hashlib.sha1(str(workdir).encode()).hexdigest()[:8]}")


def _init_ray(ray, address: str | None, num_cpus: int, workdir: Path) -> None:
    for key, value in (("RAY_AUTH_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_DEDUP_LOGS", "0"),
                       ("RAY_CHDIR_TO_TRIAL_DIR", "0")):
        os.environ.setdefault(key, value)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        kwargs["address"] = address
    else:
        # address="local": always a new instance, never a cluster that `ray start` left running on this machine
        kwargs.update(address="local", num_cpus=num_cpus, _temp_dir=ray_temp_dir(workdir))
    try:
        ray.init(**kwargs)
    except Exception as exc:
        raise AutopruneError(f"cannot start or join Ray ({address or 'local'}): {first_line(exc)}",
                             field="--ray-address") from None


def _worker_spec(ctx: StudyContext, device: str, cpus_per_trial: float, workdir: Path) -> dict[str, Any]:
    """What a Ray worker needs to prepare the study on its own (every path absolute: it may run elsewhere)."""
    study = ctx.study
    config = study.config.model_copy(deep=True)
    config.workdir = str(workdir)
    if config.data.root:
        config.data.root = str(Path(config.data.root).resolve())
    if config.model.checkpoint:
        config.model.checkpoint = str(Path(config.model.checkpoint).resolve())
    return {"config": config.model_dump(mode="json"), "space": study.space.model_dump(mode="json"), "device": device,
            "models_dir": str(workdir / "models"), "threads": max(1, int(cpus_per_trial)),
            "storage_url": study.storage_url, "study_name": study.study_name,
            **({"given": pack(ctx.given)} if ctx.given is not None else {})}


def _restorable(tune, results_dir: Path, marker: Path) -> Path | None:
    """The experiment an interrupted run left unfinished, if Tune can restore it."""
    if not marker.is_file():
        return None
    prev = results_dir / marker.read_text().strip()
    return prev if tune.Tuner.can_restore(str(prev)) else None


def _error_messages(grid, ost: optuna.Study, seed: int) -> list[str]:
    """One line per errored Ray trial (one that raised, or reported its caught failure): its number and the
    failure it recorded (or Ray's last error line)."""
    failed = {r.number: r.failure.reason for r in map(TrialRecord.from_frozen, ost.get_trials(deepcopy=False))
              if r.failure is not None}
    messages = []
    for r in (grid if grid is not None else []):
        reported = (r.metrics or {}).get("_autoprune_failure")
        if r.error is None and not reported:
            continue
        number = int(r.config.get("_seed", seed - 1)) - seed
        lines = [ln for ln in str(r.error).strip().splitlines() if ln.strip()] if r.error is not None else []
        fallback = json.loads(reported)[0] if reported else (lines[-1][:300] if lines else type(r.error).__name__)
        messages.append(f"trial {number}: {failed.get(number) or fallback}")
    return messages


def run_ray_search(
    ctx: StudyContext,
    *,
    n_trials: int,
    address: str | None = None,
    workers: int = 1,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    timeout: float | None = None,
    seed: int | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = lambda s: None,
    on_trial: Callable[[optuna.Study], None] | None = None,
) -> SearchOutcome:
    """Run the remaining trials of the study on Ray Tune (a local Ray instance, or the cluster at ``address``)."""
    ray, tune, Searcher = _require_ray()
    study = ctx.study
    seed = study.config.seed if seed is None else seed
    storage = open_storage(study.storage_url)
    ost = create_or_load(study, study.storage_url, None, study_sampler(ctx, seed), ctx.reference, storage)
    workdir = Path(study.workdir).resolve()
    results_dir = workdir / "ray_results"
    marker = results_dir / f"{study.study_name}.unfinished"  # names the experiment of a run that did not finish
    restore_from = _restorable(tune, results_dir, marker)
    if restore_from is None and (orphans := fail_orphans(ost, storage)):
        log(f"failed trials {orphans} left RUNNING by a stopped Ray driver; their parameters are retried")
    remaining = n_trials - counts(ost)["COMPLETE"]
    if remaining <= 0 and restore_from is None:
        return SearchOutcome(ost, counts(ost)["COMPLETE"], 0, 0)
    _init_ray(ray, address, max(1, int(workers * cpus_per_trial)), workdir)
    try:
        queued = enqueue_warm_start(ost, ctx, ctx.distributions())
        if queued:
            log(f"warm start: the first {queued} trials are the search space's uniform and global-pruning baselines")
        enqueue_due(ost, study)  # on resume: promotions that were due when the last run stopped
        wrapped = tune.with_resources(tune.with_parameters(trainable, spec=_worker_spec(ctx, device, cpus_per_trial, workdir)),
                                      {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        if restore_from is not None:
            # The interrupted experiment continues: its searcher (and so its Optuna trials) is restored, and its
            # unfinished and errored trials run again (Tuner.restore(..., resume_errored=True)).
            log(f"restoring the unfinished Ray experiment {restore_from.name}")
            tuner = tune.Tuner.restore(str(restore_from), trainable=wrapped, resume_errored=True)
        else:
            asking = optuna.load_study(study_name=study.study_name, storage=storage,
                                       sampler=study_sampler(ctx, seed, ost))
            searcher = _searcher_class(Searcher)(asking, study, ctx.distributions(), seed,
                                                 f"{socket.gethostname()}:{os.getpid()}")
            tuner = _new_tuner(tune, wrapped, searcher, study.study_name, results_dir, marker, remaining, workers,
                               timeout, [_progress_callback(tune, lambda: on_trial(ost))] if on_trial else [])
        return _fit(tuner, ost, storage, seed, marker, restore_from, remaining, log)
    finally:
        ray.shutdown()


def _new_tuner(tune, wrapped, searcher, name: str, results_dir: Path, marker: Path, remaining: int, workers: int,
               timeout: float | None, callbacks: list):
    """A new Tune experiment, its name written to ``marker`` until it finishes (so an interrupted one is restored)."""
    experiment = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    results_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(experiment)
    return tune.Tuner(
        wrapped,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining, max_concurrent_trials=workers,
                                    reuse_actors=True, time_budget_s=timeout),
        run_config=tune.RunConfig(name=experiment, storage_path=str(results_dir), verbose=0, log_to_file=True,
                                  callbacks=callbacks),
    )


def _fit(tuner, ost: optuna.Study, storage, seed: int, marker: Path, restore_from: Path | None, remaining: int,
         log: Callable[[str], None]) -> SearchOutcome:
    """Run the experiment; read back how it ended (interrupted, errored trials) from the study's storage."""
    interrupted = False
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        interrupted, grid = True, None
    ost = optuna.load_study(study_name=ost.study_name, storage=storage)
    # Tune answers Ctrl-C by stopping the experiment and returning normally: trials of this driver (or of the
    # restored one) still RUNNING mean the experiment was stopped, and the next run restores it.
    interrupted = interrupted or bool(_stopped_here(ost))
    if not interrupted:
        marker.unlink(missing_ok=True)
    if restore_from is not None and (orphans := fail_orphans(ost, storage)):
        # asked by the old driver but never run by the restored experiment
        log(f"failed trials {orphans} left RUNNING by the stopped Ray driver; their parameters are retried")
    messages = _error_messages(grid, ost, seed)
    return SearchOutcome(ost, counts(ost)["COMPLETE"], remaining if grid is None else len(grid), len(messages),
                         interrupted, messages, restored=restore_from is not None)
