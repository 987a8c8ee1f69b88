"""Which process trains a run: claims by run key, held and finished keys, and the orphans of dead
owners marked FAILED."""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from .owners import heartbeat_grace, owner, pid_alive
from .schema import (
    FINISHED_CHILD_RUNS,
    LIVE_CHILD_RUNS,
    RUNNING_RUNS,
    TAG_FAILURE,
    TAG_HEARTBEAT,
    TAG_KEY,
    TAG_OWNER,
    now_ms,
    runs_with_ids,
)
from .translate import is_unreachable, writes_finish_before_interrupts


@writes_finish_before_interrupts
class Claims:
    """The ``Tracker``'s claim methods (a mixin: the fields and the store calls are the ``Tracker``'s)."""
    client: MlflowClient

    if TYPE_CHECKING:
        def search(self, experiment_id: str, filter_string: str) -> list[Run]: ...
        def end_run(self, run_id: str, status: str = "FINISHED", tags: dict[str, str] | None = None) -> None: ...

    def finished_keys(self, experiment_id: str) -> set[str]:
        """``run_key`` tags of FINISHED child runs in the experiment."""
        runs = self.search(experiment_id, FINISHED_CHILD_RUNS)
        return {key for r in runs if (key := r.data.tags.get(TAG_KEY)) is not None}

    def claim_many(self, experiment_id: str, mine: dict[str, str]) -> set[str]:
        """For each ``key -> run_id`` just created, keep the run only if no other run with that key is
        FINISHED or RUNNING with a live owner; delete the others; return the keys kept.

        Each process creates its runs, then looks: whoever sees another live run with a key deletes its
        own. Two processes that create the same key at the same moment may both step back (never both
        go on); the job stays unclaimed, and ``open_keys`` hands it out again. One search serves every key.
        """
        if not mine:
            return set()
        held = self.held_keys(experiment_id, exclude=set(mine.values()))
        kept = set()
        for key, run_id in mine.items():
            if key in held:
                self.client.delete_run(run_id)
            else:
                kept.add(key)
        return kept

    def held_keys(self, experiment_id: str, exclude: Container[str] = frozenset()) -> set[str]:
        """``run_key`` tags of child runs FINISHED, or RUNNING with a live owner; runs in ``exclude`` aside."""
        runs = self._unfailed_runs(experiment_id)
        beats: dict[str, int | None] = {}
        return {key for r in runs if r.info.run_id not in exclude and (
            r.info.status == "FINISHED" or (r.info.status == "RUNNING" and self._alive(r, beats)))
            and (key := r.data.tags.get(TAG_KEY)) is not None}

    def statuses(self, experiment_id: str, run_ids: Iterable[str]) -> dict[str, str]:
        """``run_id -> status`` of the given runs of the experiment, in one search per 100."""
        ids, out = list(run_ids), {}
        for i in range(0, len(ids), 100):
            for r in self.search(experiment_id, runs_with_ids(ids[i:i + 100])):
                out[r.info.run_id] = r.info.status
        return out

    def open_keys(self, experiment_id: str, keys: Iterable[str]) -> tuple[set[str], set[str]]:
        """Of ``keys``: those FINISHED, and those nobody is running (dead owners' runs marked FAILED first)."""
        self.fail_orphans(experiment_id)
        runs = self._unfailed_runs(experiment_id)
        finished = {r.data.tags.get(TAG_KEY) for r in runs if r.info.status == "FINISHED"}
        running = {r.data.tags.get(TAG_KEY) for r in runs if r.info.status == "RUNNING"}
        keys = set(keys)
        return keys & finished, keys - finished - running

    def _unfailed_runs(self, experiment_id: str) -> list[Run]:
        """The experiment's child runs that are FINISHED or still RUNNING."""
        return self.search(experiment_id, LIVE_CHILD_RUNS)

    def fail_orphans(self, experiment_id: str) -> int:
        """Mark RUNNING runs whose owner is dead as FAILED, with the reason; return how many.

        Dead: its process is gone from this host, or its heartbeat is older than ``FFNN_HEARTBEAT_GRACE``
        seconds, whatever host it ran on. Runs with no heartbeat (tune's, whose trials Optuna's
        heartbeat watches) are judged by the pid check alone.
        """
        n = 0
        beats: dict[str, int | None] = {}
        for r in self.search(experiment_id, RUNNING_RUNS):
            reason = self._death(r, beats)
            if reason:
                self.end_run(r.info.run_id, "FAILED", {TAG_FAILURE: reason})
                n += 1
        return n

    def _alive(self, run: Run, beats: dict[str, int | None]) -> bool:
        return self._death(run, beats) is None

    def _death(self, run: Run, beats: dict[str, int | None]) -> str | None:
        """Why ``run``'s owner counts as dead, or None while it may be alive. ``beats`` caches heartbeats."""
        owner_ = run.data.tags.get(TAG_OWNER)
        if not owner_ or owner_ == owner():
            return None
        if not pid_alive(owner_):
            return f"process {owner_} ended without closing the run"
        holder = run.info.run_id if TAG_HEARTBEAT in run.data.tags else run.data.tags.get(MLFLOW_PARENT_RUN_ID)
        if holder is None:
            return None
        if holder not in beats:
            if holder == run.info.run_id:
                tag = run.data.tags.get(TAG_HEARTBEAT)
            else:
                try:
                    tag = self.client.get_run(holder).data.tags.get(TAG_HEARTBEAT)
                except MlflowException as e:
                    if is_unreachable(e):
                        raise
                    tag = None  # parent deleted
            beats[holder] = int(tag) if tag and tag.isdigit() else None
        beat = beats[holder]
        if beat is None:
            return None  # no heartbeat kept (an older ffnn, or a tune run): the pid check alone decides
        age = (now_ms() - beat) / 1000
        grace = heartbeat_grace()
        if age > grace:
            return f"owner {owner_} stopped: no heartbeat for {age:.0f} s (grace {grace:g} s)"
        return None

