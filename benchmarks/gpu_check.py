"""On a CUDA machine: the stacked trainer's CUDA path against the CPU path, and graph against eager.

Prints the largest loss difference over the first 20 steps (CUDA vs CPU), whether a seed's numbers
depend on its stack on CUDA, and the time per seed of C with and without the CUDA graph.
Run by benchmarks/gpu.sh; needs the MNIST files in data/.
"""

from __future__ import annotations

import time

import torch

from ffnn import data
from ffnn.models import REGISTRY
from ffnn.train.stacked import train_stacked


def run(ds, model, seeds, iters, every, use_graph=None):
    return train_stacked(REGISTRY[model], seeds, [0.1] * len(seeds), 100, iters, every,
                         ds.x_train, ds.y_train, ds.x_test, ds.y_test, use_graph=use_graph)


def main() -> None:
    torch.set_num_threads(1)
    cpu = data.load("mnist", "data")
    gpu = cpu.to("cuda")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for model in ("A", "C", "E"):
        ref = run(cpu, model, [0, 1, 2, 3], 100, 100)
        for graph in (False, True):
            got = run(gpu, model, [0, 1, 2, 3], 100, 100, use_graph=graph)
            diff = max(abs(a - b) for r, g in zip(ref.seeds, got.seeds)
                       for (_, a), (_, b) in zip(r.losses[:20], g.losses[:20]))
            print(f"{model}: CUDA ({'graph' if got.graph else 'eager'}) vs CPU, first 20 losses of 4 seeds: "
                  f"max |diff| {diff:.2e}; accuracy after 100 steps {[round(s.accuracy, 2) for s in got.seeds]} "
                  f"vs {[round(s.accuracy, 2) for s in ref.seeds]}")
        alone = run(gpu, model, [3], 300, 100).seeds[0]
        among = run(gpu, model, list(range(64)), 300, 100).seeds[3]
        print(f"{model}: on CUDA, seed 3 alone vs in a stack of 64: identical losses {alone.losses == among.losses}, "
              f"max |diff| {max(abs(a - b) for (_, a), (_, b) in zip(alone.losses, among.losses)):.2e}")
    for model, seeds in (("A", 5), ("E", 5), ("C", 100), ("C", 250), ("C", 1000), ("E", 1000)):
        for graph in (False, True):
            run(gpu, model, list(range(seeds)), 50, 50, use_graph=graph)  # warm-up: kernels, allocator
            torch.cuda.synchronize()
            start = time.perf_counter()
            res = run(gpu, model, list(range(seeds)), 3000, 500, use_graph=graph)
            seconds = time.perf_counter() - start
            print(f"{model} x {seeds} seeds, 3000 steps, {'graph' if res.graph else 'eager'}: {seconds:.2f} s "
                  f"({1000 * seconds / seeds:.1f} ms per seed), mean accuracy "
                  f"{sum(s.accuracy for s in res.seeds) / seeds:.2f}%")


if __name__ == "__main__":
    main()
