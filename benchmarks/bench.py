"""`make bench`: the tutorial's loop against ffnn's, then three `ffnn compare` commands, timed.

1. The tutorial's way, one run of model C: its own code (torchvision's MNIST + ToTensor +
   DataLoader, batch 100, shuffle, its 7-step loop, test accuracy every 500 iterations over a
   test DataLoader), in this process with torch's default thread count.
2. ffnn's per-seed time of C in a 10-seed compare: the comparison's training wall time (its
   parent run's ``wall_seconds``: workers, stacks, MLflow writes) divided by 10; the ratio to (1).
3. The default compare (6 models x 5 seeds, report included): the command's wall time.
4. ``ffnn compare --models C,E --seeds 100``: the command's wall time, and the share of it spent in
   MLflow calls (the parent run's ``tracking_seconds``).
5. ``ffnn compare --until-decided`` on MNIST and on Fashion-MNIST (``--until-decided-only`` runs just
   these): runs trained and wall time, beside what the rule before per-comparison rounds and
   confidence sequences took (180 runs / 148.6 s and 360 runs / 289 s, f6b9585).
6. ``ffnn compare --config experiments/capacity.toml`` on MNIST (``--capacity-only`` runs just this): the
   capacity map's 18 cells x 5 seeds, report and scaling fits included, its wall time and training phase.
7. ``ffnn tune --model C --n-trials 20 --sampler-seed 7`` with ``--trial-seeds 1`` and ``3`` (``--tune-only``
   runs just these): the study's trials per minute and the command's wall time, beside the 27.1 trials a
   minute of the single-run autograd trials before (12 trials, ``--pruner none``, f6b9585).
8. Where Ray is installed (``make install-ray``): the default compare through a local Ray cluster as ``make
   ray`` starts it (a head and a worker node, half the cores each) beside the local engine, each in a fresh
   store, and the ratio (``--ray-only`` runs just these; ``--device cuda`` on a GPU machine).
Each compare runs as a user would type it, in a scratch folder with a fresh store.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision.datasets as dsets
import torchvision.transforms as transforms
from torch import nn

from ffnn.tracking import TAG_KIND, Tracker


class FeedforwardNeuralNetModel(nn.Module):  # the tutorial's model C, verbatim
    def __init__(self, input_dim, hidden_dim, output_dim):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def tutorial_way(root: str) -> float:
    """The tutorial's steps 1-7, timed from dataset construction to the last evaluation."""
    start = time.perf_counter()
    train_dataset = dsets.MNIST(root=root, train=True, transform=transforms.ToTensor(), download=False)
    test_dataset = dsets.MNIST(root=root, train=False, transform=transforms.ToTensor())
    batch_size, n_iters = 100, 3000
    num_epochs = int(n_iters / (len(train_dataset) / batch_size))
    train_loader = torch.utils.data.DataLoader(dataset=train_dataset, batch_size=batch_size, shuffle=True)
    test_loader = torch.utils.data.DataLoader(dataset=test_dataset, batch_size=batch_size, shuffle=False)
    model = FeedforwardNeuralNetModel(28 * 28, 100, 10)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    it = 0
    accuracy = 0.0
    for _ in range(num_epochs):
        for images, labels in train_loader:
            images = images.view(-1, 28 * 28).requires_grad_()
            optimizer.zero_grad()
            outputs = model(images)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            it += 1
            if it % 500 == 0:
                correct = 0
                total = 0
                for images, labels in test_loader:
                    images = images.view(-1, 28 * 28).requires_grad_()
                    outputs = model(images)
                    _, predicted = torch.max(outputs.data, 1)
                    total += labels.size(0)
                    correct += (predicted == labels).sum()
                accuracy = 100 * correct / total
    seconds = time.perf_counter() - start
    print(f"tutorial way: model C, 3000 iterations: {seconds:6.2f} s  (test accuracy {float(accuracy):.2f}%)")
    return seconds


def compare(data_dir: str, tmp: str, *argv: str, show: Callable[[str], bool] = lambda line: False,
            config: str = "experiments/compare.toml", experiment: str = "compare",
            env: dict[str, str] | None = None) -> tuple[float, dict]:
    """Run ``ffnn compare ARGV`` in ``tmp``; its wall time and its comparison's parent-run metrics.
    The lines of its output that ``show`` picks are printed after it ends."""
    cmd = [sys.executable, "-m", "ffnn", "compare", "--data-dir", str(Path(data_dir).resolve()),
           "--config", str(Path(config).resolve()), *argv]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=tmp, text=True,
                         env=env).stdout
    wall = time.perf_counter() - start
    for line in out.splitlines():
        if show(line):
            print(line)
    tracker, exp = _store(tmp, experiment)
    parents = tracker.search(exp, f"tags.`{TAG_KIND}` = 'comparison'")
    return wall, parents[0].data.metrics


