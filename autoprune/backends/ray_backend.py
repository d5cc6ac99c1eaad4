"""The Ray backend: Ray Tune runs the trials, Ray's OptunaSearch drives the study's own sampler and storage.

Only the driver touches the Optuna storage (ask/tell through ``OptunaSearch``), so ``status``, ``pareto``,
``evaluate`` and resume behave as with the Optuna backend. Each Ray worker prepares the study once (data, base
model) and calls the same :func:`autoprune.trial.run_trial`. Trials a dead driver left RUNNING are failed and
their parameters retried on the next run; errored Ray trials are reported, never hidden.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from autoprune.backends.optuna_backend import make_sampler, record
from autoprune.context import StudyContext
from autoprune.errors import AutopruneError
from autoprune.warmstart import enqueue_warm_start
from autoprune.storage import counts, create_or_load, open_storage
from autoprune.trial import TrialResult

_WORKER_CTX: dict[str, StudyContext] = {}


def _require_ray():
    try:
        import ray
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise AutopruneError("the Ray backend needs Ray Tune: pip install 'autoprune[ray]' (ray[tune])",
                             field="--backend") from None
    return ray, tune, OptunaSearch


def trainable(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """The Ray Tune function: one trial, reported with ``ray.tune.report``."""
    import ray
    from ray import tune

    from autoprune.config import SearchSpaceConfig, Study, StudyConfig
    from autoprune.context import prepare
    from autoprune.trial import run_trial

    key = json.dumps(spec, sort_keys=True)
    if key not in _WORKER_CTX:  # once per Ray worker process (actors are reused)
        if spec.get("threads"):
            os.environ["AUTOPRUNE_THREADS"] = str(spec["threads"])
        study = Study(StudyConfig.model_validate(spec["config"]), SearchSpaceConfig.model_validate(spec["space"]),
                      None, None)
        ctx = prepare(study, spec["device"], measure_reference=False)
        ctx.share_device()
        _WORKER_CTX[key] = ctx
    ctx = _WORKER_CTX[key]
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    fid = ctx.study.config.fidelity
    promoter = None
    if fid.promote_steps:  # reads the study's completed trials from its storage (the driver alone writes)
        from autoprune.fidelity import study_promoter

        storage = open_storage(spec["storage_url"])
        promoter = study_promoter(lambda: optuna.load_study(study_name=spec["study_name"], storage=storage),
                                  list(ctx.study.config.objectives), ctx.study.directions, fid.eta)
    try:
        result = run_trial(ctx, params, seed=int(config["_seed"]), save_dir=Path(spec["models_dir"]), promote=promoter)
    except Exception as exc:  # recorded on the Optuna trial, then re-raised so Ray counts the trial as errored
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        nan = float("nan")
        tune.report({"accuracy": nan, "macs": nan, "params": nan, "latency_ms": nan, "_autoprune_error": reason})
        raise
    node = ray.get_runtime_context().get_node_id()
    tune.report({**result.metrics, "_autoprune": json.dumps({
        "metrics": result.metrics, "timings": result.timings, "plan": result.plan, "model_file": result.model_file,
        "extra": result.extra,
        "node": node, "host": socket.gethostname()})})


def _searcher_class(OptunaSearch):
    class AutopruneOptunaSearch(OptunaSearch):
        """OptunaSearch that also stores autoprune's metrics, timings and plan on each Optuna trial."""

        def __init__(self, *args, objectives, constraints, seed, driver, **kwargs):
            super().__init__(*args, **kwargs)
            self._objectives, self._constraints, self._base_seed, self._driver = objectives, constraints, seed, driver

        def suggest(self, trial_id: str):
            params = super().suggest(trial_id)
            if params is None or not isinstance(params, dict):
                return params
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("driver", self._driver)
            return {**params, "_seed": self._base_seed + ot_trial.number}

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and result.get("_autoprune_error"):
                ot_trial.set_user_attr("fail_reason", result["_autoprune_error"])

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and result and "_autoprune" in result:
                blob = json.loads(result["_autoprune"])
                res = TrialResult(blob["metrics"], blob["timings"], blob["plan"], blob["model_file"], blob.get("extra", {}))
                record(ot_trial, res, self._objectives, self._constraints)
                ot_trial.set_user_attr("ray", {"node": blob["node"], "host": blob["host"]})
            elif ot_trial is not None and error and "fail_reason" not in ot_trial.user_attrs:
                ot_trial.set_user_attr("fail_reason", "the Ray trial errored (see the Ray trial's error file)")
            if error:
                result = None  # the NaN placeholders reported with an error are not objective values
            super().on_trial_complete(trial_id, result, error)

    return AutopruneOptunaSearch


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


