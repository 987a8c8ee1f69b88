"""The local SQLite store: its path and artifact root, WAL mode, the check for a damaged file, the
lock that serialises its creation, and the space kept free for clean-up on a full disk."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
from pathlib import Path
from urllib.parse import urlparse

from ..errors import TrackingError
from .owners import host, pid_alive
from .schema import DEFAULT_TRACKING_URI


def resolve_uri(uri: str | None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    scheme = urlparse(uri).scheme
    if scheme not in ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks") \
            and not scheme.startswith(("postgresql+", "mysql+")):
        raise TrackingError(f"tracking URI {uri!r}: unsupported scheme {scheme!r} (use sqlite:///path.db or http://host:port)")
    return uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def artifact_root(uri: str) -> str | None:
    """``<db folder>/artifacts`` for SQLite stores; the server decides otherwise."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / "artifacts").as_uri()


def local_path(uri: str) -> str | None:
    """The folder of a ``file:`` (or plain path) artifact URI; None for remote stores."""
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme in ("", "file") else None


def use_wal(db: Path) -> None:
    """Put a SQLite store in WAL mode, which the file keeps for every later connection: readers (the UI, the
    dashboard) never block the writer, and a crashed process loses nothing it committed. Set on the file, once,
    with the standard library: no engine of this process (MLflow's, Optuna's) is touched."""
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con:
        if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            con.execute("PRAGMA journal_mode=WAL")


SQLITE_MAGIC = b"SQLite format 3\x00"


def check_sqlite_file(db: Path) -> None:
    """A damaged SQLite store is one line before MLflow sees it (MLflow retries opening it for about 100 s,
    then fails). Reads the 100-byte header only, never writes: a file that is not SQLite, or shorter than
    the pages its header counts (a truncated copy), is a ``TrackingError`` and the file stays as it is."""
    try:
        size = db.stat().st_size
        with open(db, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return  # a new store
    except OSError as e:
        raise TrackingError(f"the store {db} cannot be read ({e.strerror})") from None
    if size == 0:
        return  # created by a process that had not written its tables yet: MLflow creates them
    advice = "ffnn leaves it as it is: restore it from a backup, or pass another --tracking-uri"
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise TrackingError(f"the store {db} is not an SQLite database; {advice}")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    header_valid = header[24:28] == header[92:96]  # the page count holds only for the writer that set it
    if header_valid and pages and size < pages * page_size:
        raise TrackingError(f"the store {db} is damaged: {size:,} bytes where its header counts "
                            f"{pages * page_size:,} (a truncated copy?); {advice}")
    try:  # the schema pages, read-only
        with contextlib.closing(sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=10)) as con:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        if "malformed" in str(e) or "not a database" in str(e):
            raise TrackingError(f"the store {db} is damaged ({e}); {advice}") from None


RESERVE_BYTES = 1 << 19  # kept free beside a SQLite store while a command writes to it


class SpaceReserve:
    """A file of RESERVE_BYTES beside a SQLite store, deleted when the disk fills up, so that the
    clean-up after it (ending the runs FAILED with the cause) still has room to be written. One per
    process, named by its host and pid; those of dead processes are deleted when a store is opened."""

    def __init__(self, db: Path | None):
        self.path = db.with_name(f".{db.name}.reserve-{host()}-{os.getpid()}") if db is not None else None
        if self.path is None:
            return
        size = RESERVE_BYTES
        while True:  # on a disk that is nearly full already, as much of it as there is room for
            try:
                with open(self.path, "wb") as f:
                    os.posix_fallocate(f.fileno(), 0, size)
                return
            except OSError as e:
                if e.errno != errno.ENOSPC or size <= RESERVE_BYTES // 16:  # no fallocate, or no room at all
                    self.release()
                    return
                size //= 2

    def release(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None

    @staticmethod
    def clear_dead(db: Path) -> None:
        for path in db.parent.glob(f".{db.name}.reserve-*"):
            who, _, pid = path.name.split(".reserve-", 1)[1].rpartition("-")
            if not pid_alive(f"{who}:{pid}"):
                with contextlib.suppress(OSError):
                    path.unlink()


@contextlib.contextmanager
def init_lock(db: Path | None):
    if db is None:
        yield
        return
    with open(db.parent / f".{db.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


