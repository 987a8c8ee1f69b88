"""The one run schema: the tags, experiment tags and columns every ffnn run carries, and the keys
that identify a run; no store access here."""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..models import ModelSpec
    from ..train import TrainConfig

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
TAG_MODEL, TAG_SPEC = "ffnn.model", "ffnn.spec"  # a run's model name (C, C*, w100d2) and its architecture
TAG_ENGINE, TAG_STACK_SIZE = "ffnn.engine", "ffnn.stack_size"  # how a child run trained: "stacked-cpu", S seeds
TAG_DEVICE_NAME = "ffnn.device_name"  # what trained it, as the training process saw it
TAG_TORCH, TAG_DATASET_SHA = "ffnn.torch_version", "ffnn.dataset_sha256"
TAG_STACK_INDEPENDENT = "ffnn.stack_independent"  # "true" where a seed's numbers do not depend on its stack
TAG_GIT = "ffnn.git_commit"
TAG_STUDY = "ffnn.study"  # the Optuna study name, on the study's parent run and on every trial run
# the Optuna trial number, on a trial run from its creation: a process killed before it logged the run's params
# leaves a run still found as that trial's
TAG_TRIAL = "ffnn.trial_number"
TAG_STATE = "ffnn.trial_state"  # COMPLETE, PRUNED or FAIL (Optuna's names); RUNNING meanwhile
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
MODEL_PATH = "model"  # the name of a run's LoggedModel (MLflow PyTorch flavor): runs:/<run_id>/model
WEIGHTS_FILE = "weights.pt"  # a run's network as torch.save(state_dict), where it has no LoggedModel
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




# ---------------------------------------------------------------- what a run is, from the resolved config
def key_values(model: str, spec: ModelSpec, train: TrainConfig, dataset: str) -> dict[str, Any]:
    """Everything that determines a child run's result (its seed included): what ``run_key`` hashes."""
    return {"model": model, "hidden": list(spec.hidden), "activation": spec.activation_name, "lr": train.lr,
            "batch_size": train.batch_size, "iters": train.iters, "eval_every": train.eval_every,
            "seed": train.seed, "dataset": dataset}


def child_key(model: str, spec: ModelSpec, train: TrainConfig, dataset: str) -> str:
    return run_key(key_values(model, spec, train, dataset))


def child_params(model: str, spec: ModelSpec, train: TrainConfig, dataset: str, device: str) -> dict[str, Any]:
    """A child run's params: its recipe as trained (``TrainConfig``, seed included), its architecture, data and
    device; the report reads them back (``RUN_COLUMNS``)."""
    from ..models import count_params
    return {"model": model, "activation": spec.activation_name, "hidden_sizes": spec.hidden_str,
            **train.as_dict(), "dataset": dataset, "device": device, "n_params": count_params(spec)}


def child_tags(model: str, spec: ModelSpec, key: str) -> dict[str, str]:
    return {TAG_KIND: "run", TAG_KEY: key, TAG_MODEL: model, TAG_SPEC: spec.describe()}


# ---------------------------------------------------------------- filters (MLflow's search syntax)
CHILD_RUNS = f"tags.`{TAG_KIND}` = 'run'"
FINISHED_CHILD_RUNS = f"{CHILD_RUNS} and attributes.status = 'FINISHED'"
LIVE_CHILD_RUNS = f"{CHILD_RUNS} and attributes.status != 'FAILED' and attributes.status != 'KILLED'"
RUNNING_RUNS = "attributes.status = 'RUNNING'"


def trial_runs(study_name: str, status: str | None = None) -> str:
    """The trial runs of one Optuna study (with ``status``: only those)."""
    where = f"tags.`{TAG_KIND}` = 'trial' and tags.`{TAG_STUDY}` = '{study_name}'"
    return where + (f" and attributes.status = '{status}'" if status else "")


def runs_with_ids(run_ids: list[str]) -> str:
    quoted = ", ".join(f"'{r}'" for r in run_ids)
    return f"attributes.run_id IN ({quoted})"
