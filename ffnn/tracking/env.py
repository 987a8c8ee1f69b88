"""MLflow's process-wide settings: telemetry off (unless ``FFNN_TELEMETRY=1``) before mlflow is
imported, for this process and every process it starts; then its loggers quieted."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

# MLflow sends usage telemetry unless told not to, and decides when it is imported: switch it off
# first, for this process and every process it starts (mlflow server, training workers).
TELEMETRY_OPT_IN = "FFNN_TELEMETRY"  # =1: leave MLflow's telemetry to MLflow's defaults and the user's settings
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def telemetry_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with MLflow's telemetry off, unless it opts in with ``FFNN_TELEMETRY=1``.

    ``telemetry_env({})["MLFLOW_DISABLE_TELEMETRY"] == "true"``
    """
    env = dict(env)
    if env.get(TELEMETRY_OPT_IN) != "1":
        env.update(NO_TELEMETRY)
    return env


if os.environ.get(TELEMETRY_OPT_IN) != "1":
    os.environ.update(NO_TELEMETRY)

import mlflow  # noqa: E402, F401  (after the switch; it sets its loggers up, which are quieted below)

for _name in ("alembic", "mlflow"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# it warns at every model that pickled models run code when loaded (README: load models from stores you trust)
logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
# a store error is raised to ffnn as well, which says it in one line: MLflow's own ERROR with its traceback goes
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
# the system-metrics sampler is a background thread: a lost server is reported once, by the command
logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)