def _store(tmp: str, experiment: str = "compare") -> tuple[Tracker, str]:
    """The fresh store's tracker and the id of the experiment the run above created."""
    tracker = Tracker.open(f"sqlite:///{tmp}/mlruns/mlflow.db")
    exp = tracker.experiment_id(experiment, create=False)
    if exp is None:
        raise RuntimeError(f"no experiment {experiment!r} in {tmp}/mlruns: the compare run logged nothing")
    return tracker, exp


BEFORE = {"mnist": (180, 148.6), "fashion-mnist": (360, 289.0)}  # runs, s: the OBF rule of f6b9585, same machine


def until_decided(data_dir: str, dataset: str) -> None:
    """``ffnn compare --until-decided`` as a user types it, in a fresh store: runs trained, wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = [] if dataset == "mnist" else ["--dataset", "fashion-mnist"]
        wall, _ = compare(data_dir, tmp, "--until-decided", *extra,
                          show=lambda line: line.startswith(("--until-decided:", "  ")) and " pts" in line
                          or line.startswith("--until-decided:"))
        tracker, exp = _store(tmp)
        runs = tracker.search(exp, f"tags.`{TAG_KIND}` = 'run' and attributes.status = 'FINISHED'")
        seeds: dict[str, int] = {}
        for r in runs:
            seeds[r.data.params["model"]] = seeds.get(r.data.params["model"], 0) + 1
        runs_before, wall_before = BEFORE[dataset]
        per_model = ", ".join(f"{m} {n}" for m, n in seeds.items())
        print(f"compare --until-decided, {dataset}: {len(runs)} runs ({per_model})"
              f" in {wall:.1f} s wall; before: {runs_before} runs / {wall_before:.1f} s")


def capacity(data_dir: str) -> None:
    """``ffnn compare --config experiments/capacity.toml`` as a user types it, in a fresh store, report included:
    the wall time, the training phase, and the report's scaling lines."""
    with tempfile.TemporaryDirectory() as tmp:
        wall, m = compare(data_dir, tmp, config="experiments/capacity.toml", experiment="capacity",
                          show=lambda line: line.lstrip().startswith(("Scaling at", "At depth")))
        print(f"compare --config experiments/capacity.toml (18 cells x 5 seeds, report included, fresh store): "
              f"{wall:.1f} s wall; training phase {m['wall_seconds']:.1f} s, {m['runs_trained']:.0f} runs")


TUNE_BEFORE = 27.1  # trials per minute: 12 trials of C, --pruner none, one autograd run per trial (f6b9585)


def tune_rate(data_dir: str) -> None:
    """``ffnn tune --model C --n-trials 20 --sampler-seed 7`` at K = 1 and 3 seeds per trial, each in a fresh
    store: the same 20 configurations' random start, then what each objective leads TPE to."""
    walls = {}
    for k in (1, 3):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "ffnn", "tune", "--data-dir", str(Path(data_dir).resolve()),
                   "--config", str(Path("experiments/tune.toml").resolve()), "--model", "C", "--n-trials", "20",
                   "--sampler-seed", "7", "--trial-seeds", str(k)]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
            walls[k] = time.perf_counter() - start
            tracker, exp = _store(tmp, "tune")
            m = tracker.search(exp, f"tags.`{TAG_KIND}` = 'study'")[0].data.metrics
            print(f"tune --model C --n-trials 20 --sampler-seed 7 --trial-seeds {k}: {m['trials_per_minute']:.1f} "
                  f"trials per minute ({m['n_complete']:.0f} complete, {m['n_pruned']:.0f} pruned), "
                  f"{walls[k]:.1f} s wall; before: {TUNE_BEFORE} per minute (one seed, autograd)")
    print(f"tune, 3 seeds per trial against 1: {walls[3] / walls[1]:.2f}x the wall time")


