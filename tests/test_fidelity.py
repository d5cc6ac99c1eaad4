"""Cheap trials: the cached teacher logits, promotion to a longer recovery, warm start, cost accounting."""

from __future__ import annotations

import copy
import math

import optuna

import pytest
import torch
import yaml
from optuna.distributions import FloatDistribution

from autoprune.accounting import cost_summary
from autoprune.backends.optuna_backend import run_search
from autoprune.config import RecoveryConfig, load_study
from autoprune.context import prepare, stream_steps
from autoprune.distill import finetune, train_step
from autoprune.pareto import nondominated_ranks, promote
from autoprune.record import TrialRecord
from autoprune.telling import records
from autoprune.teacher import build_stream, load_or_build_stream, sample_stream_indices
from autoprune.warmstart import global_prune, global_ratios, snap, warm_start_params
from tests.conftest import TINY_SPACE, TINY_STUDY

MAXMIN = ["maximize", "minimize"]


def _study(d, study=None, space=None):
    (d / "space.yaml").write_text(yaml.safe_dump(dict(TINY_SPACE, **(space or {}))))
    (d / "study.yaml").write_text(yaml.safe_dump(dict(TINY_STUDY, workdir=str(d / "run"), **(study or {}))))
    return load_study(d / "study.yaml")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    d = tmp_path_factory.mktemp("fidelity")
    return prepare(_study(d, space={"warm_start": {"uniform": [0.2, 0.5], "global": [0.3]}}))


# ------------------------------------------------------------------------------------------------ teacher cache
def test_stream_indices_visit_every_image_once_per_epoch_and_are_seeded():
    idx, oy, ox, flip = sample_stream_indices(100, steps=7, batch_size=30, augment=True, seed=3)
    assert idx.shape == (7, 30) and oy.shape == (7, 30) and flip.dtype == torch.bool
    for epoch in range(2):  # 3 full batches per epoch (the last 10 images of each shuffle are dropped)
        seen = idx[3 * epoch: 3 * epoch + 3].flatten()
        assert len(set(seen.tolist())) == 90
    assert int(oy.max()) <= 8 and int(ox.max()) <= 8
    again = sample_stream_indices(100, steps=7, batch_size=30, augment=True, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((idx, oy, ox, flip), again))
    assert not torch.equal(idx, sample_stream_indices(100, 7, 30, True, seed=4)[0])


def test_cached_logits_are_the_teachers_on_exactly_the_streamed_images(ctx):
    stream = build_stream(ctx.base, ctx.data.train, steps=3, batch_size=16, augment=True, seed=0)
    with torch.no_grad():
        for step in range(3):
            x, _ = stream.images(ctx.data.train, step)
            assert torch.allclose(stream.logits[step].float(), ctx.base(x), atol=1e-2)
    x0, _ = stream.images(ctx.data.train, 0)
    x0_again, _ = stream.images(ctx.data.train, 0)
    assert torch.equal(x0, x0_again)  # the augmentation is part of the stream, not redrawn


def test_finetune_on_the_stream_never_runs_the_teacher_and_matches_distilling_live(ctx):
    stream = build_stream(ctx.base, ctx.data.train, steps=4, batch_size=32, augment=False, seed=0)
    calls = []
    cached, live = copy.deepcopy(ctx.base), copy.deepcopy(ctx.base)  # copied before the hook (deepcopy copies hooks)
    hook = ctx.base.register_forward_hook(lambda *a: calls.append(1))
    try:
        finetune(cached, ctx.data.train, steps=4, settings=RecoveryConfig(batch_size=32, lr=0.01), teacher=ctx.base,
                 stream=stream)
        assert calls == []
        # the same batches on `live`, the teacher run every step
        opt = torch.optim.SGD(live.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / 4)))
        live.train()
        for step in range(4):
            x, y = stream.images(ctx.data.train, step)
            train_step(live, ctx.base, x, y, opt, sched, 4.0, 0.9, "live")
        assert len(calls) == 4
    finally:
        hook.remove()
    for a, b in zip(cached.parameters(), live.parameters()):
        assert torch.allclose(a, b, atol=1e-3)


