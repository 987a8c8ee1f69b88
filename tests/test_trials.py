"""Tune's trials as stacks (ffnn.train.trials) against the stacked trainer alone, on the tiny dataset: padded and
masked trials, stopped seeds, per-trial pruning and divergence."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from ffnn import data
from ffnn.models import ModelSpec
from ffnn.train import TrainConfig
from ffnn.train.stacked import train_stacked
from ffnn.train.trials import TrialJob, TrialStack, TuneData, plan_stacks, run_trials

BATCH, ITERS, EVAL = 20, 40, 20


@pytest.fixture
def ds(tiny, tmp_path):
    torch.set_num_threads(1)
    return data.load(tiny, tmp_path / "data")


def stacked(ds, spec, seeds, lrs, **kw):
    return train_stacked(spec, seeds, lrs, BATCH, ITERS, EVAL, ds.pixels_train, ds.y_train, ds.x_test, ds.y_test,
                         **kw)


def same(a, b) -> bool:
    """Two seeds' results are identical: losses, evaluations, final weights."""
    return (a.losses == b.losses and a.history == b.history and a.accuracy == b.accuracy
            and set(a.state_dict) == set(b.state_dict) and all(torch.equal(a.state_dict[k], b.state_dict[k])
                                                               for k in a.state_dict))


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("widths", [[(37,), (64,), (16,)], [(24, 16), (16, 40)], [(200,), (256,), (229,)]])
def test_a_padded_and_masked_seed_gives_the_numbers_it_gets_alone(ds, activation, widths):
    # widths of 16-256, where the CPU's matrix kernels do not change with the padded size (README: tune)
    specs = [ModelSpec(w, activation) for w in widths]
    lrs = [0.3, 0.05, 0.1][:len(specs)]
    both = stacked(ds, specs, list(range(len(specs))), lrs)
    for j, spec in enumerate(specs):
        alone = stacked(ds, spec, [j], [lrs[j]]).seeds[0]
        assert same(both.seeds[j], alone)
        assert [tuple(v.shape) for v in both.seeds[j].state_dict.values()] == \
            [tuple(v.shape) for v in alone.state_dict.values()]  # its own shape back, the padding cut off


def test_a_layer_narrower_than_the_kernels_differs_only_by_rounding_when_padded(ds):
    narrow, wide = ModelSpec((5,), "sigmoid"), ModelSpec((64,), "sigmoid")
    got = stacked(ds, [narrow, wide], [0, 1], [0.1, 0.1]).seeds[0]
    want = stacked(ds, narrow, [0], [0.1]).seeds[0]
    assert [s for s, _ in got.losses] == [s for s, _ in want.losses]
    assert max(abs(a - b) for (_, a), (_, b) in zip(got.losses, want.losses)) < 1e-5
    assert all(torch.allclose(got.state_dict[k], want.state_dict[k], atol=1e-5) for k in want.state_dict)


def test_on_eval_stops_the_seeds_it_names_and_the_others_go_on(ds):
    spec = ModelSpec((16,), "relu")
    seen = []

    def stop_seed_1(ev):
        seen.append(ev.accuracy)
        return [1] if ev.step == EVAL else []

    res = stacked(ds, spec, [0, 1, 2], [0.1] * 3, on_eval=stop_seed_1)
    stopped = res.seeds[1]
    assert stopped.stopped_step == EVAL and [s for s, _ in stopped.history] == [EVAL]
    assert max(s for s, _ in stopped.losses) == EVAL and math.isnan(seen[-1][1])
    for j in (0, 2):
        assert res.seeds[j].stopped_step is None and same(res.seeds[j], stacked(ds, spec, [j], [0.1]).seeds[0])


def trial(number, width, lr, n_seeds=1, iters=ITERS):
    return TrialJob(number, ModelSpec((width,), "relu"), TrainConfig(lr=lr, batch_size=BATCH, iters=iters,
                                                                      eval_every=EVAL), n_seeds)


