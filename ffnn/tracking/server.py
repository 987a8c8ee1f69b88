"""``mlflow server`` on a store (the UI), a free port, and links into the UI."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..errors import TrackingError
from .env import telemetry_env
from .sqlite import artifact_root, resolve_uri
from .store import Tracker


def runs_link(url: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment.

    MLflow 3.17's UI opens an experiment on its GenAI overview (traces) unless the workflow type is
    "machine learning": the sidebar's GenAI / Model training switch, remembered per browser, or
    ``workflowType`` in the URL. The experiment's ``mlflow.experimentKind`` tag is not read. The link sets it.
    """
    return f"{url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ui_server(uri: str | None = None, port: int = 5000, host: str = "127.0.0.1",
              log: Path | None = None, timeout: float = 90) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``mlflow server`` on the store at ``host:port`` (0 = a free port) until the block ends.

    Yields the URL and the process once the server answers ``/health``.
    """
    uri = resolve_uri(uri)
    Tracker.open(uri)  # a clear error for a bad store, and its tables created before the server starts
    if port == 0:
        port = free_port(host)
    else:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                raise TrackingError(f"port {port} on {host} is in use (pass --port 0 for a free one)")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    root = artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    url = f"http://{host}:{port}"
    with open(log or os.devnull, "w") as out:  # the server writes to its own copy of the file
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=telemetry_env(os.environ))
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise TrackingError(f"mlflow server exited with status {proc.returncode}"
                                    + (f"; see {log}" if log else ""))
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TrackingError(f"mlflow server did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.3)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
