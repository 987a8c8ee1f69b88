"""The Ray engine: jobs -> Ray tasks on a cluster -> results, recorded by this process alone.

``connect`` joins a running cluster (``ray start``, ``make ray``, KubeRay), never starts one: an address
that does not answer is one line (``RayError``, exit 2) within ``CONNECT_TIMEOUT`` seconds. ``RayEngine``
runs each job as a task (``ffnn_job``) that asks for one CPU, or one GPU and one CPU on CUDA, so that
stacks land where the GPUs are. A task's worker process calls ``setup()`` once (loading the data, from the
same path on every node) and keeps the result for the engine's later tasks, trains with one torch thread
as a local training process does (the same seed gives the same numbers on either engine), and returns
its result. It writes nothing: Ray re-runs a task whose worker process or node died (``max_retries``),
and only this process records what comes back, so a retry cannot log a run twice.

A job's questions (tune's prune decisions) go through ``Questions``, an actor on this process's node:
a task's ``ask`` waits on it, this process collects the questions with a long poll beside the tasks it
waits for, and answers each through ``on_ask``.

``import ray`` happens only here, and only once ``--ray`` is asked for: ffnn works without Ray installed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .base import Setup, Work

if TYPE_CHECKING:
    import asyncio

TRAIN_THREADS = 1  # torch threads per task, as in a local training process: CPU results depend on it
TASK_RETRIES = 3  # runs of a task whose worker process or node died, after the first
CONNECT_TIMEOUT = 20  # seconds for a cluster to accept this driver
PROBE_TIMEOUT = 5  # seconds for the cluster's address to accept a TCP connection
WAIT_SLICE = 1.0  # seconds the driver waits on Ray at a time: Ray's wait does not end for a signal
INSTALL = "pip install 'ffnn[ray]' (or make ray, which installs it and starts a local cluster)"


class RayError(UserError):
    """Ray is missing or its cluster cannot be reached: one line, exit 2."""


def quiet_env() -> dict[str, str]:
    """What ffnn sets wherever it starts or joins Ray: no usage statistics (Ray sends them by default)."""
    return {"RAY_USAGE_STATS_ENABLED": "0"}


def import_ray() -> Any:
    """The ``ray`` module, or a ``RayError`` saying how to install it."""
    os.environ.update(quiet_env())
    try:
        import ray
    except ImportError as e:
        raise RayError(f"--ray needs Ray, which is not installed here ({e}): {INSTALL}") from e
    return ray


@dataclass(frozen=True)
class ClusterInfo:
    address: str
    cpus: int  # in the whole cluster, when this process joined it
    gpus: int
    node_cpus: int  # the most CPUs of one node: its training processes share one machine's memory


def _host_port(address: str) -> tuple[str, int] | None:
    """``"ray://h:10001"`` / ``"h:6379"`` -> (h, port); None for what is not host:port (``auto``)."""
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _probe(address: str) -> None:
    """A TCP connection to the address first: a wrong port or a stopped cluster is a line in milliseconds,
    where ``ray.init`` would retry for minutes."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=PROBE_TIMEOUT).close()
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise RayError(f"no Ray cluster answers at {address} ({why}): start one (make ray; . mlruns/ray.env) "
                       f"or pass its address (--ray HOST:PORT, or RAY_ADDRESS)") from None


