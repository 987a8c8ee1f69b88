"""What can go wrong, as exceptions the CLI turns into one line and an exit status."""

from __future__ import annotations

import contextlib
import errno
import functools
import shutil
import signal
from pathlib import Path


class UserError(Exception):
    """Bad input or an unusable environment: one line for the user, exit status 2."""


def fault_line(e: BaseException) -> str:
    """One line for an error nobody planned for: a full disk names where and how much is free, memory
    says so, anything else gives its type and first line.

    ``fault_line(RuntimeError("boom\\nmore")) == "RuntimeError: boom"``
    """
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        where = str(e.filename) if e.filename else ""
        return f"no space left on the device{f' of {where}' if where else ''} ({_free(where)} free)"
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower() or "not enough memory" in str(e).lower():
        return f"out of memory: {_first(e) or type(e).__name__}"
    return f"{type(e).__name__}: {_first(e)}" if _first(e) else type(e).__name__


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def _free(path: str) -> str:
    """Free bytes of the file system holding ``path`` (its nearest existing folder), e.g. ``"0 B"``."""
    from .memory import human
    p = Path(path or ".").absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return human(shutil.disk_usage(p).free)
    except OSError:
        return "unknown"


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