def test_stream_cache_is_reused_and_rebuilt_when_corrupt(ctx, tmp_path):
    args = (ctx.base, ctx.data.train, 3, 16, True, 0)
    s1, where1 = load_or_build_stream(tmp_path, "key", *args)
    s2, where2 = load_or_build_stream(tmp_path, "key", *args)
    assert where1.startswith("computed") and where2.startswith("cached")
    assert torch.equal(s1.logits, s2.logits) and torch.equal(s1.idx, s2.idx)
    path = next(tmp_path.glob("teacher-*.pt"))
    path.write_bytes(path.read_bytes()[:-50])
    notes = []
    s3, where3 = load_or_build_stream(tmp_path, "key", *args, log=notes.append)
    assert where3.startswith("computed") and "checksum" in notes[0]
    assert torch.equal(s3.logits, s1.logits)


def test_stream_holds_the_longest_recovery_plus_a_promotion(tmp_path):
    study = _study(tmp_path, study={"recovery": {"steps": 5, "batch_size": 64}, "fidelity": {"promote_steps": 7}},
                   space={"recovery": {"steps": {"low": 2, "high": 9}}})
    assert stream_steps(study) == 16


# ---------------------------------------------------------------------------------------------------- promotion
def test_nondominated_ranks_peel_fronts():
    pts = [[0.9, 10], [0.8, 5], [0.7, 10], [0.6, 6], [0.5, 20]]
    assert nondominated_ranks(pts, MAXMIN) == [0, 0, 1, 1, 2]


def test_promotion_takes_the_best_third_and_respects_the_quota():
    others = [[0.5, 7], [0.6, 8], [0.7, 9], [0.8, 10], [0.4, 12]]  # one front; [0.4, 12] is dominated
    assert promote([0.95, 5], others, MAXMIN, eta=3)  # dominates everything
    assert not promote([0.3, 13], others, MAXMIN, eta=3)  # rank 2: five points are better, quota is 2
    assert promote([0.55, 7.5], others, MAXMIN, eta=3)  # on the front
    assert not promote([0.95, 5], others, MAXMIN, eta=3, promoted=2)  # ceil(6 / 3) = 2 already promoted


def test_search_promotes_about_a_third_and_records_fidelity(tmp_path):
    study = _study(tmp_path, study={"fidelity": {"promote_steps": 6, "eta": 3},
                                    "budget": {"n_trials": 9}, "sampler": {"name": "random"}})
    c = prepare(study)
    ost = run_search(c, n_trials=9).study
    done = [t for t in ost.get_trials() if t.state.name == "COMPLETE"]
    fid = [t.user_attrs["fidelity"] for t in done]
    promoted = [f for f in fid if f["promoted"]]
    assert 0 < len(promoted) <= 3  # at least one, at most ceil(9 / 3)
    assert fid[0]["promoted"]  # the first trial is the best so far
    for t in done:
        f = t.user_attrs["fidelity"]
        assert f["steps"] == (5 + 6 if f["promoted"] else 5)
        assert t.user_attrs["metrics"]["accuracy"] == f["accuracy"]
        assert t.user_attrs["plan"]["finetune_steps"] == f["steps"]
    summary = cost_summary(records(ost))
    assert summary["promotion"]["promoted"] == len(promoted)
    assert summary["finetune_steps"] == sum(f["steps"] for f in fid)


