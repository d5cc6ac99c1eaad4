from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CIFAR = SHARED / "datasets" / "cifar10"
WEIGHTS = SHARED / "weights" / "cifar10-resnet"


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package), for testing its helpers."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def need_shared(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"needs the shared data/weights, missing: {', '.join(missing)}")


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """Tiny inputs: intra-op threading only adds overhead, and on a busy 2-core machine it makes spin-waits slow."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY_STUDY = {
    "name": "tiny",
    "seed": 0,
    "model": {"name": "quickstart_cnn", "kwargs": {"width": 8}, "base_training": {"epochs": 4, "lr": 0.05, "batch_size": 64}},
    "data": {"name": "digits", "val_fraction": 0.2, "test_fraction": 0.2},
    "search_space": "space.yaml",
    "objectives": ["accuracy", "macs"],
    "recovery": {"bn_recalibration_batches": 2, "steps": 5, "batch_size": 64},
    "measure": {"latency_batch_size": 1, "latency_repeats": 2, "latency_warmup": 1},
    "budget": {"n_trials": 4},
    "sampler": {"name": "tpe", "n_startup_trials": 2},
}
TINY_SPACE = {"groups": {"by": "dependency"}, "ratio": {"low": 0.0, "high": 0.7, "step": 0.1},
              "scorers": ["l1", "bn_scale"]}


@pytest.fixture
def write_study(tmp_path):
    """Write a tiny digits study (and its search space) into tmp_path; returns the study file's path."""

    def write(study_overrides: dict | None = None, space_overrides: dict | None = None, name: str = "study.yaml") -> Path:
        study = yaml.safe_load(yaml.safe_dump(TINY_STUDY))
        study["workdir"] = str(tmp_path / "run")
        for k, v in (study_overrides or {}).items():
            study[k] = v
        space = dict(TINY_SPACE, **(space_overrides or {}))
        (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
        path = tmp_path / name
        path.write_text(yaml.safe_dump(study))
        return path

    return write


# Subprocess searches in the tests run tiny models, whose tensors are far below glibc's 32 MB mmap threshold: the
# huge-pages restart (autoprune/cli/huge_pages.py) would only import torch a second time in each of them.
# tests/test_hostmalloc.py sets or clears the variable itself where it tests the restart.
os.environ.setdefault("AUTOPRUNE_HUGE_PAGES", "0")

# The files that run whole searches in subprocesses, slowest first: collected first, so that pytest-xdist
# (``-n auto --dist load``) hands their tests out before the many short ones and the workers finish together.
SLOW_FILES = ("test_distributed.py", "test_examples.py", "test_ray.py", "test_api_workers.py", "test_backends.py",
              "test_allocation_sampler.py", "test_journeys.py", "test_failures.py", "test_targets.py",
              "test_latency_model.py", "test_fidelity.py", "test_secrets.py", "test_cli.py", "test_finalize.py")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: order within a file is kept
