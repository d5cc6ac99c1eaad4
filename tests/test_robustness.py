"""Bad input is rejected before anything runs or is written; caches that fail their checksum are rebuilt.

Bad input: a malformed study or search-space file, an unreadable checkpoint or one of another model, an unknown
model or data set, a storage that does not answer, an existing study of that name that means something else.
Each makes ``autoprune search`` exit 2 with one line naming the file and the field, and write nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from autoprune.cli import main
from autoprune.config import load_study
from autoprune.engine.context import prepare
from autoprune.engine.storage import create_or_load
from autoprune.models.factory import MODELS, QuickstartCNN
from tests.conftest import TINY_SPACE, TINY_STUDY
from tests.test_distributed import postgres  # noqa: F401  (fixture: PostgreSQL, or skip)

# (dotted field, a value it must refuse)
BAD_VALUES = [
    ("budget.n_trials", 0), ("budget.n_trials", "many"), ("recovery.alpha", 1.5), ("recovery.lr", -0.1),
    ("recovery.steps", -1), ("recovery.temperature", 0), ("data.val_fraction", 1.0), ("data.name", "mnist"),
    ("objectives", ["macs"]), ("objectives", ["accuracy", "flops"]), ("sampler.name", "grid"),
    ("measure.latency_repeats", 0), ("model.num_classes", 1), ("name", "has space"), ("seed", "zero"),
    ("storage.grace_period", 1), ("constraints.min_accuracy", 2.0), ("model", "quickstart_cnn"),
]
MISSING = ["name", "model", "data", "search_space", "model.name", "data.name"]


def _set(doc: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        doc = doc.setdefault(key, {})
    doc[leaf] = value


def _drop(doc: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        doc = doc[key]
    del doc[leaf]


mutation = st.one_of(
    st.sampled_from(BAD_VALUES).map(lambda fv: ("set", *fv)),
    st.sampled_from(MISSING).map(lambda f: ("drop", f, None)),
    st.tuples(st.sampled_from(["", "model.", "data.", "recovery.", "budget."]),
              st.from_regex(r"[a-z]{3,10}_x", fullmatch=True)).map(lambda pk: ("set", pk[0] + pk[1], 1)),
)


def examples(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def refused(args: list[str], *named: str) -> str:
    """Run ``autoprune search ARGS``; assert exit 2 and one stderr line holding each of ``named``; return it."""
    result = CliRunner().invoke(main, ["search", *args])
    assert result.exit_code == 2, (args, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, (args, lines)
    for text in named:
        assert text in lines[0], (text, lines)
    return lines[0]


def write(d: Path, study: dict | None = None, space: dict | None = None, **changes) -> Path:
    """A study file (TINY_STUDY with ``changes``, workdir d/run) and its search space ``space`` in folder d."""
    doc = yaml.safe_load(yaml.safe_dump(dict(study or TINY_STUDY, workdir=str(d / "run"))))
    doc.update(changes)
    (d / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE if space is None else space))
    (d / "study.yaml").write_text(yaml.safe_dump(doc))
    return d / "study.yaml"


@examples(40)
@given(m=mutation)
def test_malformed_study_is_one_line_exit_2_and_writes_nothing(tmp_path_factory, m):
    d = tmp_path_factory.mktemp("bad")
    doc = yaml.safe_load(yaml.safe_dump(TINY_STUDY))
    kind, field, value = m
    (_set if kind == "set" else _drop)(doc, field, *([value] if kind == "set" else []))
    path = write(d, doc)
    refused([str(path)], str(path), field.split(".")[0])
    assert not (d / "run").exists(), "nothing written: no study folder, no storage"


# (the field the error must name, and what it says where a union of types could hide it; a change to TINY_SPACE)
BAD_SPACES = [
    ("ratio", {"ratio": {"low": 0.0, "high": 1.0}}), ("ratio", {"ratio": {"low": -0.1, "high": 0.5}}),
    ("ratio.low", {"ratio": {"high": 0.5}}), ("ratio", {"ratio": 0.5}),
    ("ratio.step", {"ratio": {"low": 0, "high": 0.5, "step": 0}}), ("round_to", {"round_to": 0}),
    ("scorers", {"scorers": []}), ("scorers", {"scorers": "l1"}), ("scorers", {"scorers": ["l1", "magic"]}),
    ("scorers", {"scorers": ["l1", "l1"]}),
    ("recovery.lr.choices: List should have at least 1", {"recovery": {"lr": {"choices": []}}}),
    ("recovery.steps: low", {"recovery": {"steps": {"low": 10, "high": 5}}}),
    ("recovery", {"recovery": {"momentum": 0.5}}), ("recovery.alpha", {"recovery": {"alpha": [0.5, 0.9]}}),
    ("groups.by", {"groups": {"by": "layer"}}), ("groups", {"groups": {"by": "named"}}),
    ("groups", {"groups": {"by": "named", "named": {"a": []}}}), ("groups", {"groups": "dependency"}),
]
space_mutation = st.one_of(
    st.tuples(st.sampled_from(["", "groups.", "ratio."]), st.from_regex(r"[a-z]{3,10}_x", fullmatch=True))
    .map(lambda pk: (pk[0] + pk[1], _nested(pk[0] + pk[1], 1))),
    st.floats(-5, -1e-6).map(lambda low: ("ratio", {"ratio": {"low": low, "high": 0.5}})),
    st.floats(1.0, 5.0).map(lambda high: ("ratio", {"ratio": {"low": 0.0, "high": high}})),
)


def _nested(dotted: str, value) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(TINY_SPACE))
    _set(doc, dotted, value)
    return {k: doc[k] for k in dotted.split(".")[:1]}


def space_refused(d: Path, named: str, change: dict) -> None:
    path = write(d, space=dict(TINY_SPACE, **change))
    refused([str(path)], str(d / "space.yaml"), named)
    assert not (d / "run").exists()


@pytest.mark.parametrize("named,change", BAD_SPACES)
def test_malformed_search_space_is_one_line_exit_2_and_writes_nothing(tmp_path, named, change):
    space_refused(tmp_path, named, change)


@examples(30)
@given(m=space_mutation)
def test_unknown_keys_and_ratios_outside_0_1_in_the_search_space_are_refused(tmp_path_factory, m):
    space_refused(tmp_path_factory.mktemp("badspace"), *m)


checkpoint_file = st.one_of(
    st.just(("missing", None)),
    st.binary(max_size=64).map(lambda b: ("bytes", b)),
    st.sampled_from([4, 16]).map(lambda w: ("width", w)),
)


@examples(10)
@example(("missing", None)).via("a checkpoint path with no file")
@example(("bytes", b"")).via("an empty file")
@example(("bytes", b"\x00garbage\xff" * 4)).via("garbage")
@example(("width", 16)).via("a state_dict of a wider model")
@given(c=checkpoint_file)
def test_bad_checkpoint_is_one_line_exit_2_and_writes_nothing(tmp_path_factory, c):
    d = tmp_path_factory.mktemp("ckpt")
    kind, value = c
    ckpt = d / "base.pt"
    if kind == "bytes":
        ckpt.write_bytes(value)
    elif kind == "width":
        torch.save(QuickstartCNN(10, width=value).state_dict(), ckpt)
    path = write(d)
    refused([str(path), "--checkpoint", str(ckpt)], str(ckpt), "model.checkpoint", "expected")
    assert not (d / "run").exists()


name_mistake = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_]{2,12}", fullmatch=True).filter(lambda n: n not in MODELS)
    .map(lambda n: ("model", n)),
    st.from_regex(r"[a-z]{3,8}_nomod:[a-z]{3,8}", fullmatch=True).map(lambda n: ("model", n)),
    st.from_regex(r"[a-z][a-z0-9]{2,12}", fullmatch=True)
    .filter(lambda n: n not in ("digits", "cifar10", "cifar100", "imagefolder")).map(lambda n: ("data", n)),
)


@examples(12)
@example(("model", "autoprune.models.factory:no_such_factory"))
@given(m=name_mistake)
def test_unknown_model_or_data_set_is_one_line_exit_2(tmp_path_factory, m):
    d = tmp_path_factory.mktemp("names")
    part, name = m
    path = write(d, **{part: dict(TINY_STUDY[part], name=name)})
    refused([str(path)], str(path), f"{part}.name")
    assert not (d / "run").exists()


@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:1/test", "nosuchdialect://x/y",
                                 "sqlite:///{d}/a_file/study.db"])
def test_storage_that_cannot_open_is_one_line_exit_2(tmp_path, url):
    (tmp_path / "a_file").write_text("a file, not a folder")
    path = write(tmp_path)
    refused([str(path), "--storage", url.format(d=tmp_path)], str(path), "storage.url")
    assert not (tmp_path / "run").exists()
    assert (tmp_path / "a_file").read_text() == "a file, not a folder"


# ------------------------------------------------------------------------------- an existing study of that name
def snapshot(url: str, name: str) -> tuple:
    ost = optuna.load_study(study_name=name, storage=url)
    rows = [(t.number, t.state, t.params, t.values, t.user_attrs, t.datetime_start, t.datetime_complete)
            for t in ost.get_trials()]
    return ost.user_attrs, ost.directions, rows


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def existing(request, tmp_path_factory):
    """A study made by autoprune (plus one complete trial) in SQLite, or in PostgreSQL under a unique name."""
    d = tmp_path_factory.mktemp("existing")
    name = f"robust-{uuid.uuid4().hex[:10]}"
    url = f"sqlite:///{d / 'study.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres")
    study = load_study(write(d, storage={"url": url, "study_name": name}))
    ost = create_or_load(study, None, None, optuna.samplers.RandomSampler(), {"accuracy": 0.9, "macs": 1000})
    ost.add_trial(optuna.trial.create_trial(params={"scorer": "l1"}, distributions={
        "scorer": optuna.distributions.CategoricalDistribution(["l1", "bn_scale"])}, values=[0.8, 500.0]))
    yield url, name, d
    if request.param == "postgresql":
        optuna.delete_study(study_name=name, storage=url)


# (what differs from the existing study, the text its error must hold besides the file)
OTHER_MEANINGS = st.one_of(
    st.sampled_from([["accuracy", "params"], ["macs", "accuracy"], ["accuracy", "macs", "latency_ms"]])
    .map(lambda o: ({"objectives": o}, None, "objectives")),
    st.tuples(st.sampled_from([0.3, 0.5, 0.9]), st.sampled_from([["l1"], ["bn_scale", "l1"], ["l2"]]))
    .map(lambda rs: ({}, dict(TINY_SPACE, ratio={"low": 0.0, "high": rs[0], "step": 0.1}, scorers=rs[1]),
                     "search space")),
    st.integers(1, 40).filter(lambda n: n != 5)
    .map(lambda n: ({"recovery": dict(TINY_STUDY["recovery"], steps=n)}, None, "recovery")),
)


@examples(8)
@example(({"objectives": ["accuracy", "params"]}, None, "objectives"))
@example(({}, dict(TINY_SPACE, scorers=["l1"]), "search space"))
@given(other=OTHER_MEANINGS)
def test_existing_study_with_another_meaning_is_refused_and_left_unchanged(existing, tmp_path_factory, other):
    url, name, d = existing
    changes, space, named = other
    db = d / "study.db"
    before = snapshot(url, name), (db.stat().st_mtime_ns, db.stat().st_size) if db.exists() else None
    here = tmp_path_factory.mktemp("again")
    path = write(here, space=space, storage={"url": url, "study_name": name}, **changes)
    line = refused([str(path)], name, named)
    assert str(here / "space.yaml" if space else path) in line, line
    after = snapshot(url, name), (db.stat().st_mtime_ns, db.stat().st_size) if db.exists() else None
    assert after == before, "the existing study is left exactly as it was"
    assert not (here / "run").exists()


def test_corrupted_base_cache_is_rebuilt(tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(dict(TINY_STUDY, workdir=str(tmp_path / "run"))))
    first = prepare(load_study(path))
    assert first.reference["trained_here"] is True
    cache = next((tmp_path / "run").glob("base-*.pt"))
    assert prepare(load_study(path)).reference["trained_here"] is False  # the intact cache is reused
    cache.write_bytes(cache.read_bytes()[:-100])  # a kill mid-write by something other than autoprune
    again = prepare(load_study(path))
    assert again.reference["trained_here"] is True
    assert (tmp_path / "run" / (cache.name + ".sha256")).is_file()
