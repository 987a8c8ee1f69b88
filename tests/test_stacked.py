"""The stacked trainer against the single-run loop (the reference), on the tiny dataset."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from ffnn import data
from ffnn.models import REGISTRY, ModelSpec, seeded_model
from ffnn.train import DivergenceRule, TrainConfig, train
from ffnn.train.stacked import train_stacked

BATCH, ITERS, EVAL = 20, 60, 20


@pytest.fixture
def ds(tiny, tmp_path):
    torch.set_num_threads(1)
    return data.load(tiny, tmp_path / "data")


def stacked(ds, spec, seeds, lrs=None, **kw):
    lrs = lrs if lrs is not None else [0.1] * len(seeds)
    return train_stacked(spec, seeds, lrs, kw.pop("batch", BATCH), kw.pop("iters", ITERS), kw.pop("every", EVAL),
                         ds.x_train, ds.y_train, ds.x_test, ds.y_test, **kw)


def single(ds, spec, seed, lr=0.1, iters=ITERS):
    losses = []
    res = train(spec, TrainConfig(lr=lr, batch_size=BATCH, iters=iters, eval_every=EVAL, seed=seed),
                ds.x_train, ds.y_train, ds.x_test, ds.y_test, lambda p: losses.extend(p.losses))
    return res, losses


@pytest.mark.parametrize("model", ["LR", "A", "B", "C", "D", "E"])
def test_stacked_matches_the_single_run_loop(ds, model):
    spec = REGISTRY[model]
    res = stacked(ds, spec, [0, 1, 2, 3, 4])
    for seed in (0, 3):
        ref, ref_losses = single(ds, spec, seed)
        got = [v for _, v in res.seeds[seed].losses[:20]]
        want = [v for _, v in ref_losses[:20]]
        assert len(got) == 20 and max(abs(a - b) for a, b in zip(got, want)) < 1e-5
        assert [s for s, _ in res.seeds[seed].losses] == [s for s, _ in ref_losses]  # same steps
    refs = [single(ds, spec, s)[0].accuracy for s in range(5)]
    spread = statistics.stdev(refs) if len(set(refs)) > 1 else 0.0
    mean_gap = abs(statistics.mean(r.accuracy for r in res.seeds) - statistics.mean(refs))
    assert mean_gap <= max(spread, 0.5)


def test_stacked_starts_from_the_single_run_weights(ds):
    spec = REGISTRY["D"]
    res = stacked(ds, spec, [4], iters=1, every=1, lrs=[1e-30])  # one step that changes nothing
    want = seeded_model(spec, 4).state_dict()
    got = res.seeds[0].state_dict
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("model", ["LR", "A", "B", "C", "D", "E"])
def test_a_seed_gives_identical_numbers_whatever_its_stack(ds, model):
    spec = REGISTRY[model]
    alone = stacked(ds, spec, [3]).seeds[0]
    among = stacked(ds, spec, [0, 1, 2, 3, 4, 5, 6]).seeds[3]
    other = stacked(ds, spec, [9, 3]).seeds[1]
    for r in (among, other):
        assert r.losses == alone.losses and r.history == alone.history and r.accuracy == alone.accuracy
        assert all(torch.equal(r.state_dict[k], alone.state_dict[k]) for k in alone.state_dict)


def test_learning_rate_is_a_per_seed_vector(ds):
    spec = REGISTRY["C"]
    both = stacked(ds, spec, [1, 1], lrs=[0.1, 0.02])
    fast, slow = stacked(ds, spec, [1], lrs=[0.1]).seeds[0], stacked(ds, spec, [1], lrs=[0.02]).seeds[0]
    assert both.seeds[0].losses == fast.losses and both.seeds[1].losses == slow.losses
    assert fast.losses[-1] != slow.losses[-1]


def test_a_diverging_seed_is_frozen_and_failed_while_the_rest_go_on(ds):
    spec = ModelSpec((300, 300, 300), "relu")
    res = stacked(ds, spec, [0, 1, 2], lrs=[0.1, 1e6, 0.1])
    bad = res.seeds[1]
    assert bad.failure.startswith("diverged") and 1 <= bad.failed_step <= ITERS
    assert bad.state_dict is None and math.isnan(bad.accuracy)
    assert all(math.isfinite(v) for _, v in bad.losses) and len(bad.losses) < bad.failed_step + 1
    alone = stacked(ds, spec, [0, 2])
    for mine, ref in zip((res.seeds[0], res.seeds[2]), alone.seeds):  # nothing spread from seed 1
        assert mine.failure is None and mine.losses == ref.losses and mine.accuracy == ref.accuracy


def test_divergence_threshold_counts_only_losses_that_stay_high(ds):
    spec = REGISTRY["C"]
    # every loss of an untrained model (about ln 10) is above 1.0: diverged after `window` steps
    res = stacked(ds, spec, [0], rule=DivergenceRule(threshold=1.0, window=5))
    assert res.seeds[0].failed_step == 5 and "stayed above 1 for 5 iterations" in res.seeds[0].failure
    # the loss falls below 1.5 before 200 steps: no divergence
    res = stacked(ds, spec, [0], rule=DivergenceRule(threshold=1.5, window=200))
    assert res.seeds[0].failure is None


def test_single_run_loop_applies_the_same_divergence_rule(ds):
    from ffnn.train import Diverged
    with pytest.raises(Diverged, match="stayed above 1 for 5 iterations") as e:
        train(REGISTRY["C"], TrainConfig(batch_size=BATCH, iters=ITERS, eval_every=EVAL), ds.x_train, ds.y_train,
              ds.x_test, ds.y_test, rule=DivergenceRule(threshold=1.0, window=5))
    assert e.value.step == 5


def test_masking_every_step_as_a_cuda_graph_does_changes_nothing(ds, monkeypatch):
    """On CUDA every step zeroes the frozen seeds' gradients (a graph cannot branch); the CPU only while a
    seed is frozen. Both give the same numbers, frozen seed included."""
    from ffnn.train import stacked as stacked_mod
    spec = ModelSpec((300, 300), "relu")
    lazy = stacked(ds, spec, [0, 1, 2], lrs=[0.1, 1e6, 0.1])

    class Always(stacked_mod._Stack):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.always_mask = True

    monkeypatch.setattr(stacked_mod, "_Stack", Always)
    always = stacked(ds, spec, [0, 1, 2], lrs=[0.1, 1e6, 0.1])
    assert lazy.seeds[1].failure is not None
    for a, b in zip(lazy.seeds, always.seeds):
        assert (a.losses, a.history, a.failure, a.failed_step) == (b.losses, b.history, b.failure, b.failed_step)


def test_the_divergence_rule_applied_to_blocks_is_the_rule_applied_step_by_step():
    """``DivergenceRule.first_break`` over blocks of any length (the stacked trainer's form) gives the step
    that ``DivergenceRule.count`` (the single-run loop's) gives step by step."""
    rule = DivergenceRule(threshold=5.0, window=4)
    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        n, S = 40, 6
        losses = torch.rand(n, S, generator=gen) * 8  # above 5 about 3 steps in 8
        for _ in range(3):  # a few non-finite losses
            losses[torch.randint(n, (1,), generator=gen), torch.randint(S, (1,), generator=gen)] = \
                [math.nan, math.inf, -math.inf][trial % 3]
        want = []
        for j in range(S):  # the rule, step by step
            above, first = 0, -1
            for t, v in enumerate(losses[:, j].tolist()):
                above, broke = rule.count(above, v)
                if broke:
                    first = t
                    break
            want.append(first)
        got = [-1] * S
        above = torch.zeros(S, dtype=torch.int64)
        cuts = sorted(set(torch.randint(1, n, (4,), generator=gen).tolist())) + [n]
        lo = 0
        for hi in cuts:
            first, above = rule.first_break(losses[lo:hi], above)
            for j in range(S):
                if got[j] < 0 and first[j] >= 0:
                    got[j] = lo + int(first[j])
            lo = hi
        assert got == want


def test_uint8_pixels_train_exactly_as_the_float_images(ds):
    """The CPU's stacks gather uint8 pixels and scale them after the gather: the same numbers."""
    assert ds.pixels_train.dtype == torch.uint8 and torch.equal(ds.pixels_train.float() / 255, ds.x_train)
    spec = REGISTRY["D"]
    from_float = stacked(ds, spec, [0, 5])
    from_pixels = train_stacked(spec, [0, 5], [0.1, 0.1], BATCH, ITERS, EVAL, ds.pixels_train, ds.y_train,
                                ds.x_test, ds.y_test)
    for a, b in zip(from_float.seeds, from_pixels.seeds):
        assert a.losses == b.losses and a.history == b.history
        assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


@pytest.mark.parametrize("model", ["LR", "C"])
def test_each_finished_seed_keeps_which_eval_images_it_got_right(ds, model):
    """``eval_correct`` is the final network's per-image correctness, and the final accuracy comes from it."""
    from ffnn.models import build_model
    spec = REGISTRY[model]
    res = stacked(ds, spec, [0, 1, 2], iters=5, every=2)  # half-trained: some images right, some wrong
    for r in res.seeds:
        assert 0 < r.accuracy < 100 and [s for s, _ in r.history] == [2, 4, 5]
        assert r.eval_correct.dtype == bool and r.eval_correct.shape == (len(ds.y_test),)
        assert r.eval_correct.mean() * 100 == r.accuracy == r.history[-1][1]
        net = build_model(spec)
        net.load_state_dict(r.state_dict)
        with torch.no_grad():
            want = (net(ds.x_test).argmax(1) == ds.y_test).numpy()
        assert (r.eval_correct == want).all()
    assert not (res.seeds[0].eval_correct == res.seeds[1].eval_correct).all()  # each seed its own


def test_a_failed_seed_has_no_eval_correct(ds):
    res = stacked(ds, ModelSpec((300, 300, 300), "relu"), [0, 1], lrs=[0.1, 1e6])
    assert res.seeds[1].failure is not None and res.seeds[1].eval_correct is None
    assert res.seeds[0].eval_correct.mean() * 100 == res.seeds[0].accuracy
