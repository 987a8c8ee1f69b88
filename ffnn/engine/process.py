"""The local engine: jobs -> worker processes (or this process) -> results, on one machine.

A worker is a child process with one torch thread (CPU matmul results depend
on the thread count, so a job's numbers do not depend on how many workers
there are): forked on the CPU while the parent has no other thread, so that it
starts with torch imported, spawned otherwise (always on CUDA). It ignores
SIGINT (the parent decides what an interrupt means), dies with its parent
(``PR_SET_PDEATHSIG``: a kill -9 of ``ffnn`` leaves no worker behind), calls
``setup()`` once (loading the data), then runs each job it is sent as
``work(context, job, ask)``. ``ask(payload)`` sends a question to the parent
and returns its answer: tune asks whether to prune at each evaluation. With
one worker on the CPU the jobs run in this process instead; on CUDA the one
worker is a process, so that the parent records a stack's results while the
next stack trains.

The parent alone talks to MLflow and Optuna: it hands out jobs
(``next_job``), answers questions (``on_ask``) and records results
(``on_done``); a job whose worker crashed or died comes back through
``on_failed``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, Literal, cast

from .base import Setup, Work

if TYPE_CHECKING:
    import torch

TRAIN_THREADS = 1  # torch threads per training process
PR_SET_PDEATHSIG = 1



def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies; exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent's clean-up still ends its workers
        return
    if os.getppid() != parent_pid:
        os._exit(1)


def _failure(e: Exception) -> str:
    """A job's exception as ``on_failed`` gets it: one line naming it, then the last frames."""
    return f"{type(e).__name__}: {e}".splitlines()[0] + "\n" + traceback.format_exc(limit=3)


def _worker(conn: Connection, parent_pid: int, payload: bytes) -> None:
    """A training process. ``payload`` (setup and work, pickled) is opened only once this process is bound
    to its parent: unpickling imports torch, which takes seconds, and a kill -9 may come meanwhile."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker has its parent's handler
    import torch
    torch.set_num_threads(TRAIN_THREADS)
    setup, work = pickle.loads(payload)
    context = setup()

    def ask(payload: Any) -> Any:
        conn.send(("ask", payload))
        return conn.recv()

    while (job := conn.recv()) is not None:
        try:
            conn.send(("done", work(context, job, ask)))
        except Exception as e:  # the job's own failure: reported, the worker goes on
            conn.send(("error", _failure(e)))


def _unasked(job: Any, payload: Any) -> Any:
    """``on_ask`` of a run given none: work that asks anyway is a programming error, said plainly."""
    raise RuntimeError(f"job {job!r} asked {payload!r}, but the engine was given no on_ask")


def start_method(spawn: bool) -> Literal["fork", "spawn"]:
    """``fork`` on Linux while this process has no other thread and no GPU is involved; else ``spawn``.

    A forked worker starts with torch already imported (1.3-1.6 s of a core saved per worker); forking
    is unsafe once other threads may hold locks, and CUDA cannot be used in a forked child."""
    if not spawn and sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "spawn"


def worker_count(requested: int | None, device: torch.device, n_jobs: int) -> int:
    """``requested`` (0 or None: one per CPU core, one on CUDA), never more than there are jobs."""
    if requested:
        n = requested
    elif device.type == "cuda":
        n = 1
    else:
        n = os.cpu_count() or 1
    return max(1, min(n, n_jobs or 1))


class ProcessEngine:
    """``workers`` training processes, or this process when ``workers`` is 1 and ``spawn`` is false.

    ``spawn``: use a process even for one worker, so that this process records results meanwhile (on a
    GPU, one process trains while this one writes to MLflow), and start it with ``spawn``, never ``fork``."""

    def __init__(self, workers: int, setup: Setup, work: Work, spawn: bool = False):
        self.work = work
        self.conns: list[Connection] = []
        self.procs: dict[Connection, BaseProcess] = {}
        self.context: Any = None
        self.local = workers <= 1 and not spawn
        if self.local:
            import torch
            torch.set_num_threads(TRAIN_THREADS)
            self.context = setup()
            return
        # spelled out: typeshed gives a context with a Process only for a literal method name
        fork = start_method(spawn) == "fork"
        ctx = multiprocessing.get_context("fork") if fork else multiprocessing.get_context("spawn")
        payload = pickle.dumps((setup, work))
        for _ in range(workers):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(theirs, os.getpid(), payload), daemon=True)
            proc.start()
            theirs.close()
            self.conns.append(mine)
            self.procs[mine] = proc

    @property
    def alive(self) -> bool:
        """Running in this process, or with at least one worker process left."""
        return self.local or bool(self.procs)

    def run(self, next_job: Callable[[], Any | None], on_done: Callable[[Any, Any], None],
            on_failed: Callable[[Any, str], None], on_ask: Callable[[Any, Any], Any] | None = None) -> None:
        """Run jobs until ``next_job`` returns None and every job has come back."""
        ask = on_ask or _unasked
        if not self.procs:
            while (job := next_job()) is not None:
                try:
                    result = self.work(self.context, job, functools.partial(ask, job))
                except Exception as e:
                    on_failed(job, _failure(e))
                    continue
                on_done(job, result)
            return
        idle = list(self.conns)
        busy: dict[Connection, Any] = {}
        exhausted = False

        def dispatch() -> None:
            nonlocal exhausted
            while idle and not exhausted:
                job = next_job()
                if job is None:
                    exhausted = True
                    return
                conn = idle.pop()
                try:
                    conn.send(job)
                except OSError:
                    self._died(conn, job, on_failed)
                    continue
                busy[conn] = job

        dispatch()
        while busy:
            came_back = []  # recorded once the idle workers have their next job
            for conn in cast(list[Connection], wait(list(busy))):  # typeshed: any waitable, not the ones given
                job = busy[conn]
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):
                    del busy[conn]
                    self._died(conn, job, on_failed)
                    continue
                if kind == "ask":
                    conn.send(ask(job, payload))
                    continue
                del busy[conn]
                idle.append(conn)
                came_back.append((kind, job, payload))
            dispatch()
            for kind, job, payload in came_back:
                (on_done if kind == "done" else on_failed)(job, payload)

    def _died(self, conn: Connection, job: Any, on_failed: Callable[[Any, str], None]) -> None:
        proc = self.procs.pop(conn)
        self.conns.remove(conn)
        proc.join(timeout=5)
        if proc.exitcode == -signal.SIGKILL:  # what the kernel's OOM killer sends
            why = "worker process was killed (SIGKILL: out of memory, most likely, or a kill -9)"
        else:
            why = f"worker process died (exit code {proc.exitcode})"
        on_failed(job, why)
        if not self.conns:
            raise RuntimeError("every training process died; see the errors above")

    def close(self, graceful: bool = True) -> None:
        """Graceful: let each worker finish and exit; else terminate them now."""
        for conn, proc in self.procs.items():
            with contextlib.suppress(OSError):
                if graceful:
                    conn.send(None)
                else:
                    proc.terminate()
        for proc in self.procs.values():
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.procs.clear()
        self.conns.clear()
        self.local = False
