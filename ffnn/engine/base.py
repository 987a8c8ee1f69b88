"""The engine interface: what compare and tune need from whatever runs their training.

A workflow hands an engine picklable jobs one at a time (``next_job``), answers the questions a running
job asks (``on_ask``: tune's prune decisions) and records each result as it comes back (``on_done``), or
the failure of a job whose work raised or whose worker died (``on_failed``). The workflow's process is the
only one that writes to MLflow and Optuna; an engine's workers return results and never touch a store, so
an engine that retries a job (Ray) cannot record anything twice.

``process.ProcessEngine`` runs the jobs in local training processes; ``ray.RayEngine`` runs them as Ray
tasks on a cluster. ``Context.engine`` picks one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

Work = Callable[[Any, Any, Callable[[Any], Any]], Any]  # (context, job, ask) -> result: what a worker runs
Setup = Callable[[], Any]  # () -> context: run once per worker (loading the data), its result passed to work


class Engine(Protocol):
    """Runs ``work`` over jobs; see the module's docstring for the contract."""

    @property
    def alive(self) -> bool:
        """Whether the engine can still run jobs (a process engine whose workers all died cannot)."""
        ...

    def run(self, next_job: Callable[[], Any | None], on_done: Callable[[Any, Any], None],
            on_failed: Callable[[Any, str], None], on_ask: Callable[[Any, Any], Any] | None = None) -> None:
        """Run jobs until ``next_job`` returns None and every job handed out has come back."""
        ...

    def close(self, graceful: bool = True) -> None:
        """Graceful: let the workers finish and stop; else cancel what is running, now."""
        ...
