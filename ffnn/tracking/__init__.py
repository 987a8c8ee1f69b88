"""MLflow: the only package that imports mlflow.

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts``;
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` overrides. One experiment per comparison, one parent run
per invocation, one child run per (model, seed). All writes go through one ``MlflowClient`` (the
``Tracker``) in one process.

``env`` comes first: MLflow reads its telemetry switch when it is imported.
"""

from . import env  # noqa: I001  (first: before any module that imports mlflow)
from mlflow.entities import Run  # the type of what a search returns

from ..errors import TrackingError
from .schema import (
    BATCH,
    BEST_ALIAS,
    CHILD_RUNS,
    DEFAULT_TRACKING_URI,
    EXPERIMENT_KIND,
    FINISHED_CHILD_RUNS,
    GRACE_ENV,
    HOST_ENV,
    LIVE_CHILD_RUNS,
    MODEL_PATH,
    MODEL_TRAINING,
    RUNNING_RUNS,
    RUN_COLUMNS,
    TAG_DATASET_SHA,
    TAG_DEVICE_NAME,
    TAG_ENGINE,
    TAG_FAILURE,
    TAG_FAILURE_STEP,
    TAG_GIT,
    TAG_HEARTBEAT,
    TAG_KEY,
    TAG_KIND,
    TAG_LOOKS,
    TAG_MODEL,
    TAG_OWNER,
    TAG_SEQUENTIAL,
    TAG_SPEC,
    TAG_STACK_INDEPENDENT,
    TAG_STACK_SIZE,
    TAG_STATE,
    TAG_STUDY,
    TAG_TEST_CORRECT,
    TAG_TORCH,
    TAG_TRIAL,
    child_key,
    child_params,
    child_tags,
    key_values,
    TAG_TUNED_BY,
    WEIGHTS_FILE,
    now_ms,
    registry_name,
    run_key,
    runs_with_ids,
    trial_runs,
)
from .sqlite import (
    RESERVE_BYTES,
    SQLITE_MAGIC,
    SpaceReserve,
    artifact_root,
    check_sqlite_file,
    resolve_uri,
    sqlite_path,
    use_wal,
)
from .owners import (
    DEFAULT_GRACE,
    git_commit,
    heartbeat_grace,
    heartbeat_interval,
    host,
    owner,
    pid_alive,
)
from .translate import (
    HTTP_DEFAULTS,
)
from .models import (
    model_requirements,
)
from .store import (
    Tracker,
)
from .system_metrics import (
    SystemMetrics,
)
from .server import (
    free_port,
    runs_link,
    ui_server,
)
from .env import NO_TELEMETRY, TELEMETRY_OPT_IN, telemetry_env

__all__ = [
    "CHILD_RUNS",
    "FINISHED_CHILD_RUNS",
    "LIVE_CHILD_RUNS",
    "RUNNING_RUNS",
    "TAG_DATASET_SHA",
    "TAG_DEVICE_NAME",
    "TAG_ENGINE",
    "TAG_GIT",
    "TAG_MODEL",
    "TAG_SPEC",
    "TAG_STACK_INDEPENDENT",
    "TAG_STACK_SIZE",
    "TAG_STATE",
    "TAG_STUDY",
    "TAG_TORCH",
    "TAG_TRIAL",
    "child_key",
    "child_params",
    "child_tags",
    "key_values",
    "runs_with_ids",
    "trial_runs",
    "env",
    "TrackingError",
    "Run",
    "BATCH",
    "BEST_ALIAS",
    "DEFAULT_TRACKING_URI",
    "EXPERIMENT_KIND",
    "GRACE_ENV",
    "HOST_ENV",
    "MODEL_PATH",
    "MODEL_TRAINING",
    "RUN_COLUMNS",
    "TAG_FAILURE",
    "TAG_FAILURE_STEP",
    "TAG_HEARTBEAT",
    "TAG_KEY",
    "TAG_KIND",
    "TAG_LOOKS",
    "TAG_OWNER",
    "TAG_SEQUENTIAL",
    "TAG_TEST_CORRECT",
    "TAG_TUNED_BY",
    "WEIGHTS_FILE",
    "now_ms",
    "registry_name",
    "run_key",
    "RESERVE_BYTES",
    "SQLITE_MAGIC",
    "SpaceReserve",
    "artifact_root",
    "check_sqlite_file",
    "sqlite_path",
    "use_wal",
    "resolve_uri",
    "DEFAULT_GRACE",
    "git_commit",
    "heartbeat_grace",
    "heartbeat_interval",
    "host",
    "owner",
    "pid_alive",
    "HTTP_DEFAULTS",
    "model_requirements",
    "Tracker",
    "SystemMetrics",
    "free_port",
    "runs_link",
    "ui_server",
    "NO_TELEMETRY",
    "TELEMETRY_OPT_IN",
    "telemetry_env",
]
