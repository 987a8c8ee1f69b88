"""`ffnn tune`: one Optuna study per architecture family; every trial is a nested MLflow run.

The only package that imports optuna: ``driver`` (the command: batches of trials asked, trained, told),
``study`` (one study's ask/report/tell and its MLflow runs), ``search`` (space, sampler, pruner),
``storage`` (Optuna's storage, heartbeats, stale trials) and ``outputs`` (best params, plots). The
objective is the accuracy on a fixed validation split held out from the training set
(``data.split_validation``); the test set is dropped as soon as the data is loaded. Trials train in
worker processes (``ffnn.train.trials``), which import neither Optuna nor MLflow.
"""

from .driver import TuneResult, final_runs, tune
from .outputs import StudySummary, write_outputs
from .search import make_pruner, make_sampler, open_study, spec_of, suggest, trial_seed
from .storage import MLFLOW_STATUS, TAG_STATE, TAG_STUDY, StorageError, open_storage, run_label, storage_label

__all__ = ["MLFLOW_STATUS", "TAG_STATE", "TAG_STUDY", "StorageError", "StudySummary", "TuneResult", "final_runs",
           "make_pruner", "make_sampler", "open_storage", "open_study", "run_label", "spec_of", "storage_label",
           "suggest", "trial_seed", "tune", "write_outputs"]
