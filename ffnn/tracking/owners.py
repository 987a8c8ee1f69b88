"""Who owns a RUNNING run: host and pid, heartbeats and their grace period, the git commit."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import threading
from pathlib import Path

from mlflow import MlflowClient

from ..errors import UserError
from .schema import GRACE_ENV, HOST_ENV, TAG_HEARTBEAT, now_ms

DEFAULT_GRACE = 120.0  # seconds without a heartbeat after which an owner counts as dead


@functools.cache
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def host() -> str:
    """This machine's name in owner tags: ``FFNN_HOST`` when set (meant for tests that let processes
    stand in for machines), else the host name."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


def owner() -> str:
    """``host:pid`` of this process, as recorded on the runs and trials it opens."""
    return f"{host()}:{os.getpid()}"


def heartbeat_grace() -> float:
    """Seconds without a heartbeat after which a run's owner counts as dead (``FFNN_HEARTBEAT_GRACE``)."""
    raw = os.environ.get(GRACE_ENV)
    if raw is None:
        return DEFAULT_GRACE
    try:
        grace = float(raw)
    except ValueError:
        grace = -1.0
    if not grace > 0:
        raise UserError(f"{GRACE_ENV}={raw!r}: must be a number of seconds > 0")
    return grace


def heartbeat_interval() -> float:
    """Seconds between heartbeats: a quarter of the grace period, at most 10."""
    return min(10.0, heartbeat_grace() / 4)


def pid_alive(owner: str) -> bool:
    """False only when ``owner`` ran on this host and its pid is gone; True when it cannot tell."""
    host_, _, pid = owner.rpartition(":")
    if host_ != host() or not pid.isdigit():
        return True  # someone else's machine: the heartbeat decides
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Heartbeat:
    """A thread that stamps ``TAG_HEARTBEAT`` on one run every ``interval`` seconds, with its own client
    (MLflow's clients are not shared between threads). A failed stamp is retried at the next beat."""

    def __init__(self, uri: str, run_id: str, interval: float):
        self.run_id = run_id
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._beat, args=(uri, interval), daemon=True,
                                       name=f"ffnn-heartbeat-{run_id[:8]}")
        self.thread.start()

    def _beat(self, uri: str, interval: float) -> None:
        client = MlflowClient(tracking_uri=uri)
        while not self.stop_event.wait(interval):
            with contextlib.suppress(Exception):  # the main thread reports a lost server; the next beat tries again
                client.set_tag(self.run_id, TAG_HEARTBEAT, str(now_ms()))

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


