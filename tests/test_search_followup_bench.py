"""benchmarks/search_followup.py's pure parts: the best-so-far curve, the oracle's pool (distinct allocations,
best rung-0 score first, pooled over both searches) and each method's share of the headroom over uniform."""

from __future__ import annotations

import doctest

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def follow():
    return load_benchmark("search_followup")


def test_helpers_doctests_pass(follow):
    assert doctest.testmod(follow).failed == 0


def _cand(search, number, target, rung0, a):
    return {"search": search, "number": number, "head": number, "target": target, "rung0": rung0,
            "ratios": {"a": a, "b": 0.5}}


def test_the_pool_takes_each_targets_best_distinct_allocations_from_both_searches(follow):
    cands = [_cand("autoprune", 0, 3.0, 0.30, 0.1), _cand("random_adaptive_bn", 1, 3.0, 0.35, 0.2),
             _cand("random_adaptive_bn", 2, 3.0, 0.35, 0.2),  # the same allocation again: once
             _cand("autoprune", 3, 2.0, 0.90, 0.3),            # another target: never pooled at 3x
             _cand("autoprune", 4, 3.0, 0.20, 0.4)]
    got = [(c["search"], c["number"]) for c in follow.pool(cands, 3.0, 10)]
    assert got == [("random_adaptive_bn", 1), ("autoprune", 0), ("autoprune", 4)]
    assert [c["number"] for c in follow.pool(cands, 3.0, 2)] == [1, 0]


def test_curves_follow_each_search_and_target_in_trial_order(follow):
    cands = [_cand("autoprune", 5, 2.0, 0.6, 0.1), _cand("autoprune", 1, 2.0, 0.5, 0.2),
             _cand("random_adaptive_bn", 2, 2.0, 0.4, 0.3), _cand("autoprune", 3, 3.0, 0.2, 0.4),
             _cand("autoprune", 4, 2.0, 0.55, 0.5)]
    assert follow.curves(cands) == {"2": {"autoprune": [0.5, 0.55, 0.6], "random_adaptive_bn": [0.4]},
                                    "3": {"autoprune": [0.2]}}


def test_headroom_share_is_the_fraction_of_the_gap_closed(follow):
    assert follow.headroom_share(0.855, 0.84, 0.86) == pytest.approx(0.75)
    assert follow.headroom_share(0.86, 0.84, 0.86) == 1.0
    assert follow.headroom_share(0.85, 0.86, 0.85) is None  # the oracle below uniform: nothing to share


def _studies(folder, *names):
    for name in names:
        (folder / f"bench_resnet20_{name}").mkdir(parents=True)
        (folder / f"bench_resnet20_{name}" / "study.db").touch()


def test_an_autoprune_of_run_pools_the_earlier_search_too_and_needs_its_studies_first(follow, tmp_path, monkeypatch,
                                                                                      capsys):
    from types import SimpleNamespace

    run = {"budget": {"seed": 2, "model": "resnet20", "threads": 2, "device": "cpu", "study": "v6.yaml"},
           "methods": {"autoprune": {}, "random_adaptive_bn": {}, "uniform_l1": {}, "autoprune_earlier": {}}}
    _studies(tmp_path / "w", "autoprune", "random")
    loaded = []
    monkeypatch.setattr(follow.bench, "load", lambda spec, name, folder, extra: loaded.append(
        (spec.study, name, folder.name, extra)) or name)
    monkeypatch.setattr(follow, "prepare", lambda study, *a, **k: study)
    args = SimpleNamespace(run="v6.json", workdir=str(tmp_path / "w"), checkpoint="c", data_root="d",
                           earlier_studies=None)
    for earlier, says in ((None, "--earlier-studies DIR"), (str(tmp_path / "e"), "no bench_resnet20_autoprune/study.db")):
        args.earlier_studies = earlier
        with pytest.raises(SystemExit) as refused:
            follow.contexts(run, args)
        assert refused.value.code == 2 and says in capsys.readouterr().err
    assert loaded == []  # refused before any study was prepared
    _studies(tmp_path / "e", "autoprune")
    ctxs = follow.contexts(run, args)
    assert list(ctxs) == ["autoprune", "random_adaptive_bn", "autoprune_earlier"]
    assert loaded[0][:3] == ("v6.yaml", "bench_resnet20_autoprune", "w")
    assert loaded[1][2:] == ("w", follow.bench.RANDOM_OVERRIDES)
    assert loaded[2][:3] == (str(follow.bench.STUDY), "bench_resnet20_autoprune", "e")  # the study it searched with


def test_the_oracle_table_gives_each_methods_pick_and_share_of_the_mean_headroom(follow):
    def seed(n, uniform, oracle, pick, pooled):
        targets = {k: {"uniform": uniform, "oracle": oracle, "val_selected": pooled[0],
                       "rows": [{"test": p} for p in pooled] + [{"test": pick, "pick": True}],
                       "share": {"autoprune": follow.headroom_share(pick, uniform, oracle), "uniform_l1": 0.0}}
                   for k in ("1.5", "2", "3")}
        run = {"budget": {"seed": n}, "methods": {"uniform_l1": {}, "autoprune": {"acc_at": {k: pick for k in targets}}}}
        return run, {"oracle": {"pool_size": 2, "targets": targets}}

    lines = follow.oracle_table([seed(2, 0.84, 0.86, 0.85, [0.86, 0.84]), seed(3, 0.84, 0.88, 0.87, [0.88, 0.86])],
                                ["1.5", "2", "3"])
    assert "autoprune (share)" in lines[2] and "uniform_l1" not in lines[2]
    # means: uniform 84, oracle 87, pick 86 -> share 2/3; per seed 0.50 and 0.75; pooled mean (85 + 87) / 2 = 86
    assert lines[-1] == "| 3x | 84.00 | 87.00 | 87.00 | 86.00 | 86.00 (0.67; 0.50 0.75) |"
