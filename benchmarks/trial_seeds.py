"""How many seeds should a trial train? Studies of C at equal compute, scored by what they pick.

For each sampler seed, two fresh studies as a user types them (``ffnn tune --model C --pruner none``): one
of ``--trials`` trials of one seed, one of a third as many trials of three seeds (the same seed-trainings).
Each study's best configuration is then retrained on ``--truth-seeds`` fresh seeds (100, 101, ...) on the
same validation split: the mean is its true accuracy, which the study's own best value overstates by its
selection's luck. Printed: each pick, then per K the mean true accuracy, the mean rank of the picks among
all studies' picks by true accuracy (1 = best), and the mean optimism (best value - true accuracy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ffnn import data
from ffnn.models import ModelSpec
from ffnn.train.stacked import train_stacked


def study(data_dir: str, k: int, trials: int, iters: int, seed: int) -> dict:
    """One fresh study; its best_params.json."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "ffnn", "tune", "--data-dir", str(Path(data_dir).resolve()),
                        "--config", str(Path("experiments/tune.toml").resolve()), "--model", "C", "--pruner", "none",
                        "--n-trials", str(trials), "--trial-seeds", str(k), "--iters", str(iters),
                        "--sampler-seed", str(seed)], check=True, cwd=tmp, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return json.loads((Path(tmp) / "reports" / "tune" / "tune-C" / "best_params.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--studies", type=int, default=6, help="sampler seeds 0 .. studies-1, one study per K each")
    parser.add_argument("--trials", type=int, default=18, help="trials of a one-seed study; a third of them at K=3")
    parser.add_argument("--iters", type=int, default=1000, help="optimizer steps per seed")
    parser.add_argument("--truth-seeds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = data.load("mnist", args.data_dir)
    assert ds.pixels_train is not None
    x_fit, y_fit, _, _ = data.split_validation(ds.pixels_train, ds.y_train, 10_000, 0)  # tune.toml's split
    _, _, x_val, y_val = data.split_validation(ds.x_train, ds.y_train, 10_000, 0)
    truth_seeds = list(range(100, 100 + args.truth_seeds))
    picks = []  # (K, sampler seed, width, lr, best value, true accuracy)
    for seed in range(args.studies):
        for k in (1, 3):
            best = study(args.data_dir, k, args.trials // k, args.iters, seed)
            width, lr = best["params"]["n_units_l0"], best["params"]["lr"]
            res = train_stacked(ModelSpec((width,), "relu"), truth_seeds, [lr] * len(truth_seeds), 100, args.iters,
                                args.iters, x_fit, y_fit, x_val, y_val)
            true = statistics.fmean(r.accuracy for r in res.seeds)
            picks.append((k, seed, width, lr, best["val_accuracy"], true))
            print(f"K={k} sampler seed {seed}: 784-{width}-10, lr {lr:.3g}: best value {best['val_accuracy']:.2f}%, "
                  f"true {true:.2f}% (seeds {truth_seeds[0]}-{truth_seeds[-1]})", flush=True)
    order = sorted(picks, key=lambda p: -p[5])
    for k in (1, 3):
        mine = [p for p in picks if p[0] == k]
        print(f"K={k}: {args.trials // k} trials x {k} seed(s), {args.iters} steps: mean true accuracy "
              f"{statistics.fmean(p[5] for p in mine):.2f}% (sd {statistics.stdev(p[5] for p in mine):.2f}), mean rank "
              f"{statistics.fmean(order.index(p) + 1 for p in mine):.1f} of {len(picks)}, mean optimism "
              f"{statistics.fmean(p[4] - p[5] for p in mine):+.2f} points")


if __name__ == "__main__":
    main()