def ray_cost(data_dir: str, device: str = "cpu") -> None:
    """The default compare (report included) on the local engine, then through a local Ray cluster as
    ``make ray`` starts it, each in a fresh store: both wall times, both training phases, their ratios, and
    how busy each kept its workers (the seeds' training seconds over workers x training phase): a figure
    that the speed of the machine's cores, which varies from run to run on a shared one, leaves alone."""
    import importlib.util

    from ffnn.errors import UserError
    from ffnn.ray_cluster import RayCluster
    if importlib.util.find_spec("ray") is None:
        print("default compare on Ray: skipped, Ray is not installed (make install-ray)")
        return
    with tempfile.TemporaryDirectory() as root:
        cluster = RayCluster(Path(root) / "mlruns")
        try:
            cluster.start()
        except UserError as e:
            print(f"default compare on Ray: skipped, no local Ray cluster could start ({e})")
            return
        try:
            figures = {}
            for engine in ("local", "ray"):
                with tempfile.TemporaryDirectory() as tmp:
                    extra = ["--ray"] if engine == "ray" else []
                    wall, m = compare(data_dir, tmp, "--device", device, *extra, env={**os.environ, **cluster.env()})
                    tracker, exp = _store(tmp)
                    parent = tracker.search(exp, f"tags.`{TAG_KIND}` = 'comparison'")[0]
                    trained = sum(r.data.metrics.get("train_seconds", 0.0)
                                  for r in tracker.search(exp, f"tags.`{TAG_KIND}` = 'run'"))
                    busy = trained / (int(parent.data.params["workers"]) * m["wall_seconds"])
                    figures[engine] = (wall, m["wall_seconds"], busy)
            st = cluster.state()
            nodes = f"{st.head_cpus} + {st.worker_cpus} CPUs" if st else "?"
        finally:
            cluster.stop()
    (lw, lt, lb), (rw, rt, rb) = figures["local"], figures["ray"]
    print(f"default compare ({device}, report included, fresh store): local engine {lw:.1f} s wall (training "
          f"{lt:.1f} s, workers busy {100 * lb:.0f} %); on Ray ({nodes}, make ray's cluster) {rw:.1f} s wall "
          f"(training {rt:.1f} s, workers busy {100 * rb:.0f} %): {rw / lw:.2f}x the wall time, {rt / lt:.2f}x "
          f"the training phase")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seeds", type=int, default=100, help="seeds of C and E in the last compare")
    parser.add_argument("--until-decided-only", action="store_true", help="only the two --until-decided runs")
    parser.add_argument("--capacity-only", action="store_true", help="only the capacity map's compare")
    parser.add_argument("--tune-only", action="store_true", help="only the two tune runs (1 and 3 seeds per trial)")
    parser.add_argument("--ray-only", action="store_true", help="only the default compare on Ray and locally")
    parser.add_argument("--device", default="cpu", help="--ray-only: cpu or cuda")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, device cpu")
    if args.until_decided_only:
        for dataset in ("mnist", "fashion-mnist"):
            until_decided(args.data_dir, dataset)
        return
    if args.capacity_only:
        capacity(args.data_dir)
        return
    if args.tune_only:
        tune_rate(args.data_dir)
        return
    if args.ray_only:
        ray_cost(args.data_dir, args.device)
        return
    slow = tutorial_way(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        wall, m = compare(args.data_dir, tmp, "--models", "C", "--seeds", "10", "--no-report")
        per_seed = m["wall_seconds"] / 10
        print(f"ffnn, model C in a 10-seed compare: {per_seed:6.2f} s per seed of training wall time "
              f"({slow / per_seed:.1f}x faster than the tutorial's loop; whole command {wall:.1f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        wall, m = compare(args.data_dir, tmp)
        print(f"default compare (6 models x 5 seeds, report included, fresh store): {wall:.1f} s wall")
    with tempfile.TemporaryDirectory() as tmp:
        wall, m = compare(args.data_dir, tmp, "--models", "C,E", "--seeds", str(args.seeds))
        share = m["tracking_seconds"] / wall
        print(f"compare --models C,E --seeds {args.seeds} (report included, fresh store): {wall:.1f} s wall; "
              f"MLflow calls {m['tracking_seconds']:.1f} s ({100 * share:.0f} %), training phase "
              f"{m['wall_seconds']:.1f} s")
    for dataset in ("mnist", "fashion-mnist"):
        until_decided(args.data_dir, dataset)
    capacity(args.data_dir)
    tune_rate(args.data_dir)
    ray_cost(args.data_dir)


if __name__ == "__main__":
    main()
