"""``autoprune.search``: a search over Python objects runs the CLI's search, and bad objects are one clear error
before anything is written."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import autoprune
from autoprune.cli import main as cli
from autoprune.config import load_study
from autoprune.engine.context import prepare
from autoprune.errors import AutopruneError, ConfigError
from autoprune.metrics.scoring import ScoreError
from tests.conftest import TINY_SPACE

FAST = {"recovery": {"bn_recalibration_batches": 2, "steps": 4, "batch_size": 32},
        "measure": {"latency_batch_size": 1, "latency_repeats": 2, "latency_warmup": 1}}


def _blobs(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=gen) * 0.5 + y.view(-1, 1, 1, 1).float(), y)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def _search(tmp_path, **kw):
    args = dict(train_data=_blobs(96, 0), val_data=_blobs(48, 1), targets=[1.5, 2], n_trials=4, progress=False,
                storage=f"sqlite:///{tmp_path / 'api.db'}", workdir=str(tmp_path / "run"), **FAST)
    return autoprune.search(kw.pop("model", _net()), **{**args, **kw})


def test_the_python_search_runs_the_same_trials_as_the_command_for_the_same_seed(write_study, tmp_path):
    """The digits study through ``autoprune search``, then the same model and the same images handed over from
    Python: every trial's parameters, accuracy and MACs agree."""
    path = write_study({"recovery": {**FAST["recovery"], "teacher_cache": False}, "measure": FAST["measure"]})
    done = CliRunner().invoke(cli, ["search", str(path)], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    ctx = prepare(load_study(path), "cpu", recovery_stream=False)
    train, val = (TensorDataset(s.prepare(s.read(torch.arange(len(s)))[0]), s.read(torch.arange(len(s)))[1])
                  for s in (ctx.data.train, ctx.data.val))
    result = autoprune.search(ctx.base, train_data=DataLoader(train, batch_size=7), val_data=val, seed=0, n_trials=4,
                              space=TINY_SPACE, storage=f"sqlite:///{tmp_path / 'api.db'}", study_name="tiny",
                              workdir=str(tmp_path / "api"), progress=False,
                              recovery={**FAST["recovery"], "teacher_cache": False}, measure=FAST["measure"],
                              sampler={"name": "tpe", "n_startup_trials": 2}, objectives=["accuracy", "macs"])
    cli_study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    cli_trials, api_trials = cli_study.trials, result.study.trials
    assert len(api_trials) == len(cli_trials) >= 4
    for a, c in zip(api_trials, cli_trials):
        assert (a.state, a.params) == (c.state, c.params)
        assert a.values == pytest.approx(c.values, rel=1e-6, abs=1e-9)
    assert result.base["accuracy"] == cli_study.user_attrs["base"]["accuracy"]


def test_a_search_from_python_returns_a_front_to_select_from_and_rebuild(tmp_path):
    result = _search(tmp_path)
    assert result.front and result.score_name == "accuracy"
    pick = result.select(knee=True)
    assert pick.reason.startswith("knee") and pick.trial in {c.trial for c in result.front}
    pruned = pick.model()
    assert autoprune.measure(pruned, torch.randn(1, 3, 8, 8))["macs"] == pick.metrics["macs"]
    text, page = str(result), result._repr_html_()
    assert "accuracy" in text and "base" in text and f"{pick.metrics['macs']:,}" in text
    assert "<table>" in page and "accuracy" in page


def test_your_own_score_replaces_accuracy_under_its_name(tmp_path):
    calls = []

    def agreement(model):
        calls.append(1)
        x, y = _blobs(48, 1).tensors
        return (model(x).argmax(1) == y).float().mean() * 0.5 + 0.25  # a tensor, in [0.25, 0.75]

    result = _search(tmp_path, score=agreement)
    assert result.score_name == "agreement" and result.base["score_name"] == "agreement"
    scores = [c.metrics["agreement"] for c in result.front]
    assert scores and all(0.25 <= s <= 0.75 for s in scores)
    assert len(calls) >= 1 + 4  # the base and every trial
    assert "agreement" in str(result)
    floor = min(scores)
    assert result.select(min_agreement=floor).metrics["agreement"] >= floor
    with pytest.raises(TypeError, match="min_agreement"):
        result.select(min_accuracy=0.5)


@pytest.mark.parametrize(("value", "said"), [(float("nan"), "returned nan"), ("high", "returned 'high'"),
                                              (None, "returned a NoneType")])
def test_a_score_that_is_not_a_finite_number_is_one_error_naming_it_and_nothing_is_written(tmp_path, value, said):
    def my_score(model):
        return value

    with pytest.raises(ScoreError, match=f"score function 'my_score' {said}"):
        _search(tmp_path, score=my_score)
    assert not (tmp_path / "api.db").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("which", ["train_data", "val_data"])
def test_batches_that_do_not_fit_the_model_are_one_error_naming_the_data(tmp_path, which):
    wrong = TensorDataset(torch.randn(16, 1, 8, 8), torch.zeros(16, dtype=torch.long))  # one channel, not three
    with pytest.raises(AutopruneError, match=f"{which}: the model fails on a batch of {which} \\(inputs \\[1, 1, 8, 8\\]|"
                                             f"{which}: the model fails on a batch of {which} \\(inputs \\[2, 1, 8, 8\\]"):
        _search(tmp_path, **{which: wrong})
    assert not (tmp_path / "api.db").exists()


def test_default_accuracy_needs_class_labels_and_says_to_pass_a_score(tmp_path):
    soft = TensorDataset(_blobs(16, 1).tensors[0], torch.rand(16, 3))  # float targets: not class indices
    with pytest.raises(AutopruneError, match="score: the default score is top-1 accuracy.*pass score="):
        _search(tmp_path, val_data=soft)


def test_your_own_recovery_loss_replaces_distillation(tmp_path):
    seen = []

    def plain_ce(outputs, teacher_outputs, targets):
        seen.append(teacher_outputs is not None)
        return nn.functional.cross_entropy(outputs, targets)

    result = _search(tmp_path, loss=plain_ce)
    assert result.front and len(seen) > 4 * FAST["recovery"]["steps"] and all(seen)
    assert result.base["recovery_loss"] == "plain_ce (your function)"


def test_a_loss_that_does_not_give_a_scalar_tensor_is_one_error_naming_it(tmp_path):
    with pytest.raises(AutopruneError, match="loss: loss function '_half' returned 0.5 on train_data's batch; expected "
                                             "a finite scalar tensor"):
        _search(tmp_path, loss=_half)
    with pytest.raises(AutopruneError, match="loss: loss function 'loss' fails on train_data's batch.*ValueError: no"):
        _search(tmp_path, loss=lambda out, teacher, y: (_ for _ in ()).throw(ValueError("no")))
    assert not (tmp_path / "api.db").exists()


def _half(out, teacher, y):
    return 0.5


class _Dicts(Dataset):
    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        x, y = self.base[i]
        return {"pixel_values": x, "label": y, "id": i}


def test_dict_batches_by_their_usual_keys_or_your_own_adapter(tmp_path):
    result = _search(tmp_path, train_data=_Dicts(_blobs(96, 0)), val_data=DataLoader(_Dicts(_blobs(48, 1)), batch_size=5))
    assert result.front
    odd = [{"a": x, "b": y} for x, y in _blobs(48, 1)]
    with pytest.raises(AutopruneError, match="val_data: the batch adapter failed.*keys \\['a', 'b'\\]"):
        _search(tmp_path, val_data=odd)
    result = _search(tmp_path, val_data=odd, batch=lambda b: (b["a"], b["b"]) if "a" in b else (b[0], b[1]),
                     study_name="adapted")
    assert result.front


def test_settings_are_validated_as_a_study_file_s_with_the_same_messages(tmp_path):
    with pytest.raises(ConfigError, match="autoprune.search: recovery.steps: Input should be greater than or equal"):
        _search(tmp_path, recovery={"steps": -1})
    with pytest.raises(ConfigError, match="autoprune.search: fidelity.no_such: unknown key"):
        _search(tmp_path, fidelity={"no_such": 1})
    with pytest.raises(AutopruneError, match="data: data cannot be set here: the model and data are the objects"):
        _search(tmp_path, data={"name": "digits"})
    assert not (tmp_path / "api.db").exists()


def test_calling_again_resumes_the_stored_study(tmp_path):
    first = _search(tmp_path)
    n = len(first.study.trials)
    again = _search(tmp_path, n_trials=6)
    complete = [t for t in again.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6 and len(again.study.trials) > n
    assert all(math.isfinite(c.metrics["accuracy"]) for c in again.front)
