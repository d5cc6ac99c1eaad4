"""Cheap trials: the cached teacher logits, promotion to a longer recovery, warm start, cost accounting."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import optuna
import pytest
import torch
import yaml
from optuna.distributions import FloatDistribution

from autoprune.config import RecoveryConfig, load_study
from autoprune.engine.ask_tell import records
from autoprune.engine.backends.optuna_backend import run_search
from autoprune.engine.context import prepare, stream_steps
from autoprune.engine.record import TrialRecord
from autoprune.engine.status import cost_summary
from autoprune.engine.warm_start import global_prune, global_ratios, snap, warm_start_params
from autoprune.pareto import nondominated_ranks
from autoprune.train.distill import finetune, train_step
from autoprune.train.teacher_stream import build_stream, load_or_build_stream, sample_stream_indices
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


def test_stream_holds_the_short_recovery_plus_a_promotion(tmp_path):
    study = _study(tmp_path, study={"recovery": {"steps": 5, "batch_size": 64}, "fidelity": {"promote_steps": 7}})
    assert stream_steps(study) == 12


# ---------------------------------------------------------------------------------------------------- promotion
def test_nondominated_ranks_peel_fronts():
    pts = [[0.9, 10], [0.8, 5], [0.7, 10], [0.6, 6], [0.5, 20]]
    assert nondominated_ranks(pts, MAXMIN) == [0, 0, 1, 1, 2]


def test_search_promotes_by_continuing_the_best_candidates(tmp_path):
    """Deferred promotion: a due candidate is taken one rung further by a later trial that continues it (same
    parameters, its scores and one more), and each candidate counts once in the accounting."""
    study = _study(tmp_path, study={"fidelity": {"promote_steps": 6, "eta": 3},
                                    "budget": {"n_trials": 12}, "sampler": {"name": "random"}})
    ost = run_search(prepare(study), n_trials=12).study
    recs = {r.number: r for r in records(ost)}
    later = [r for r in recs.values() if r.continues is not None]
    assert later, "some candidate went up"
    for r in later:
        parent = recs[r.continues]
        assert r.number > parent.number and r.params == parent.params
        assert r.fidelity.scores[5] == parent.fidelity.scores[5] and sorted(r.fidelity.scores) == [5, 11]
        assert (r.metrics.macs, r.metrics.params) == (parent.metrics.macs, parent.metrics.params)
        assert r.metrics.accuracy == r.fidelity.scores[11] and r.plan.finetune_steps == 11
        assert r.timings["finetune"] > 0 and "measure" not in r.timings  # only the extra rung ran
    fresh = [r for r in recs.values() if r.continues is None]
    best = max(fresh, key=lambda r: r.fidelity.scores[5])
    assert best.number in {r.continues for r in later}, "the best first-rung candidate went up"
    summary = cost_summary(list(recs.values()))
    assert summary["finetune_steps"] == 5 * len(fresh) + 6 * len(later)  # each lineage's steps once
    assert summary["promotion"]["promoted"] == len(later)


def test_a_continuation_from_the_saved_model_equals_rebuilding_the_candidate(tmp_path):
    """Continuing from the saved model is the computation the candidate would run on from scratch: the same
    score as re-applying its plan and re-running its recovery (the saved file gone)."""
    import os
    from dataclasses import replace

    from autoprune.engine.trial import continue_trial, run_trial

    study = _study(tmp_path, study={"fidelity": {"promote_steps": 6, "bn_rung": True}})
    c = prepare(study)
    params = {f"ratio.{g}": 0.3 for g in c.groups} | {"scorer": "l1"}
    first = replace(run_trial(c, params, seed=3, save_dir=tmp_path), number=0)
    second = replace(continue_trial(c, first, save_dir=tmp_path), number=1, continues=0)
    assert sorted(second.fidelity.scores) == [0, 5] and second.fidelity.scores[0] == first.fidelity.scores[0]
    third = continue_trial(c, second, save_dir=tmp_path)
    os.remove(second.model_file)
    again = continue_trial(c, second, save_dir=tmp_path)
    assert sorted(third.fidelity.scores) == [0, 5, 11]
    assert third.continues == 1 and TrialRecord.from_json(third.to_json()).continues == 1  # the record's lineage
    assert again.fidelity.scores == third.fidelity.scores and again.fidelity.hits == third.fidelity.hits


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
    from autoprune.engine.record import Fidelity, Metrics, PlanRecord

    top = max(scores)
    return TrialRecord(Metrics(scores[top], macs, 10, 0.1), PlanRecord("l1", {"g": 0.3}, target=target),
                       Fidelity(dict(scores)), number=number, state="COMPLETE")


def test_due_takes_each_rungs_best_within_one_target_whenever_they_arrive():
    from autoprune.engine.fidelity import due

    ladder = [0, 20, 220]

    def pick(done, target=2.0, claimed=()):
        r = due(done, ladder, ["accuracy"], ["maximize"], 2, target, claimed)
        return None if r is None else r.number

    early = [_rec(0, {0: 0.60}, 2.0), _rec(1, {0: 0.55}, 2.0)]
    assert pick(early) == 0  # floor(2 / 2) = 1 place at rung 0
    # trial 0 went up; two better candidates arrive later: both are in the best half and go up in turn (an
    # inline quota, ceil(n / eta) used by early arrivals, would have refused them)
    later = [_rec(0, {0: 0.60, 20: 0.70}, 2.0), early[1], _rec(2, {0: 0.90}, 2.0), _rec(3, {0: 0.95}, 2.0)]
    assert pick(later) == 3 and pick(later, claimed=[3]) == 2 and pick(later, claimed=[3, 2]) is None
    # the higher rung first: with two candidates at rung 20, the better one goes on to 220
    up = later + [_rec(4, {0: 0.95, 20: 0.80}, 2.0, macs=100)]
    up[3] = _rec(3, {0: 0.95, 20: 0.80}, 2.0)
    assert pick(up) == 3  # rung 20: 0.80 (3) and 0.80 (4), 0.70 (0): one place, trial number breaks the tie
    # other targets' trials are not peers
    assert pick(later, target=1.5) is None and pick(later + [_rec(5, {0: 0.1}, 1.5), _rec(6, {0: 0.2}, 1.5)], 1.5) == 6
    # a candidate and its continuation count once (the continuation holds the candidate's scores)
    cont = replace(_rec(7, {0: 0.60, 20: 0.70}, 2.0), continues=0)
    assert pick(later + [cont], claimed=[3, 2]) is None
    assert pick([early[0], cont, early[1]]) is None  # one lineage at rung 20, one place at rung 0, taken


def test_a_factor_per_promotion_keeps_few_off_rung_0_and_more_of_those_further():
    from autoprune.engine.fidelity import due

    # 12 candidates at rung 0, 3 of them (0-2) already at rung 20
    done = [_rec(i, {0: 0.9 - i / 100, **({20: 0.5 + i / 100} if i < 3 else {})}, 3.0) for i in range(12)]

    def pick(eta, claimed=()):
        r = due(done, [0, 20, 100], ["accuracy"], ["maximize"], eta, 3.0, claimed)
        return None if r is None else r.number

    assert pick(12) is None  # one factor: floor(12 / 12) = 1 place at rung 0 (taken), floor(3 / 12) = 0 at rung 20
    assert pick([12, 2]) == 2  # floor(3 / 2) = 1 place at rung 20: the best there goes on to rung 100
    assert pick([4, 2], claimed=[2]) is None  # rung 0's floor(12 / 4) = 3 places are all taken already
    assert pick([3, 2], claimed=[2]) == 3  # a fourth place at rung 0: the next best there


def test_eta_is_one_factor_or_one_per_promotion_of_the_ladder():
    from pydantic import ValidationError

    from autoprune.config import StudyConfig

    base = {"name": "s", "model": {"name": "resnet20"}, "data": {"name": "cifar10"}, "search_space": "space.yaml",
            "recovery": {"steps": 20}}
    ok = StudyConfig.model_validate({**base, "fidelity": {"bn_rung": True, "promote_steps": 80, "eta": [12, 2]}})
    assert ok.fidelity.eta == [12, 2]
    with pytest.raises(ValidationError, match="lists 2 factors; this ladder \\[20, 100\\] has 1 promotion"):
        StudyConfig.model_validate({**base, "fidelity": {"promote_steps": 80, "eta": [12, 2]}})
    with pytest.raises(ValidationError, match="eta must be above 1"):
        StudyConfig.model_validate({**base, "fidelity": {"bn_rung": True, "promote_steps": 80, "eta": [12, 1]}})


def test_at_a_target_a_less_accurate_candidate_never_goes_up_past_a_better_one_by_being_slightly_cheaper():
    from autoprune.engine.fidelity import due

    # the uniform warm start (0) is dominated by 2 (more accurate and cheaper); 1 is less accurate but the
    # cheapest, so it is non-dominated on (accuracy, MACs); all three are within 1 % of the target's MACs
    done = [_rec(0, {0: 0.50, 20: 0.779}, 2.0, macs=1003), _rec(1, {0: 0.50, 20: 0.771}, 2.0, macs=990),
            _rec(2, {0: 0.50, 20: 0.780}, 2.0, macs=1000)]

    def pick(target, claimed):
        r = due(done, [0, 20, 100], ["accuracy", "macs"], ["maximize", "minimize"], 1.5, target, claimed)
        return None if r is None else r.number

    assert pick(2.0, [2]) == 0  # two places at rung 20: accuracy alone ranks 2, then the warm start
    # without targets the MACs are a real trade-off: the cheapest one is on the front, the warm start is not
    free = [replace(r, plan=replace(r.plan, target=None)) for r in done]
    done[:] = free
    assert pick(None, [2]) == 1


def test_a_front_never_mixes_rungs(tmp_path):
    """A promoted trial's longer-recovery accuracy never competes with others' short scores: the default front
    compares every trial at the rung all reached, and --rung N compares only the trials that reached N."""
    from autoprune.engine.storage import front

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
    ost = run_search(prepare(study), n_trials=8).study
    recs = records(ost)
    assert len(recs) == 8 and any(r.continues is not None for r in recs)
    _assert_picks_never_below_their_warm_starts(ost, recs)
    ladders = [sorted(r.fidelity.scores) for r in recs]
    assert all(lad[0] == 0 and lad in ([0], [0, 5], [0, 5, 9]) for lad in ladders), ladders
    assert any(lad == [0] for lad in ladders), "some candidates stop after rung 0"
    by_number = {r.number: r for r in recs}
    for r in recs:  # a continuation stays at its candidate's target and keeps its lower-rung scores
        if r.continues is not None:
            parent = by_number[r.continues]
            assert r.plan.target == parent.plan.target and r.params == parent.params
            assert all(r.fidelity.scores[k] == v for k, v in parent.fidelity.scores.items())
    for r in recs:
        assert r.plan.finetune_steps == r.fidelity.steps and r.timings.get("finetune", 0.0) >= 0.0
        if r.fidelity.steps == 0:
            assert "finetune" not in r.timings


def _assert_picks_never_below_their_warm_starts(ost, recs):
    """Each target's pick scores at least as well as every warm start of its target, at the highest rung both
    reached, on the same validation images."""
    from autoprune.deliver.vs_uniform import compare_at
    from autoprune.engine.record import heads
    from autoprune.engine.storage import front

    by_number = {r.number: r for r in recs}
    for e in front(ost):
        pick = by_number[e["trial"]]
        starts = [r for r in heads(recs) if r.warm_start and r.plan.target == pick.plan.target and r is not pick]
        assert starts
        for w in starts:
            c = compare_at(pick, w)
            assert c is not None and c["accuracy_a"] >= c["accuracy_b"], (pick.number, w.number, c)


def test_a_bn_rung_alone_still_promotes_to_the_short_recovery(tmp_path):
    study = _study(tmp_path, study={"fidelity": {"bn_rung": True, "eta": 2}, "budget": {"n_trials": 4}})
    recs = records(run_search(prepare(study), n_trials=4).study)
    assert {tuple(sorted(r.fidelity.scores)) for r in recs} <= {(0,), (0, 5)}
    assert any(r.fidelity.steps == 5 for r in recs) and any(r.fidelity.steps == 0 for r in recs)


def test_with_a_bn_rung_only_the_first_rung_uses_the_subset_and_every_fine_tune_rung_the_whole_split(tmp_path):
    study = _study(tmp_path, study={"fidelity": {"bn_rung": True, "promote_steps": 4, "eta": 2, "short_val_images": 50},
                                    "budget": {"n_trials": 8}, "sampler": {"name": "random"}})
    c = prepare(study)
    n_val = len(c.data.val)
    done = [TrialRecord.from_frozen(t) for t in run_search(c, n_trials=8).study.get_trials() if t.state.name == "COMPLETE"]
    rungs = {rung for r in done for rung in r.fidelity.scores}
    assert rungs == {0, 5, 9}, rungs  # the BN rung, the short recovery and the promoted one
    for r in done:
        for rung, images in r.fidelity.images.items():
            assert images == (50 if rung == 0 else n_val), (r.number, rung, images)