def connect(address: str | None) -> ClusterInfo:
    """Join the cluster at ``address`` (None: ``$RAY_ADDRESS``) as its driver; its size as it is now."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise RayError("--ray needs a cluster's address: --ray HOST:PORT, or RAY_ADDRESS in the environment "
                       "(make ray writes it to mlruns/ray.env: . mlruns/ray.env)")
    ray = import_ray()
    if not ray.is_initialized():
        _probe(address)
        _init(ray, address)
    res = ray.cluster_resources()
    node_cpus = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]), default=0)
    return ClusterInfo(address, int(res.get("CPU", 0)), int(res.get("GPU", 0)), node_cpus)


def _init(ray: Any, address: str) -> None:
    """``ray.init`` with a deadline: it retries a silent address for minutes, and Ray's core logs each try
    to stderr, so these go to a file and the command gets one line."""
    import ffnn

    # the workers import the same ffnn as this process, from the same path on every node
    code = str(Path(ffnn.__file__).resolve().parents[1])
    box: dict[str, BaseException] = {}

    def init() -> None:
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False,
                     job_config=ray.job_config.JobConfig(code_search_path=[code]))
        except BaseException as e:  # handed to the waiting thread
            box["error"] = e

    with tempfile.TemporaryFile("w+") as log, _stderr_to(log):
        t = threading.Thread(target=init, name="ray-connect", daemon=True)
        t.start()
        t.join(CONNECT_TIMEOUT)
        log.seek(0)
        said = log.read()
    e = box.get("error")
    chain = f"{said} {e} {e.__cause__ if e is not None else ''}"
    if "InvalidAuthToken" in chain or "Unauthenticated" in chain:  # Ray's core says so at each try
        raise RayError(f"the Ray cluster at {address} refused this driver's token: load the cluster's "
                       f"RAY_AUTH_MODE and RAY_AUTH_TOKEN (. mlruns/ray.env)") from None
    if t.is_alive():
        raise RayError(f"no Ray cluster accepted this driver at {address} within {CONNECT_TIMEOUT} s: is it a "
                       f"Ray head's address (make ray; . mlruns/ray.env)?")
    if e is not None:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise RayError(f"could not join the Ray cluster at {address}: {first}") from None


@contextlib.contextmanager
def _stderr_to(f: Any) -> Any:
    """File descriptor 2 (where Ray's C++ core writes) into ``f`` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def disconnect() -> None:
    """Leave the cluster (a no-op when not joined): Ray ends this driver's tasks and actors."""
    ray = sys.modules.get("ray")  # never imported: never joined
    if ray is not None and ray.is_initialized():
        ray.shutdown()


# ---------------------------------------------------------------- in a worker process
_CONTEXT: tuple[str, Any] | None = None  # (engine key, setup()): kept for that engine's later tasks


def ffnn_job(payload: tuple[str, Setup, Work], job: Any, questions: Any, ticket: int) -> Any:
    """A task: ``work(setup(), job, ask)``, ``setup()`` once per worker process and engine. ``job`` None:
    only the set-up (the engine warms its workers while the driver opens the store)."""
    global _CONTEXT
    key, setup, work = payload
    if _CONTEXT is None or _CONTEXT[0] != key:
        import torch
        torch.set_num_threads(TRAIN_THREADS)
        _CONTEXT = None  # the last engine's data go before this one's load
        _CONTEXT = (key, setup())
    if job is None:
        return None
    import ray

    def ask(payload: Any) -> Any:
        if questions is None:
            raise RuntimeError(f"job {job!r} asked {payload!r}, but the engine was given no on_ask")
        return ray.get(questions.ask.remote(ticket, payload))

    return work(_CONTEXT[1], job, ask)


class Questions:
    """The questions of running tasks, held until the driver answers them (an async actor; asyncio is
    imported in the actor's process only, not by every ffnn command)."""

    def __init__(self) -> None:
        import asyncio
        self.asked: list[tuple[int, int, Any]] = []  # (question id, ticket, payload), not yet collected
        self.waiting: dict[int, asyncio.Future] = {}
        self.ids = itertools.count()
        self.wake = asyncio.Event()

    async def ask(self, ticket: int, payload: Any) -> Any:
        """A task's question; returns the driver's answer."""
        import asyncio
        qid = next(self.ids)
        answer = asyncio.get_running_loop().create_future()
        self.waiting[qid] = answer
        self.asked.append((qid, ticket, payload))
        self.wake.set()
        return await answer

    async def collect(self) -> list[tuple[int, int, Any]]:
        """The questions asked since the last call; waits for one when there is none."""
        while not self.asked:
            self.wake.clear()
            await self.wake.wait()
        out, self.asked = self.asked, []
        return out

    def answer(self, answers: list[tuple[int, Any]]) -> None:
        for qid, a in answers:
            if (f := self.waiting.pop(qid, None)) is not None and not f.done():
                f.set_result(a)


# ---------------------------------------------------------------- the driver
def _failure(ray: Any, e: BaseException) -> str:
    """A task's failure as ``on_failed`` gets it: the job's own exception, or what Ray says of its worker."""
    if isinstance(e, ray.exceptions.RayTaskError):
        cause = e.cause if isinstance(e.cause, BaseException) else e
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500] + "\n" + str(e)[-2000:]
    line = (str(e).strip().splitlines() or [""])[0][:300]
    return f"Ray gave up on the task after {TASK_RETRIES} retries: {type(e).__name__}: {line}"


