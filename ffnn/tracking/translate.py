"""MLflow's errors as one line: a lost or refusing server, the store's own ENOSPC; every public
store call timed and never cut in half by SIGINT/SIGTERM."""

from __future__ import annotations

import functools
import inspect
import re
import time
import urllib.error
import urllib.request

from mlflow.exceptions import MlflowException

from ..errors import TrackingError, deferring, no_space
from .sqlite import sqlite_path

# An unreachable tracking server fails a command within about 20 s instead of MLflow's minutes of retries.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def is_unreachable(e: Exception) -> bool:
    text = str(e)
    return ("API request to" in text and ("failed with exception" in text or "failed with timeout" in text)) \
        or "Max retries exceeded" in text


def credentials_refused(uri: str) -> TrackingError:
    return TrackingError(f"tracking server {uri} refused the credentials: set MLFLOW_TRACKING_USERNAME and "
                         f"MLFLOW_TRACKING_PASSWORD (e.g. from mlruns/cluster.env)")


def probe_server(uri: str, timeout: float = 10) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass  # it answers; the real request will say what is wrong
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"tracking URI {uri!r} is unreachable: {reason}") from None


def _timed(fn):
    """Adds the call's wall time to ``self.store_seconds`` (outermost calls only)."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if self._depth:
            return fn(self, *args, **kwargs)
        self._depth += 1
        start = time.perf_counter()
        try:
            return fn(self, *args, **kwargs)
        finally:
            self.store_seconds += time.perf_counter() - start
            self._depth -= 1
    return wrapper


def _cause(e: Exception) -> str:
    """The last reason in MLflow's chained message: ``Connection refused``, ``Read timed out``..."""
    text = str(e).splitlines()[0]
    found = re.findall(r"(?:\] |: )([A-Z][^:\]\)\('\"]{3,80})(?=['\")\]]|$)", text)
    return found[-1].strip() if found else text[-120:]


def _translating(fn):
    """A lost or refusing tracking server becomes one TrackingError line, not MLflow's traceback."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if self._gone:  # clean-up after a lost server fails at once instead of retrying each write
            raise TrackingError(self._gone)
        try:
            return fn(self, *args, **kwargs)
        except MlflowException as e:
            if is_unreachable(e):
                self._gone = f"tracking server {self.uri} went away ({_cause(e)})"
                raise TrackingError(self._gone) from None
            if e.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or "401" in str(e)[:200]:
                raise credentials_refused(self.uri) from None
            if "database or disk is full" in str(e):  # SQLite's words for ENOSPC
                raise no_space(sqlite_path(self.uri) or self.uri) from e
            raise
    return wrapper


def writes_finish_before_interrupts(cls):
    """Every public method runs with SIGINT/SIGTERM deferred, so a write is never cut in half; is timed;
    and turns a lost server into a TrackingError."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, deferring(_timed(_translating(member))))
    return cls


