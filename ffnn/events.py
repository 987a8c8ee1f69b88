"""What the workflows tell whoever watches them, as typed events: the console draws them (``console``),
tests collect them, and nothing parses a message to learn a number."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Note:
    """A line for the user: a study starting, a trial's outcome, a look of --until-decided."""
    text: str


@dataclass(frozen=True)
class Planned:
    """A comparison's runs: ``done`` of ``total`` already FINISHED; the others are trained now."""
    done: int
    total: int

    @property
    def training(self) -> int:
        return self.total - self.done


@dataclass(frozen=True)
class Trained:
    """One run recorded: its final test accuracy (percent) and seconds, or why it failed."""
    label: str  # e.g. "C seed=3"
    accuracy: float
    seconds: float
    error: str | None = None


Event = Note | Planned | Trained
Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The listener of a workflow nobody watches."""
