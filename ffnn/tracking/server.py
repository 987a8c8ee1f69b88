"""``mlflow server`` on a store (the UI), a free port, and links into the UI."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
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


WILDCARDS = ("0.0.0.0", "::")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host if host not in WILDCARDS else "", 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1" if host in WILDCARDS else host, port)) == 0


def spawn(cmd: list[str], log: Path | None, env: dict[str, str]) -> subprocess.Popen:
    """A server in its own session (so that it is stopped as a group), its output appended to ``log``."""
    with open(log or os.devnull, "a") as out:  # the server writes to its own copy of the file
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def wait_until_up(proc: subprocess.Popen, answers: Callable[[], bool], what: str, timeout: float,
                  log: Path | None = None, error: type[Exception] = TrackingError) -> None:
    """Poll ``answers`` until it is true; ``error`` if the server exits first or ``timeout`` passes (then the
    server is stopped)."""
    see = f"; see {log}" if log else ""
    deadline = time.time() + timeout
    while not answers():
        if proc.poll() is not None:
            raise error(f"mlflow server exited with status {proc.returncode}{see}")
        if time.time() > deadline:
            kill_group(proc.pid)
            raise error(f"mlflow server did not answer on {what} within {timeout:.0f} s{see}")
        time.sleep(0.3)


def kill_group(pid: int, timeout: float = 20) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``timeout`` seconds; our own child is reaped."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                _reap(pid)
                return
            _reap(pid)
            time.sleep(0.2)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # our own child (tests start servers in-process): no zombie left


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


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
    elif port_in_use(host, port):
        raise TrackingError(f"port {port} on {host} is in use (pass --port 0 for a free one)")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    root = artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    url = f"http://{host}:{port}"
    if log is not None:
        log.write_text("")
    proc = spawn(cmd, log, telemetry_env(os.environ))
    try:
        wait_until_up(proc, lambda: _healthy(url), url, timeout, log)
        yield url, proc
    finally:
        if proc.poll() is None:
            kill_group(proc.pid, timeout=10)
            proc.wait()