def fail_orphans(ost: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose Ray driver on this machine is gone, and enqueue their parameters for a retry."""
    host = socket.gethostname()
    failed = []
    for t in ost.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        driver = t.user_attrs.get("driver", "")
        d_host, _, pid = driver.rpartition(":")
        if d_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        ost._storage.set_trial_user_attr(t._trial_id, "fail_reason", f"its Ray driver {driver} stopped")
        ost._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        ost.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number}, skip_if_exists=False)
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


@dataclass
class RayOutcome:
    study: optuna.Study
    completed: int
    ran_here: int
    errors: int
    error_messages: list[str]
    interrupted: bool = False
    restored: bool = False


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
) -> RayOutcome:
    """Run the remaining trials of the study on Ray Tune (a local Ray instance, or the cluster at ``address``)."""
    ray, tune, OptunaSearch = _require_ray()
    study = ctx.study
    cfg = study.config
    seed = cfg.seed if seed is None else seed
    url = study.storage_url
    ost = create_or_load(study, url, None, make_sampler(ctx, seed), ctx.reference)
    workdir = Path(study.workdir).resolve()
    results_dir = workdir / "ray_results"
    marker = results_dir / f"{study.study_name}.unfinished"  # names the experiment of a run that did not finish
    restore_from = None
    if marker.is_file():
        prev = results_dir / marker.read_text().strip()
        if tune.Tuner.can_restore(str(prev)):
            restore_from = prev
    if restore_from is None:
        orphans = fail_orphans(ost)
        if orphans:
            log(f"failed trials {orphans} left RUNNING by a stopped Ray driver; their parameters are retried")
    remaining = n_trials - counts(ost)["COMPLETE"]
    if remaining <= 0 and restore_from is None:
        return RayOutcome(ost, counts(ost)["COMPLETE"], 0, 0, [])
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        init_kwargs["address"] = address
    else:
        # address="local": always a new instance, never a cluster that `ray start` left running on this machine
        init_kwargs.update(address="local", num_cpus=max(1, int(workers * cpus_per_trial)),
                           _temp_dir=ray_temp_dir(workdir))
    try:
        ray.init(**init_kwargs)
    except Exception as exc:
        raise AutopruneError(f"cannot start or join Ray ({address or 'local'}): {str(exc).splitlines()[0]}",
                             field="--ray-address") from None
    try:
        config = cfg.model_copy(deep=True)
        config.workdir = str(workdir)  # Ray workers may run elsewhere: every path absolute
        if config.data.root:
            config.data.root = str(Path(config.data.root).resolve())
        if config.model.checkpoint:
            config.model.checkpoint = str(Path(config.model.checkpoint).resolve())
        spec = {"config": config.model_dump(mode="json"), "space": study.space.model_dump(mode="json"),
                "device": device, "models_dir": str(workdir / "models"), "threads": max(1, int(cpus_per_trial))}
        dists = ctx.distributions()
        queued = enqueue_warm_start(ost, ctx, dists)
        if queued:
            log(f"warm start: the first {queued} trials are the search space's uniform and global-pruning baselines")
        spec.update(storage_url=url, study_name=study.study_name)
        Searcher = _searcher_class(OptunaSearch)
        directions = study.directions
        searcher = Searcher(
            space=dists, metric=list(cfg.objectives),
            mode=["max" if d == "maximize" else "min" for d in directions],
            sampler=make_sampler(ctx, seed + len(ost.get_trials(deepcopy=False))),
            study_name=study.study_name, storage=open_storage(url),
            objectives=list(cfg.objectives), constraints=cfg.constraints, seed=seed,
            driver=f"{socket.gethostname()}:{os.getpid()}")
        resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
        callbacks = [_progress_callback(tune, lambda: on_trial(ost))] if on_trial is not None else []
        wrapped = tune.with_resources(tune.with_parameters(trainable, spec=spec), resources)
        if restore_from is not None:
            # The interrupted experiment continues: its searcher (and so its Optuna trials) is restored, and its
            # unfinished and errored trials run again (Tuner.restore(..., resume_errored=True)).
            log(f"restoring the unfinished Ray experiment {restore_from.name}")
            tuner = tune.Tuner.restore(str(restore_from), trainable=wrapped, resume_errored=True)
        else:
            name = f"{study.study_name}-{time.strftime('%Y%m%d-%H%M%S')}"
            results_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(name)
            tuner = tune.Tuner(
                wrapped,
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining, max_concurrent_trials=workers,
                                            reuse_actors=True, time_budget_s=timeout),
                run_config=tune.RunConfig(name=name, storage_path=str(results_dir), verbose=0, log_to_file=True,
                                          callbacks=callbacks),
            )
        interrupted = False
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            interrupted, grid = True, None
        ost = optuna.load_study(study_name=study.study_name, storage=open_storage(url))
        # Tune answers Ctrl-C by stopping the experiment and returning normally: trials of this driver (or of the
        # restored one) still RUNNING mean the experiment was stopped, and the next run restores it.
        interrupted = interrupted or bool(_stopped_here(ost))
        if not interrupted:
            marker.unlink(missing_ok=True)
        if restore_from is not None:
            orphans = fail_orphans(ost)  # asked by the old driver but never run by the restored experiment
            if orphans:
                log(f"failed trials {orphans} left RUNNING by the stopped Ray driver; their parameters are retried")
        messages = []
        for r in (grid if grid is not None else []):
            if r.error is None:
                continue
            lines = [ln for ln in str(r.error).strip().splitlines() if ln.strip()]
            reason = lines[-1][:300] if lines else type(r.error).__name__
            number = int(r.config.get("_seed", seed - 1)) - seed
            match = [t for t in ost.get_trials(deepcopy=False) if t.number == number]
            if match and match[0].user_attrs.get("fail_reason"):
                reason = match[0].user_attrs["fail_reason"]
            messages.append(f"trial {number}: {reason}")
        return RayOutcome(ost, counts(ost)["COMPLETE"], remaining if grid is None else len(grid), len(messages),
                          messages, interrupted, restored=restore_from is not None)
    finally:
        ray.shutdown()
