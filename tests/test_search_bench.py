"""benchmarks/search_vs_baselines.py's helpers: methods compared with random search image by image."""

from __future__ import annotations

import re

from autoprune.metrics.mcnemar import encode_hits
from tests.conftest import load_benchmark

bench = load_benchmark("search_vs_baselines")


def _point(target: float, hits: list[bool] | None) -> dict:
    return {"target": target, **({"test_hits": encode_hits(hits), "test_images": len(hits)} if hits else {})}


def test_each_method_is_paired_with_random_search_on_the_same_images_where_both_kept_them():
    methods = {"random_adaptive_bn": {"points": [_point(3.0, [True, False, False, False] * 5), _point(2.0, None)]},
               "autoprune": {"points": [_point(3.0, [True, True, True, False] * 5), _point(2.0, [True] * 20)]},
               "uniform_l1": {"points": [_point(3.0, None)]}}
    got = bench.paired_against(methods)
    assert set(got) == {"autoprune"} and set(got["autoprune"]) == {"3"}  # 2x: random kept no per-image results
    p = got["autoprune"]["3"]
    assert (p["images"], p["only_a"], p["only_b"]) == (20, 10, 0)
    assert p["difference"] == 0.5 and p["p_value"] < 0.01


def _old_run(uniform_acc: float) -> dict:
    row = lambda acc: {"acc_at": {"1.5": acc, "2": acc, "3": acc}, "compute_images": 1000,  # noqa: E731
                       "hypervolume_within_targets": 0.5,
                       "points": [{"target": 1.5, "accuracy": acc, "val_accuracy": 0.9}]}
    return {"budget": {"model": "resnet20", "device": "cpu", "seed": 3, "threads": 2, "final_epochs": 1.0,
                       "budget_images": 5000},
            "base": {"macs": 100}, "wall_s": 1.0, "autoprune": {"units": 990},
            "methods": {"autoprune": row(0.8), "uniform_l1": row(uniform_acc), "random_adaptive_bn": row(0.85)}}


def _autoprune_of(tmp_path, monkeypatch, uniform_acc: float, earlier_studies: str | None = None) -> dict:
    import json
    from types import SimpleNamespace

    import torch

    old = tmp_path / "old.json"
    old.write_text(json.dumps(_old_run(uniform_acc)))
    seen = {}
    monkeypatch.setattr(bench, "load", lambda args, name, workdir: seen.setdefault("seed", args.seed))
    monkeypatch.setattr(bench, "prepare", lambda study, device: SimpleNamespace(
        base=None, data=SimpleNamespace(train=None), example=torch.zeros(1, 3, 4, 4)))
    monkeypatch.setattr(bench, "build_stream", lambda *a: None)
    monkeypatch.setattr(bench, "uniform_placed", lambda ctx, t: (0.3, None))
    monkeypatch.setattr(bench, "final_recovery", lambda *a: {"accuracy": 0.9, "val_accuracy": 0.9})
    monkeypatch.setattr(bench, "search_until", lambda ctx, budget, chunk, name: (seen.setdefault("budget", budget)
                                                                                 and [], 1020.0, 0))
    monkeypatch.setattr(bench, "autoprune_picks", lambda ctx: {3.0: object()})
    monkeypatch.setattr(bench, "autoprune_point", lambda *a: {"target": 3.0, "accuracy": 0.87, "macs": 33.4,
                                                              "trial": 7, "warm_start": None, "_model": None})
    monkeypatch.setattr(bench, "paired_speedups", lambda base, models, x: [{"speedup": 2.9} for _ in models])
    monkeypatch.setattr(bench, "_study_summary", lambda recs, used, failed: {"units": round(used)})
    args = SimpleNamespace(autoprune_of=str(old), model="resnet20", device="cpu", seed=0, threads=1,
                           final_epochs=5.0, workdir=str(tmp_path / "w"), study="v6.yaml",
                           out=str(tmp_path / "new.json"), earlier_studies=earlier_studies)
    bench.autoprune_of(args)
    return {**json.loads((tmp_path / "new.json").read_text()), "_seen": seen}


def test_autoprune_of_reruns_only_autoprune_with_the_earlier_runs_settings_and_keeps_its_other_rows(
        tmp_path, monkeypatch, capsys):
    out = _autoprune_of(tmp_path, monkeypatch, uniform_acc=0.9)
    assert out["_seen"] == {"seed": 3, "budget": 5000}  # the earlier run's seed and budget, not the arguments'
    assert out["methods"]["autoprune"]["acc_at"]["3"] == 0.87 and out["methods"]["autoprune_earlier"]["acc_at"]["3"] == 0.8
    assert out["methods"]["random_adaptive_bn"]["acc_at"]["3"] == 0.85  # kept, not rerun
    assert out["spend_vs_random"] == {"autoprune": 1020, "earlier_autoprune": 990, "random_adaptive_bn": 1000}
    assert out["budget"]["study"] == "v6.yaml" and out["budget"]["autoprune_of"] == "old.json"


def test_autoprune_of_refuses_when_the_baseline_recovered_here_differs_from_the_earlier_runs(
        tmp_path, monkeypatch, capsys):
    import pytest

    with pytest.raises(SystemExit) as refused:
        _autoprune_of(tmp_path, monkeypatch, uniform_acc=0.8999)
    assert refused.value.code == 2 and not (tmp_path / "new.json").exists()
    assert re.search("error: .*another code path or machine.*--earlier-studies", capsys.readouterr().err)


def test_autoprune_of_recovers_the_earlier_picks_again_here_when_given_their_studies(tmp_path, monkeypatch):
    again = {"uniform_l1": [{"target": 3.0, "accuracy": 0.84, "macs": 33.4, "_model": None}],
             "random_adaptive_bn": [{"target": 3.0, "accuracy": 0.86, "macs": 33.4, "_model": None}],
             "autoprune_earlier": [{"target": 3.0, "accuracy": 0.84, "macs": 33.4, "_model": None}]}
    monkeypatch.setattr(bench, "recover_again", lambda *a: again)
    for name in ("random", "autoprune"):  # the earlier run's two studies, as its workdir keeps them
        (tmp_path / f"bench_resnet20_{name}").mkdir()
        (tmp_path / f"bench_resnet20_{name}" / "study.db").touch()
    out = _autoprune_of(tmp_path, monkeypatch, uniform_acc=0.9, earlier_studies=str(tmp_path))  # even where one matches
    assert set(out["methods"]) == {"autoprune", "uniform_l1", "random_adaptive_bn", "autoprune_earlier"}
    assert out["methods"]["random_adaptive_bn"]["acc_at"]["3"] == 0.86  # recovered here, not the earlier 0.85
    assert out["methods"]["random_adaptive_bn"]["compute_images"] == 1000  # what its search spent, kept
    assert out["earlier_methods"]["random_adaptive_bn"]["acc_at"]["3"] == 0.85 and out["budget"]["recovered_again"]


def test_autoprune_of_refuses_earlier_studies_without_both_studies_before_any_work(tmp_path, monkeypatch, capsys):
    import pytest

    with pytest.raises(SystemExit) as refused:
        _autoprune_of(tmp_path, monkeypatch, uniform_acc=0.9, earlier_studies=str(tmp_path / "missing"))
    assert refused.value.code == 2 and "no bench_resnet20_random/study.db" in capsys.readouterr().err
