"""What can go wrong, as exceptions the CLI turns into one line and an exit status."""

from __future__ import annotations

import contextlib
import functools
import signal


class UserError(Exception):
    """Bad input or an unusable environment: one line for the user, exit status 2."""


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
