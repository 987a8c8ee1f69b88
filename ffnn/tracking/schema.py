"""The one run schema: the tags, experiment tags and columns every ffnn run carries, and the keys
that identify a run; no store access here."""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
TAG_KIND = "ffnn.kind"  # "comparison" (parent), "run" (child), "study", "trial"
TAG_KEY = "ffnn.run_key"  # hash of everything that determines a child run's result
TAG_OWNER = "ffnn.owner"  # host:pid of the process that created a RUNNING run
# ms since the epoch, refreshed every few seconds by the process owning the run's comparison, on
# that comparison's parent run: one small write per process and interval, whatever the run count
TAG_HEARTBEAT = "ffnn.heartbeat"
GRACE_ENV, HOST_ENV = "FFNN_HEARTBEAT_GRACE", "FFNN_HOST"
TAG_FAILURE = "ffnn.failure"  # why a run FAILED, e.g. "diverged: loss is nan at step 120"
TAG_FAILURE_STEP = "ffnn.failure_step"  # the optimizer step where it failed
TAG_SEQUENTIAL = "ffnn.sequential"  # experiment tag: JSON of the --until-decided design (looks, alpha, margin)
TAG_LOOKS = "ffnn.report_looks"  # experiment tag: JSON list of the looks `ffnn report` took (seeds per model)
# which test images a FINISHED child run's final network classified right, "N:base64(packbits)" (ffnn/bits.py);
# absent when the test set is too large for a tag (bits.MAX_TAG_CHARS)
TAG_TEST_CORRECT = "ffnn.test_correct"
# on each run `tune --final` retrained: JSON of the study whose best configuration it is (its index, budget and
# when its best trial came: ``tune.outputs.StudySummary.budget``), so a report judges the search behind it
TAG_TUNED_BY = "ffnn.tuned_by"
# `runs_frame` column of each field a report reads from a child run (mlflow.search_runs names).
RUN_COLUMNS = {"run_id": "run_id", "experiment_id": "experiment_id", "status": "status", "start_time": "start_time",
               "kind": f"tags.{TAG_KIND}", "model": "params.model", "model_tag": "tags.ffnn.model",
               "seed": "params.seed", "hidden": "params.hidden_sizes", "activation": "params.activation",
               "lr": "params.lr", "batch_size": "params.batch_size", "iters": "params.iters",
               "dataset": "params.dataset", "spec": "tags.ffnn.spec", "device_name": "tags.ffnn.device_name",
               "key": f"tags.{TAG_KEY}", "accuracy": "metrics.final_test_accuracy",
               "train_seconds": "metrics.train_seconds", "failure": f"tags.{TAG_FAILURE}",
               "failure_step": f"tags.{TAG_FAILURE_STEP}", "parent_run_id": "tags.mlflow.parentRunId",
               "test_correct": f"tags.{TAG_TEST_CORRECT}", "tuned_by": f"tags.{TAG_TUNED_BY}"}
# MLflow 3's UI shows an experiment as a runs table (not as GenAI traces) when it has this tag.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
BATCH = 1000  # MLflow's limit of metrics per log_batch call
MODEL_PATH = "model"  # the artifact folder of a run's trained network (MLflow PyTorch flavor)
BEST_ALIAS = "best"  # registry alias of each model's best seed


def now_ms() -> int:
    return int(time.time() * 1000)


def run_key(values: dict[str, Any]) -> str:
    """A stable hash of what determines a run's result."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:32]


def registry_name(experiment: str, model: str) -> str:
    """The Model Registry name of an experiment's model: ``registry_name("compare", "C*") == "compare-C-tuned"``.

    ``*`` (a tuned model) reads badly in ``models:/`` URIs; ``/`` and ``:`` are not allowed in names.
    """
    return re.sub(r"[/:]", "_", f"{experiment}-{model.replace('*', '-tuned')}")


