"""The execution engine: where jobs run, and that their results come back to the parent."""

import os

from ffnn.engine import Engine


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
