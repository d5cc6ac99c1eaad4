"""Bad input is rejected before anything runs or is written; caches that fail their checksum are rebuilt."""

from __future__ import annotations

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoprune.cli import main
from autoprune.config import load_study
from autoprune.context import prepare
from tests.conftest import TINY_SPACE, TINY_STUDY

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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=mutation)
def test_malformed_study_is_one_line_exit_2_and_writes_nothing(tmp_path_factory, m):
    d = tmp_path_factory.mktemp("bad")
    doc = yaml.safe_load(yaml.safe_dump(dict(TINY_STUDY, workdir=str(d / "run"))))
    kind, field, value = m
    (_set if kind == "set" else _drop)(doc, field, *([value] if kind == "set" else []))
    (d / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    path = d / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(main, ["search", str(path)])
    assert result.exit_code == 2, (m, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(path) in lines[0], (m, lines)
    top = field.split(".")[0]
    assert top in lines[0], (m, lines)
    assert not (d / "run").exists(), "nothing written: no study folder, no storage"


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