class RayEngine:
    """Runs ``work`` as Ray tasks, at most ``workers`` at a time (``connect`` first)."""

    def __init__(self, setup: Setup, work: Work, workers: int, gpu: bool = False):
        self.ray = ray = import_ray()
        self.workers = max(1, workers)
        self.gpu = gpu
        self.payload = ray.put((uuid.uuid4().hex, setup, work))  # once in the object store, not per task
        self.task = ray.remote(ffnn_job).options(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=TASK_RETRIES)
        self.tickets = itertools.count(1)
        self.pending: dict[Any, tuple[Any, int]] = {}  # task ref -> (job, ticket)
        self.questions: Any = None
        self.listen: Any = None  # the pending collect call, kept across runs: a second would take questions unread
        # each worker process loads the data now, while the driver opens the store; what a warm-up hits
        # (data missing on a node) the job's own task meets again and reports
        self.warm = [self.task.remote(self.payload, None, None, 0) for _ in range(self.workers)]
        self.closed = False

    @property
    def alive(self) -> bool:
        return not self.closed and self.ray.is_initialized()

    def _ask_actor(self) -> Any:
        if self.questions is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
            here = self.ray.get_runtime_context().get_node_id()
            # restarted when its process dies; the calls in flight go to the new one and are asked again
            self.questions = self.ray.remote(Questions).options(
                num_cpus=0, max_restarts=-1, max_task_retries=-1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
        return self.questions

    def run(self, next_job: Callable[[], Any | None], on_done: Callable[[Any, Any], None],
            on_failed: Callable[[Any, str], None], on_ask: Callable[[Any, Any], Any] | None = None) -> None:
        """Run jobs until ``next_job`` returns None and every job handed out has come back."""
        try:
            self._run(next_job, on_done, on_failed, on_ask)
        except SystemError as e:
            # ffnn's SIGINT/SIGTERM handler raised while Ray's Cython code waited: Python reports that as a
            # SystemError caused by the interrupt, which is what the workflow must see (runs KILLED, 130/143)
            inner = e.__cause__ or e.__context__
            if isinstance(inner, BaseException) and not isinstance(inner, Exception):
                raise inner from None
            raise

    def _run(self, next_job: Callable[[], Any | None], on_done: Callable[[Any, Any], None],
             on_failed: Callable[[Any, str], None], on_ask: Callable[[Any, Any], Any] | None) -> None:
        ray = self.ray
        questions = self._ask_actor() if on_ask is not None else None
        if questions is not None and self.listen is None:
            self.listen = questions.collect.remote()
        listen = self.listen
        jobs: dict[int, Any] = {}  # ticket -> job, for the questions
        exhausted = False

        def dispatch() -> None:
            nonlocal exhausted
            while not exhausted and len(self.pending) < self.workers:
                job = next_job()
                if job is None:
                    exhausted = True
                    return
                ticket = next(self.tickets)
                jobs[ticket] = job
                self.pending[self.task.remote(self.payload, job, questions, ticket)] = (job, ticket)

        dispatch()
        while self.pending:
            ready, _ = ray.wait([*self.pending, *([listen] if listen is not None else [])], num_returns=1,
                                timeout=WAIT_SLICE)
            if listen is not None and listen in ready:
                try:
                    asked = ray.get(listen)
                except ray.exceptions.RayActorError:  # restarted: the tasks ask their questions again
                    asked = []
                if on_ask is not None and questions is not None:
                    questions.answer.remote([(qid, on_ask(jobs[t], payload)) for qid, t, payload in asked
                                             if t in jobs])
                listen = self.listen = questions.collect.remote() if questions is not None else None
            done = [r for r in ready if r in self.pending]
            if done:  # whatever else finished meanwhile comes back in this round too
                rest = [r for r in self.pending if r not in done]
                done += ray.wait(rest, num_returns=len(rest), timeout=0)[0] if rest else []
            came_back = []
            for ref in done:
                job, ticket = self.pending.pop(ref)
                del jobs[ticket]
                try:
                    came_back.append((on_done, job, ray.get(ref)))
                except ray.exceptions.RayError as e:
                    came_back.append((on_failed, job, _failure(ray, e)))
            dispatch()  # the workers get their next job before this process records the last
            for record, job, result in came_back:
                record(job, result)

    def close(self, graceful: bool = True) -> None:
        """Graceful: nothing is running after ``run``; else cancel the tasks in flight, now."""
        if self.closed or not self.ray.is_initialized():
            self.closed = True
            return
        for ref in [*self.pending, *([] if graceful else self.warm)]:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        self.pending.clear()
        if self.questions is not None:
            with contextlib.suppress(Exception):
                if self.listen is not None:  # else Ray retries it on the actor it restarts
                    self.ray.cancel(self.listen)
                self.ray.kill(self.questions, no_restart=True)
        self.closed = True


def cluster_slots(info: ClusterInfo, gpu: bool) -> int:
    """Tasks that can run at once: the cluster's GPUs on CUDA, else its CPUs (at least one)."""
    return max(1, info.gpus if gpu else info.cpus)
