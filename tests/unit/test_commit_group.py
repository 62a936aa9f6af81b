"""Group commit (canary.audit.grouping): callers that arrive while a batch runs share the
next one; each gets its own outcome; nobody is left waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from canary.audit.grouping import CommitGroup, Outcome

pytestmark = pytest.mark.unit


class Gate:
    """A ``run`` for a CommitGroup that records its batches and can hold the first one open
    until the test says so."""

    def __init__(self, answer: Callable[[str], Outcome[str]] | None = None) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.answer = answer or (lambda r: Outcome(f"done:{r}"))

    def __call__(self, requests: Sequence[str]) -> list[Outcome[str]]:
        self.batches.append(list(requests))
        self.entered.set()
        assert self.release.wait(10), "the test never released the batch"
        return [self.answer(r) for r in requests]


def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for a state the threads reach, not for time to pass."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the threads never got there"
        time.sleep(0.001)


def start(
    group: CommitGroup[str, str], request: str, results: dict[str, object]
) -> threading.Thread:
    def call() -> None:
        try:
            results[request] = group.submit(request)
        except BaseException as exc:
            results[request] = exc

    thread = threading.Thread(target=call, name=f"caller-{request}")
    thread.start()
    return thread


def queued(group: CommitGroup[str, str]) -> int:
    with group._cond:
        return len(group._queue)


def test_a_lone_caller_runs_its_own_batch() -> None:
    gate = Gate()
    group: CommitGroup[str, str] = CommitGroup(gate)
    assert group.submit("a") == "done:a"
    assert group.submit("b") == "done:b"
    assert gate.batches == [["a"], ["b"]]


@pytest.mark.parametrize(("callers", "max_batch"), [(2, 64), (9, 64), (9, 4), (5, 1)])
def test_callers_arriving_during_a_batch_share_the_next(callers: int, max_batch: int) -> None:
    gate = Gate()
    gate.release.clear()
    group: CommitGroup[str, str] = CommitGroup(gate, max_batch=max_batch)
    results: dict[str, object] = {}
    threads = [start(group, "first", results)]
    assert gate.entered.wait(10)
    later = [f"r{i}" for i in range(callers - 1)]
    threads += [start(group, r, results) for r in later]
    until(lambda: queued(group) == len(later))
    gate.release.set()
    for thread in threads:
        thread.join(10)
    assert results == {r: f"done:{r}" for r in ["first", *later]}
    assert gate.batches[0] == ["first"]
    rest = gate.batches[1:]
    assert sorted(r for batch in rest for r in batch) == sorted(later)  # each exactly once
    assert all(len(batch) <= max_batch for batch in rest)
    assert len(rest) == -(-len(later) // max_batch)  # as few batches as the cap allows
    assert (group.batches, group.requests) == (1 + len(rest), callers)


def test_each_caller_gets_its_own_error_and_the_others_their_values() -> None:
    def answer(request: str) -> Outcome[str]:
        return Outcome(error=ValueError(f"bad {request}")) if request == "r1" else Outcome("ok")

    gate = Gate(answer)
    gate.release.clear()
    group: CommitGroup[str, str] = CommitGroup(gate)
    results: dict[str, object] = {}
    threads = [start(group, "first", results)]
    assert gate.entered.wait(10)
    threads += [start(group, r, results) for r in ("r0", "r1", "r2")]
    until(lambda: queued(group) == 3)
    gate.release.set()
    for thread in threads:
        thread.join(10)
    error = results.pop("r1")
    assert isinstance(error, ValueError)
    assert str(error) == "bad r1"
    assert results == {"first": "ok", "r0": "ok", "r2": "ok"}


def test_a_batch_that_raises_fails_its_callers_only() -> None:
    calls: list[list[str]] = []

    def run(requests: Sequence[str]) -> list[Outcome[str]]:
        calls.append(list(requests))
        if len(calls) == 1:
            raise ConnectionError("database went away")
        return [Outcome(f"done:{r}") for r in requests]

    group: CommitGroup[str, str] = CommitGroup(run)
    with pytest.raises(ConnectionError, match="went away"):
        group.submit("a")
    assert group.submit("b") == "done:b"  # the group is not wedged by the failure


def test_a_run_that_miscounts_fails_every_caller_instead_of_hanging() -> None:
    group: CommitGroup[str, str] = CommitGroup(lambda requests: [])
    with pytest.raises(RuntimeError, match="0 outcomes for 1 requests"):
        group.submit("a")


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CommitGroup(lambda requests: [], max_batch=0)


def test_a_caller_interrupted_while_waiting_never_strands_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller whose wait is interrupted (a KeyboardInterrupt in the main thread) leaves
    the queue; had the flusher's role been handed to it, nobody would run the next batch
    and every later caller would wait for ever."""
    from canary.audit import grouping

    class Interrupted(grouping._Waiting[str, str]):
        def __init__(self, request: str) -> None:
            super().__init__(request)
            if request == "x":
                self.wake = _Raising()

    class _Raising(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            until(lambda: queued(group) == 1)  # queued behind the running batch
            raise KeyboardInterrupt

    monkeypatch.setattr(grouping, "_Waiting", Interrupted)
    gate = Gate()
    gate.release.clear()
    group: CommitGroup[str, str] = CommitGroup(gate)
    results: dict[str, object] = {}
    threads = [start(group, "first", results)]
    assert gate.entered.wait(10)
    threads.append(start(group, "x", results))
    until(lambda: "x" in results)
    assert isinstance(results["x"], KeyboardInterrupt)
    threads.append(start(group, "y", results))
    until(lambda: queued(group) == 1)
    gate.release.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), "a caller was left waiting"
    assert results["first"] == "done:first"
    assert results["y"] == "done:y"
    assert gate.batches == [["first"], ["y"]]
