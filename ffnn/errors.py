"""What can go wrong, as exceptions the CLI turns into one line and an exit status."""

from __future__ import annotations

import signal


class UserError(Exception):
    """Bad input or an unusable environment: one line for the user, exit status 2."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; ``code`` is the exit status to use (130 or 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


def raise_interrupt(signum, _frame) -> None:
    raise Interrupted(signum)
