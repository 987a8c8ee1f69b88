"""The execution engine: where jobs run, and that their results come back to the parent."""

import os

from ffnn.engine import ProcessEngine as Engine


def _setup():
    return "ready"


def _work(context, job, ask):
    return os.getpid(), context, job * 2, ask(job)


def _run(engine: Engine, jobs: list[int]) -> list:
    queue, done = list(jobs), []
    engine.run(lambda: queue.pop(0) if queue else None, lambda job, result: done.append(result),
               lambda job, error: done.append(error), on_ask=lambda job, payload: payload + 100)
    engine.close()
    return done


def test_one_worker_runs_in_this_process_unless_asked_to_spawn():
    local = _run(Engine(1, _setup, _work), [1, 2])
    assert local == [(os.getpid(), "ready", 2, 101), (os.getpid(), "ready", 4, 102)]

    spawned = _run(Engine(1, _setup, _work, spawn=True), [1, 2, 3])
    assert [r[1:] for r in spawned] == [("ready", 2, 101), ("ready", 4, 102), ("ready", 6, 103)]
    assert len({r[0] for r in spawned}) == 1 and spawned[0][0] != os.getpid()


_PARENT_STATE: list[str] = []  # what a forked worker inherits and a spawned one, importing afresh, has not


def _inherited(context, job, ask):
    return list(_PARENT_STATE), job


def test_cpu_workers_are_forked_only_while_this_process_has_no_other_thread():
    import sys
    import threading

    from ffnn.engine.process import start_method
    assert start_method(spawn=True) == "spawn"  # CUDA: never forked
    if sys.platform == "linux" and threading.active_count() == 1:
        assert start_method(spawn=False) == "fork"
        _PARENT_STATE.append("set before the workers started")
        try:
            forked = _run(Engine(2, _setup, _inherited), [1, 2])
            spawned = _run(Engine(1, _setup, _inherited, spawn=True), [3])
        finally:
            _PARENT_STATE.clear()
        assert sorted(forked) == [(["set before the workers started"], 1), (["set before the workers started"], 2)]
        assert spawned == [([], 3)]
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert start_method(spawn=False) == "spawn"  # a lock another thread holds would stay held in a fork
    finally:
        stop.set()
        other.join()