def test_plan_stacks_groups_one_shape_pads_on_request_and_caps_seeds():
    jobs = [trial(0, 8, 0.1), trial(1, 16, 0.1), trial(2, 8, 0.2), trial(3, 32, 0.1, n_seeds=3)]
    by_shape = plan_stacks(jobs, workers=1, pad=False, max_seeds=10)
    assert sorted(sorted(t.number for t in s.trials) for s in by_shape) == [[0, 2], [1], [3]]
    assert by_shape[0].trials == (jobs[3],)  # the most expensive first
    padded = plan_stacks(jobs, workers=1, pad=True, max_seeds=10)
    assert len(padded) == 1 and padded[0].padded and padded[0].widest.hidden == (32,)
    assert sorted(len(s.trials) for s in plan_stacks(jobs, workers=1, pad=True, max_seeds=4)) == [1, 3]
    lr = [TrialJob(i, ModelSpec(), jobs[0].cfg) for i in range(5)]  # one shape: dealt out to both processes
    assert sorted(len(s.trials) for s in plan_stacks(lr, workers=2, pad=False, max_seeds=10)) == [2, 3]


def test_on_the_cpu_plan_stacks_pads_close_widths_in_the_exact_range_only():
    jobs = [trial(0, 100, 0.1), trial(1, 110, 0.2), trial(2, 200, 0.1), trial(3, 300, 0.1), trial(4, 305, 0.1),
            trial(5, 104, 0.3)]
    stacks = plan_stacks(jobs, workers=2, pad=False, max_seeds=10, pad_within=25_000)
    # 100, 104 and 110 pad to 110 (at most 7,940 weights more); 200 is 71,460 weights wider; 300 and 305 lie
    # outside PAD_EXACT, where padding would change the rounding
    assert sorted(sorted(t.number for t in s.trials) for s in stacks) == [[0, 1, 5], [2], [3], [4]]
    assert next(s for s in stacks if len(s.trials) == 3).widest.hidden == (110,)
    assert len(plan_stacks(jobs, workers=2, pad=False, max_seeds=10)) == 6  # without pad_within: by shape
    assert len(plan_stacks(jobs, workers=2, pad=False, max_seeds=2, pad_within=25_000)) == 5  # seeds capped


@pytest.fixture
def split(ds):
    x_fit, y_fit, x_val, y_val = data.split_validation(ds.x_train, ds.y_train, 100, 0)
    return TuneData(x_fit, y_fit, x_val, y_val, data.split_validation(ds.pixels_train, ds.y_train, 100, 0)[0])


def alone(split, job):
    return train_stacked(job.spec, job.seeds, [job.cfg.lr] * job.n_seeds, BATCH, job.cfg.iters, EVAL,
                         split.pixels_fit, split.y_fit, split.x_val, split.y_val).seeds


def test_trials_of_one_stack_are_pruned_and_diverge_each_on_its_own(split):
    jobs = (trial(0, 16, 0.1, n_seeds=2), trial(1, 16, 1e20, n_seeds=2), trial(2, 16, 0.3, n_seeds=2))
    asked = []

    def prune_trial_2(ev):
        asked.append((ev.step, sorted(ev.accuracy)))
        return [2]

    out = run_trials(split, TrialStack(jobs), prune_trial_2)
    assert asked[0] == (EVAL, [0, 2]) and asked[1:] == [(ITERS, [0])]  # trial 1 diverged before the first look
    assert out[0].state == "COMPLETE" and out[0].per_seed == [r.accuracy for r in alone(split, jobs[0])]
    assert out[0].value == statistics.fmean(out[0].per_seed) and out[0].sd == statistics.stdev(out[0].per_seed)
    assert out[1].state == "PRUNED" and out[1].reason.startswith("diverged: training loss became")
    assert out[1].reason.endswith(("(seed 0)", "(seed 1)")) and 1 <= out[1].step < EVAL
    assert out[2].state == "PRUNED" and out[2].step == EVAL and len(out[2].per_seed) == 2
    assert {o.stack_trials for o in out} == {3}


def test_padded_trials_have_the_outcomes_of_their_unpadded_runs(split):
    jobs = (trial(0, 40, 0.1, n_seeds=2), trial(1, 16, 0.5), trial(2, 23, 0.05, n_seeds=3))
    stack = TrialStack(jobs)
    assert stack.padded
    together = run_trials(split, stack, lambda ev: [])
    for job, got in zip(jobs, together):
        want = run_trials(split, TrialStack((job,)), lambda ev: [])[0]
        assert got.per_seed == want.per_seed and got.value == want.value and got.losses == want.losses
        assert got.state == "COMPLETE" and got.per_seed == [r.accuracy for r in alone(split, job)]
