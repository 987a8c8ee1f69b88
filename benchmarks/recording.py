"""What recording one finished seed costs the parent process, call by call, on a fresh SQLite store.

    .venv/bin/python benchmarks/recording.py [RUNS]

Creates RUNS child runs (default 200) like ``ffnn compare`` records a 3000-step seed of C: the run, its
dataset input, its params, curves, finals and tags (one ``log_batch``), its model (``Tracker.log_torch_model``:
``mlflow.pytorch.log_model``, a LoggedModel) and its end; prints the mean time of each, in ms per run. The
first model is logged before the timing starts.
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np

from ffnn.models import REGISTRY, build_model
from ffnn.tracking import Tracker
from ffnn.train.jobs import LOSS_STRIDE


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker.open(f"sqlite:///{tmp}/mlflow.db")
        exp = tracker.client.create_experiment("recording")
        example = np.random.default_rng(0).random((5, 784), dtype=np.float32)
        model = build_model(REGISTRY["C"])
        series = {"train_loss": [(s, 0.5) for s in range(LOSS_STRIDE, 3001, LOSS_STRIDE)],
                  "test_accuracy": [(s, 95.0) for s in range(500, 3001, 500)]}
        params = {"model": "C", "activation": "relu", "hidden_sizes": "100", "lr": 0.1, "batch_size": 100,
                  "iters": 3000, "eval_every": 500, "seed": 0, "dataset": "mnist", "device": "cpu",
                  "n_params": 79510}
        tracker.log_torch_model(tracker.start_run(exp, "first", {}, {}), exp, model, example, 3000)
        spent = dict.fromkeys(("run", "dataset", "log_batch", "model", "end"), 0.0)
        for i in range(runs):
            t0 = time.perf_counter()
            run_id = tracker.start_run(exp, f"C seed={i}", {}, {"ffnn.kind": "run"})
            t1 = time.perf_counter()
            tracker.log_dataset(run_id, "mnist", "0" * 64, tmp, 60000, 10000)
            t2 = time.perf_counter()
            tracker.log_run(run_id, series, {"final_test_accuracy": 95.0, "train_seconds": 1.0}, 3000, {},
                            params)
            t3 = time.perf_counter()
            tracker.log_torch_model(run_id, exp, model, example, 3000)
            t4 = time.perf_counter()
            tracker.end_run(run_id, "FINISHED")
            t5 = time.perf_counter()
            for key, a, b in (("run", t0, t1), ("dataset", t1, t2), ("log_batch", t2, t3), ("model", t3, t4),
                              ("end", t4, t5)):
                spent[key] += b - a
        print(f"{runs} runs, ms per run: " + ", ".join(f"{k} {1000 * v / runs:.1f}" for k, v in spent.items())
              + f"; total {1000 * sum(spent.values()) / runs:.1f}")


if __name__ == "__main__":
    main()