def test_short_recovery_is_scored_on_a_seeded_validation_subset_and_promotion_on_all_of_it(tmp_path):
    study = _study(tmp_path, study={"fidelity": {"promote_steps": 4, "eta": 3, "short_val_images": 50},
                                    "budget": {"n_trials": 6}, "sampler": {"name": "random"}})
    c = prepare(study)
    n_val = len(c.data.val)
    sub = c.short_val
    assert len(sub) == 50 < n_val
    rows = {tuple(r.flatten().tolist()) for r in c.data.val.x}
    assert all(tuple(r.flatten().tolist()) in rows for r in sub.x), "the subset is made of validation images"
    assert torch.equal(sub.y, prepare(study).short_val.y), "the subset is seeded"
    done = [t for t in run_search(c, n_trials=6).study.get_trials() if t.state.name == "COMPLETE"]
    assert any(t.user_attrs["fidelity"]["promoted"] for t in done)
    for t in done:
        f = t.user_attrs["fidelity"]
        assert f["short_val_images"] == 50 and math.isclose(f["short_accuracy"] * 50, round(f["short_accuracy"] * 50))
        assert f["val_images"] == (n_val if f["promoted"] else 50)
        if f["promoted"]:  # re-scored on the whole split
            assert math.isclose(f["accuracy"] * n_val, round(f["accuracy"] * n_val))


# --------------------------------------------------------------------------------------------------- warm start
def test_snap_to_the_ratio_grid():
    d = FloatDistribution(0.0, 0.7, step=0.1)
    assert snap(0.26, d) == 0.3 and snap(0.95, d) == 0.7 and snap(-0.1, d) == 0.0
    assert snap(0.333, FloatDistribution(0.0, 0.7)) == 0.333


def test_global_ratios_read_back_what_global_pruning_removed(ctx):
    ratios = global_ratios(ctx, 0.4)
    pruned = dict(global_prune(ctx, 0.4).named_modules())
    base = dict(ctx.base.named_modules())
    removed = sum(base[r].out_channels - pruned[r].out_channels for rs in ctx.layout.roots.values() for r in rs)
    total = sum(base[r].out_channels for rs in ctx.layout.roots.values() for r in rs)
    weighted = sum(ratios[g] * ctx.layout.channels[g] for g in ratios) / total
    assert weighted == pytest.approx(removed / total)
    assert 0.2 < removed / total < 0.6
    assert len(set(round(v, 3) for v in ratios.values())) > 1  # global pruning does not prune every group alike


def test_warm_start_enqueues_the_baselines_first(ctx):
    dists = ctx.distributions()
    params = warm_start_params(ctx, dists)
    assert len(params) == 3
    assert all(params[0][f"ratio.{g}"] == 0.2 for g in ctx.groups)
    assert all(params[1][f"ratio.{g}"] == 0.5 for g in ctx.groups)
    assert params[0]["scorer"] == "l1"
    ost = run_search(ctx, n_trials=4).study
    trials = sorted(ost.get_trials(), key=lambda t: t.number)
    for t, p, kind in zip(trials[:3], params, ["uniform", "uniform", "global"]):
        assert {k: t.params[k] for k in p} == p and TrialRecord.from_frozen(t).warm_start == kind
    assert "warm_start" not in trials[3].user_attrs
    assert run_search(ctx, n_trials=5).study.user_attrs["warm_started"] == 3  # a resume enqueues nothing again
    assert sum(1 for t in ost.get_trials() if t.user_attrs.get("warm_start")) == 3


# ------------------------------------------------------------------------------------------ rungs and targets
def _rec(number: int, scores: dict, target: float | None = None, macs: int = 100):
    from autoprune.record import Fidelity, Metrics, PlanRecord

    top = max(scores)
    return TrialRecord(Metrics(scores[top], macs, 10, 0.1), PlanRecord("l1", {"g": 0.3}, target=target),
                       Fidelity(dict(scores)), number=number, state="COMPLETE")


