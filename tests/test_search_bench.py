"""benchmarks/search_vs_baselines.py's helpers: methods compared with random search image by image."""

from __future__ import annotations

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
