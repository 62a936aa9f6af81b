"""The join of payload-logger responses (canary/shadow/join.py): responses to the same request
from different InferenceServices pair prediction by prediction, whichever comes first; a
replay never counts twice; a response that never finds a partner expires after the TTL, and
the oldest one is pushed out when the join is full."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from canary.shadow.events import REQUEST_TYPE, RESPONSE_TYPE, InferenceEvent, Prediction
from canary.shadow.join import Joiner, Pair, Taken

APPROVE = Prediction("approve", 0.8)
DECLINE = Prediction("decline", 0.3)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def response(isvc: str, event_id: str = "req-1", namespace: str = "credit",
             component: str | None = "predictor") -> InferenceEvent:  # fmt: skip
    return InferenceEvent(event_id, RESPONSE_TYPE, namespace, isvc, component=component)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def joiner(clock: Clock) -> Joiner:
    return Joiner(clock=clock, ttl_seconds=30.0, max_pending=100)


@pytest.mark.parametrize(
    ("first", "second"), [("champion", "challenger"), ("challenger", "champion")]
)
def test_two_responses_pair_whichever_arrives_first(
    joiner: Joiner, first: str, second: str
) -> None:
    predictions = {"champion": (APPROVE,), "challenger": (DECLINE,)}
    assert joiner.take(response(first), predictions[first]) == Taken("waiting")
    assert joiner.pending == 1
    taken = joiner.take(response(second), predictions[second])
    assert taken.outcome == "joined"
    [pair] = taken.pairs
    assert pair == Pair("credit", "req-1", 0, first, second, predictions[first][0],
                        predictions[second][0])  # fmt: skip
    assert pair.agree is False
    assert pair.swapped().isvc == second
    assert pair.swapped().mine == predictions[second][0]
    assert joiner.pending == 0


def test_a_batch_pairs_prediction_by_prediction(joiner: Joiner) -> None:
    joiner.offer(response("champion"), (APPROVE, DECLINE, APPROVE))
    pairs = joiner.offer(response("challenger"), (APPROVE, APPROVE, APPROVE))
    assert [(pair.index, pair.agree) for pair in pairs] == [(0, True), (1, False), (2, True)]


def test_responses_of_different_lengths_are_mismatched_and_make_no_pairs(joiner: Joiner) -> None:
    joiner.offer(response("champion"), (APPROVE, DECLINE))
    assert joiner.take(response("challenger"), (APPROVE,)) == Taken("mismatched")
    assert joiner.pending == 0


def test_a_third_inferenceservice_pairs_with_each_earlier_one(joiner: Joiner) -> None:
    joiner.offer(response("champion"), (APPROVE,))
    joiner.offer(response("challenger-a"), (APPROVE,))
    pairs = joiner.offer(response("challenger-b"), (DECLINE,))
    assert [(p.isvc, p.peer, p.agree) for p in pairs] == [
        ("champion", "challenger-b", False),
        ("challenger-a", "challenger-b", False),
    ]


def test_a_decision_missing_on_either_side_has_no_agreement(joiner: Joiner) -> None:
    joiner.offer(response("champion"), (Prediction(None, 0.4),))
    [pair] = joiner.offer(response("challenger"), (APPROVE,))
    assert pair.agree is None


def test_a_second_response_of_the_same_inferenceservice_before_the_join_is_a_duplicate(
    joiner: Joiner,
) -> None:
    joiner.offer(response("champion"), (APPROVE,))
    assert joiner.take(response("champion"), (DECLINE,)) == Taken("duplicate")
    assert joiner.pending == 1
    # the first response is the one kept
    [pair] = joiner.offer(response("challenger"), (APPROVE,))
    assert pair.mine == APPROVE
    assert pair.agree is True


@pytest.mark.parametrize("replayed", ["champion", "challenger"])
def test_a_replay_after_the_join_is_a_duplicate(
    joiner: Joiner, clock: Clock, replayed: str
) -> None:
    joiner.offer(response("champion"), (APPROVE,))
    joiner.offer(response("challenger"), (APPROVE,))
    clock.now += 29.0
    assert joiner.take(response(replayed), (APPROVE,)) == Taken("duplicate")


def test_a_forged_flood_of_one_inferenceservice_cannot_add_pairs(joiner: Joiner) -> None:
    joiner.offer(response("champion"), (APPROVE,))
    joiner.offer(response("challenger"), (APPROVE,))
    outcomes = {joiner.take(response("challenger"), (APPROVE,)).outcome for _ in range(1000)}
    assert outcomes == {"duplicate"}


def test_request_events_are_ignored(joiner: Joiner) -> None:
    request = InferenceEvent("req-1", REQUEST_TYPE, "credit", "champion")
    assert joiner.take(request, ()) == Taken("ignored")
    assert joiner.held == 0
    joiner.offer(response("champion"), (APPROVE,))
    assert joiner.take(InferenceEvent("req-1", REQUEST_TYPE, "credit", "challenger"), ()) == (
        Taken("ignored")
    )
    assert joiner.pending == 1


def test_different_namespaces_never_pair(joiner: Joiner) -> None:
    joiner.offer(response("champion", namespace="credit"), (APPROVE,))
    assert joiner.take(response("challenger", namespace="fraud"), (APPROVE,)).outcome == "waiting"
    assert joiner.pending == 2


def test_different_ids_never_pair(joiner: Joiner) -> None:
    joiner.offer(response("champion", "req-1"), (APPROVE,))
    assert joiner.offer(response("challenger", "req-2"), (APPROVE,)) == []


def test_a_predictor_pairs_only_with_a_predictor(joiner: Joiner) -> None:
    joiner.offer(response("champion", component="transformer"), (APPROVE,))
    joiner.offer(response("champion", component="predictor"), (APPROVE,))
    [pair] = joiner.offer(response("challenger", component="predictor"), (APPROVE,))
    assert (pair.isvc, pair.peer) == ("champion", "challenger")


def test_a_response_waiting_longer_than_the_ttl_expires(joiner: Joiner, clock: Clock) -> None:
    joiner.offer(response("champion", "old"), (APPROVE,))
    clock.now += 29.9
    assert joiner.sweep() == 0
    clock.now += 0.1
    taken = joiner.take(response("challenger", "old"), (APPROVE,))
    assert taken == Taken("waiting", (), expired=1)  # its partner came too late: no pair


def test_expiry_counts_only_responses_that_never_paired(joiner: Joiner, clock: Clock) -> None:
    joiner.offer(response("champion", "paired"), (APPROVE,))
    joiner.offer(response("challenger", "paired"), (APPROVE,))
    joiner.offer(response("champion", "alone"), (APPROVE,))
    clock.now += 31
    assert joiner.sweep() == 1
    assert (joiner.held, joiner.pending) == (0, 0)
    # after the TTL the id is forgotten: a replay then waits again (documented limit)
    assert joiner.take(response("challenger", "paired"), (APPROVE,)).outcome == "waiting"


def test_only_the_responses_past_the_ttl_expire(clock: Clock) -> None:
    joiner = Joiner(clock=clock, ttl_seconds=10.0, max_pending=1000)
    for index in range(5):
        joiner.offer(response("champion", f"early-{index}"), (APPROVE,))
    clock.now += 5
    for index in range(5):
        joiner.offer(response("champion", f"late-{index}"), (APPROVE,))
    clock.now += 5
    assert joiner.sweep() == 5
    assert joiner.pending == 5
    [pair] = joiner.offer(response("challenger", "late-3"), (APPROVE,))
    assert pair.event_id == "late-3"


def test_a_full_join_evicts_the_oldest_response(clock: Clock) -> None:
    joiner = Joiner(clock=clock, max_pending=3)
    for event_id in ("a", "b", "c"):
        joiner.offer(response("champion", event_id), (APPROVE,))
    taken = joiner.take(response("champion", "d"), (APPROVE,))
    assert taken == Taken("waiting", (), expired=1)
    assert joiner.held == 3
    assert joiner.offer(response("challenger", "a"), (APPROVE,)) == []  # "a" was evicted
    assert len(joiner.offer(response("challenger", "b"), (APPROVE,))) == 0  # "a" pushed out "b"
    assert len(joiner.offer(response("challenger", "d"), (APPROVE,))) == 1


def test_evicting_a_joined_id_is_not_an_expiry(clock: Clock) -> None:
    joiner = Joiner(clock=clock, max_pending=2)
    joiner.offer(response("champion", "a"), (APPROVE,))
    joiner.offer(response("challenger", "a"), (APPROVE,))
    joiner.offer(response("champion", "b"), (APPROVE,))
    assert joiner.take(response("champion", "c"), (APPROVE,)).expired == 0
    assert joiner.pending == 2


@pytest.mark.parametrize(
    ("ttl", "max_pending", "message"),
    [(0.0, 10, "ttl_seconds must be positive"), (30.0, 0, "max_pending must be at least 1")],
)
def test_limits_are_checked(ttl: float, max_pending: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Joiner(ttl_seconds=ttl, max_pending=max_pending)


def test_concurrent_offers_pair_every_request_exactly_once() -> None:
    joiner = Joiner(max_pending=100_000)
    pairs: list[Pair] = []
    lock = threading.Lock()

    def send(isvc: str) -> None:
        for index in range(2000):
            made = joiner.offer(response(isvc, f"r{index}"), (APPROVE,))
            with lock:
                pairs.extend(made)

    threads = [threading.Thread(target=send, args=(isvc,)) for isvc in ("champion", "challenger")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(pair.event_id for pair in pairs) == sorted(f"r{i}" for i in range(2000))
    assert joiner.pending == 0
