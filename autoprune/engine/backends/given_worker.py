"""A local worker process of a search from Python (``autoprune.search(..., workers=N)``).

The parent writes the study's settings and the objects it was handed (pickled by :mod:`autoprune.engine.travel`)
to a spec file in the study's folder; each worker, ``python -m autoprune.engine.backends.given_worker SPEC
--worker-index I``, prepares the study from them and runs the Optuna loop against the shared storage, as a worker
of ``autoprune search --workers N`` does. The storage URL reaches it through the environment
(``AUTOPRUNE_STORAGE``), never through the file or the command line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import cloudpickle

from autoprune.engine.backends.base import SearchOptions
from autoprune.engine.context import StudyContext
from autoprune.engine.travel import pack, unpack
from autoprune.errors import AutopruneError


def write_spec(ctx: StudyContext, options: SearchOptions) -> list[str]:
    """Write the workers' spec file; returns the arguments (after ``python``) that start a worker."""
    config = ctx.study.config.model_dump(mode="json")
    config["storage"]["url"] = None  # a secret: the workers read it from AUTOPRUNE_STORAGE
    spec = {"config": config, "space": ctx.study.space.model_dump(mode="json"), "given": pack(ctx.given),
            "n_trials": options.n_trials, "timeout": options.timeout, "seed": options.seed, "device": options.device}
    path = Path(ctx.study.workdir) / "given-workers.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cloudpickle.dumps(spec))
    return ["-m", "autoprune.engine.backends.given_worker", str(path.resolve())]


def _context(spec: dict[str, Any], index: int) -> StudyContext:
    from autoprune.config import SearchSpaceConfig, Study, StudyConfig
    from autoprune.device import resolve_device
    from autoprune.engine.context import prepare

    config = dict(spec["config"], storage=dict(spec["config"]["storage"], url=os.environ.get("AUTOPRUNE_STORAGE")))
    study = Study(StudyConfig.model_validate(config, context={"given": True}),
                  SearchSpaceConfig.model_validate(spec["space"]), None, None)
    ctx = prepare(study, resolve_device(spec["device"], index), measure_reference=False, given=unpack(spec["given"]))
    ctx.share_device()
    return ctx


def main(argv: list[str]) -> int:
    """Run one worker; the exit code says how it ended (0, 130 interrupted, 1 trials failing, 2 bad input)."""
    from autoprune.engine.backends.optuna_backend import run_search

    path, index = Path(argv[0]), int(argv[argv.index("--worker-index") + 1])
    spec = cloudpickle.loads(path.read_bytes())
    try:
        ctx = _context(spec, index)
        outcome = run_search(ctx, n_trials=spec["n_trials"], timeout=spec["timeout"], seed=spec["seed"], worker=index,
                             log=print, on_trial=lambda ost, t: print(f"worker {index}: trial {t.number} {t.state.name}"))
    except AutopruneError as err:
        print(f"error: {err.one_line()}", flush=True)
        return err.exit_code
    print(f"worker {index}: done, {outcome.ran_here} ran, {outcome.failed_here} failed", flush=True)
    return 130 if outcome.interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