def test_promotion_counts_peers_and_quota_within_one_target_and_one_rung():
    from autoprune.fidelity import promoter
    from autoprune.record import Metrics

    done = [_rec(0, {0: 0.80, 20: 0.85}, 2.0), _rec(1, {0: 0.70}, 2.0), _rec(2, {0: 0.60}, 2.0),
            _rec(3, {0: 0.95, 20: 0.96, 220: 0.97}, 3.0)]
    decide = promoter(lambda: done, ["accuracy"], ["maximize"], eta=2)
    cand = Metrics(0.75, 100, 10, 0.1)
    # at 2x, rung 0: peers 0.80, 0.70, 0.60; 0.75 is second of four (best half) and one of the two allowed
    assert decide(cand, 0, 2.0)
    # other targets' trials are not peers: at 1.5x nobody has been scored, so even a poor candidate goes up
    assert decide(Metrics(0.1, 100, 10, 0.1), 0, 1.5)
    # at 3x the one peer went up already, so the quota (ceil(2 / 2) = 1) is used even for a better candidate
    assert not decide(Metrics(0.99, 100, 10, 0.1), 0, 3.0)
    # at 2x, rung 20: one peer (0.85) which went no further; 0.75 is worse: ranks 2 of 2, not in the best half
    assert not decide(cand, 20, 2.0)
    # quota: with two of three peers already promoted from rung 0 at 2x, even the best candidate waits
    done[1] = _rec(1, {0: 0.70, 20: 0.72}, 2.0)
    assert not decide(Metrics(0.99, 100, 10, 0.1), 0, 2.0)


def test_a_front_never_mixes_rungs(tmp_path):
    """A promoted trial's longer-recovery accuracy never competes with others' short scores: the default front
    compares every trial at the rung all reached, and --rung N compares only the trials that reached N."""
    from autoprune.storage import front

    study = _study(tmp_path, study={"fidelity": {"promote_steps": 6, "eta": 2}, "budget": {"n_trials": 6}})
    ost = run_search(prepare(study), n_trials=6).study
    recs = {r.number: r for r in records(ost)}
    short = front(ost)
    assert short and {e["rung"] for e in short} == {5}
    for e in short:
        assert e["accuracy"] == recs[e["trial"]].fidelity.scores[5]
    longer = front(ost, rung=11)
    assert longer and all(recs[e["trial"]].promoted for e in longer)
    for e in longer:
        assert e["rung"] == 11 and e["accuracy"] == recs[e["trial"]].fidelity.scores[11]
    # what Optuna was told (the sampler's data) is the first-rung score for every trial
    for t in ost.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert t.values[0] == recs[t.number].fidelity.scores[5]


def test_bn_rung_scores_every_candidate_before_any_fine_tune(tmp_path):
    study = _study(tmp_path, study={"fidelity": {"bn_rung": True, "promote_steps": 4, "eta": 2},
                                    "budget": {"n_trials": 8}, "targets": {"macs_reduction": [1.5, 2]}},
                   space={"scorers": ["l1"]})
    recs = records(run_search(prepare(study), n_trials=8).study)
    assert len(recs) == 8
    ladders = [sorted(r.fidelity.scores) for r in recs]
    assert all(lad[0] == 0 and lad in ([0], [0, 5], [0, 5, 9]) for lad in ladders), ladders
    assert any(lad == [0] for lad in ladders), "some candidates stop after rung 0"
    for t in (1.5, 2.0):  # per target, at most ceil(n/eta) went past rung 0
        at = [r for r in recs if r.plan.target == t]
        assert sum(r.promoted for r in at) <= -(-len(at) // 2)
    for r in recs:
        assert r.plan.finetune_steps == r.fidelity.steps and r.timings.get("finetune", 0.0) >= 0.0
        if r.fidelity.steps == 0:
            assert "finetune" not in r.timings


def test_a_bn_rung_alone_still_promotes_to_the_short_recovery(tmp_path):
    study = _study(tmp_path, study={"fidelity": {"bn_rung": True, "eta": 2}, "budget": {"n_trials": 4}})
    recs = records(run_search(prepare(study), n_trials=4).study)
    assert {tuple(sorted(r.fidelity.scores)) for r in recs} <= {(0,), (0, 5)}
    assert any(r.fidelity.steps == 5 for r in recs) and any(r.fidelity.steps == 0 for r in recs)
