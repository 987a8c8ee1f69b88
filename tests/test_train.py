import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ffnn import data
from ffnn.models import REGISTRY, ModelSpec, seeded_model
from ffnn.train import Diverged, TrainConfig, evaluate, train


@pytest.fixture
def ds(tiny, tmp_path):
    return data.load(tiny, tmp_path / "data")


def test_train_learns_tiny_data_well_above_chance(ds):
    cfg = TrainConfig(lr=0.1, batch_size=20, iters=150, eval_every=50, seed=0)
    seen = []
    res = train(REGISTRY["C"], cfg, ds.x_train, ds.y_train, ds.x_test, ds.y_test, seen.append)
    assert res.accuracy > 80  # chance is 10%
    assert [p.step for p in seen] == [50, 100, 150] == [s for s, _ in res.history]
    # every optimizer step's loss is reported exactly once, in order
    assert [s for p in seen for s, _ in p.losses] == list(range(1, 151))
    # the stacked trainer's per-seed result: the losses seen, the weights, the time
    assert res.losses == [x for p in seen for x in p.losses] and (res.seed, res.lr) == (0, 0.1)
    assert res.seconds > 0 and evaluate(res.model(REGISTRY["C"]), ds.x_test, ds.y_test) == res.accuracy


def test_train_same_seed_gives_identical_metrics(ds):
    cfg = TrainConfig(batch_size=32, iters=60, eval_every=20, seed=3)
    runs = []
    for _ in range(2):
        losses = []
        res = train(REGISTRY["D"], cfg, ds.x_train, ds.y_train, ds.x_test, ds.y_test,
                    lambda p, losses=losses: losses.extend(p.losses))
        runs.append((res.history, losses))
    assert runs[0] == runs[1]
    other = train(REGISTRY["D"], TrainConfig(batch_size=32, iters=60, eval_every=20, seed=4),
                  ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    assert other.history != runs[0][0]


def test_train_equals_a_dataloader_loop_with_the_same_batch_order(ds):
    """The reference: the tutorial's DataLoader loop, fed our permutation as its sampler."""
    cfg = TrainConfig(lr=0.05, batch_size=50, iters=30, eval_every=30, seed=1)
    ours = train(REGISTRY["B"], cfg, ds.x_train, ds.y_train, ds.x_test, ds.y_test)

    order = torch.Generator().manual_seed(cfg.seed)
    sampler = [i for _ in range(3) for i in torch.randperm(600, generator=order).tolist()]
    loader = DataLoader(TensorDataset(ds.x_train, ds.y_train), batch_size=50, sampler=sampler)
    model = seeded_model(REGISTRY["B"], cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    for it, (images, labels) in enumerate(loader, start=1):
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()
        if it == cfg.iters:
            break
    for a, b in zip(ours.model(REGISTRY["B"]).parameters(), model.parameters()):
        torch.testing.assert_close(a, b)
    assert ours.accuracy == evaluate(model, ds.x_test, ds.y_test)


def test_train_stops_at_first_non_finite_loss(ds):
    cfg = TrainConfig(lr=1e6, batch_size=20, iters=200, eval_every=50)
    with pytest.raises(Diverged) as err:
        train(ModelSpec((100, 100, 100), "relu"), cfg, ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    assert 1 <= err.value.step < 200
    assert not math.isfinite(err.value.loss)
    assert all(math.isfinite(v) for _, v in err.value.losses)
