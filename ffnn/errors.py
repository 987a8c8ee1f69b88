"""What can go wrong, as exceptions the CLI turns into one line and an exit status."""

from __future__ import annotations

import contextlib
import errno
import functools
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path


class UserError(Exception):
    """Bad input or an unusable environment: one line for the user, exit status 2."""


class TrackingError(UserError):
    """The tracking store cannot be used."""


class Fault(Exception):
    """A command that failed part-way, already cleaned up (its runs ended FAILED with the cause): one line
    saying what happened and what is kept, exit status 1. The original error is its ``__cause__``
    (``FFNN_DEBUG=1`` prints it)."""

    code = 1

    @classmethod
    def after(cls, line: str, kept: str, again: str) -> Fault:
        """The fault for ``line`` (``stop_line``): what is ``kept``, and to run ``again`` (to free space first
        when the disk is full)."""
        advice = "free space and run the same command again" if "no space left" in line else again
        return cls(f"{line}; {kept}; {advice}")


def stop_line(e: BaseException, writing: str | None = None, places: Sequence[str | Path] = ()) -> str:
    """What stopped a command, as its runs' failure reason: an interrupt, a ``Fault``'s own line, or
    ``fault_line``. Called before the clean-up frees space, so a full disk's free space is as it was."""
    if isinstance(e, (KeyboardInterrupt, Interrupted)):
        return f"interrupted ({e or 'SIGINT'})"
    return str(e) if isinstance(e, Fault) else fault_line(e, writing, places)


def no_space(path: str | Path) -> OSError:
    """ENOSPC naming the file that could not be written (a copy's own error names its source, or nothing)."""
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def fault_line(e: BaseException, writing: str | None = None, places: Sequence[str | Path] = ()) -> str:
    """One line for an error nobody planned for: a full disk names where and how much is free, memory
    says so, anything else gives its type and first line. ``writing``: what was being written, named in
    place of the file; ``places``: the files the command writes (its stores), for a full disk reported
    without a file name (SQLite's "database or disk is full", wrapped by MLflow or Optuna).

    ``fault_line(RuntimeError("boom\\nmore")) == "RuntimeError: boom"``
    """
    doing = f" while writing {writing}" if writing else ""
    if (full := _disk_full(e)) is not None:
        where = str(full.filename) if isinstance(full, OSError) and full.filename else ""
        if not where and places:  # the place on the fullest file system
            where = str(min(places, key=lambda p: _free_bytes(str(p)) or 0))
        if not where:
            return f"no space left on the device ({_free('.')} free where ffnn runs){doing}"
        mount = mount_point(where)
        if not doing and str(mount) != where:
            doing = f" while writing {where}"
        return f"no space left on {mount} ({_free(where)} free){doing}"
    if doing:
        return f"{fault_line(e)}{doing}"
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower() or "not enough memory" in str(e).lower():
        return f"out of memory: {_first(e) or type(e).__name__}"
    return f"{type(e).__name__}: {_first(e)}" if _first(e) else type(e).__name__


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _disk_full(e: BaseException) -> BaseException | None:
    """The error in ``e``'s chain that says the disk is full, if any."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 20:
        if isinstance(cur, OSError) and cur.errno == errno.ENOSPC:
            return cur
        if "database or disk is full" in str(cur):
            return cur
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return None


def _free_bytes(path: str) -> int | None:
    """Free bytes of the file system holding ``path`` (its nearest existing folder); None if unknown."""
    try:
        return shutil.disk_usage(_existing(Path(path or "."))).free
    except OSError:
        return None


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system that holds ``path`` (or would, for a file not yet written)."""
    p = _existing(Path(path))
    while not p.is_mount() and p != p.parent:
        p = p.parent
    return p


def _existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _free(path: str) -> str:
    """``_free_bytes`` for the user, e.g. ``"0 B"``."""
    from .memory import human
    free = _free_bytes(path)
    return "unknown" if free is None else human(free)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; ``code`` is the exit status to use (130 or 143).

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` never swallows it.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


_deferring = 0  # depth of deferred_interrupts() blocks
_pending: int | None = None  # a signal that arrived inside one


def raise_interrupt(signum, _frame) -> None:
    global _pending
    if _deferring:
        _pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def deferred_interrupts():
    """Let a store write finish before an interrupt is raised (MLflow would wrap it otherwise)."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)


def deferring(fn):
    """Decorator form of ``deferred_interrupts``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with deferred_interrupts():
            return fn(*args, **kwargs)
    return wrapper


def install_interrupt_handlers() -> dict:
    """SIGINT and SIGTERM raise ``Interrupted``, so open runs can be closed as KILLED; returns the old handlers."""
    return {s: signal.signal(s, raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}


@contextlib.contextmanager
def ignore_interrupts():
    """Defer SIGINT/SIGTERM while closing runs; re-installs the raising handlers after."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
