"""Carrying out traffic intents (canary/execution.py): which apiserver answers are retried
with backoff and which fail the intent for good, what a refusal keeps of the apiserver's
answer, and that every write sent again is counted in
``kserve_canary_kube_write_retries_total``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from canary.execution import Execution, Pending, carry_out, retry_delay
from canary.k8s.client import KubeError, NotFound, _error
from canary.metrics import ControllerMetrics
from canary.model import Phase, Revision, RolloutState, SetTraffic, TrafficView
from canary.routing.base import Observed
from tests.unit.test_controller_metrics import value

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
RETRIES = "kserve_canary_kube_write_retries_total"

STATUS_422 = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": 'InferenceService.serving.kserve.io "scorer" is invalid: '
    "spec.predictor.canaryTrafficPercent: Invalid value: 25: must be a multiple of 10",
    "reason": "Invalid",
    "details": {
        "name": "scorer",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: 25: must be a multiple of 10",
                "field": "spec.predictor.canaryTrafficPercent",
            }
        ],
    },
    "code": 422,
}


def status_error(code: int, reason: str, message: str = "refused") -> KubeError:
    body = {"kind": "Status", "code": code, "reason": reason, "message": message}
    return _error(code, json.dumps(body).encode(), "Error")


class Router:
    """Answers each write with the next of ``answers`` (None: written); ``exists`` is
    whether the InferenceService itself can still be read."""

    def __init__(self, *answers: BaseException | None, exists: bool = True) -> None:
        self.answers = list(answers)
        self.exists = exists
        self.sent: list[SetTraffic] = []

    def observe(self, namespace: str, name: str) -> Observed:
        if not self.exists:
            raise NotFound(404, "NotFound", "gone")
        return observed()

    def start(
        self, namespace: str, name: str, storage_uri: str, percent: int, *, resource_version: str
    ) -> Observed:
        raise AssertionError("not used")

    def apply(
        self, namespace: str, name: str, action: SetTraffic, *, resource_version: str | None
    ) -> None:
        self.sent.append(action)
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


def observed() -> Observed:
    view = TrafficView(
        latest=Revision("r2"),
        stable=Revision("r1"),
        split={"r1": 90, "r2": 10},
        spec_percent=10,
        converged=True,
        latest_ready=True,
    )
    return Observed("fraud", "scorer", view, "uid-1", 3, "41", "Knative", "s3://m/v2")


def state() -> RolloutState:
    return RolloutState(
        rollout_id="ro-1",
        namespace="fraud",
        name="scorer",
        policy="default",
        phase=Phase.PROGRESSING,
        canary=Revision("r2"),
        stable=Revision("r1"),
        created_at=T0,
        phase_entered_at=T0,
        target_percent=25,
    )


def run(
    router: Router,
    purpose: str = "step",
    attempts: int = 1,
    last_error: str | None = None,
    metrics: ControllerMetrics | None = None,
) -> Execution:
    percent = 0 if purpose == "rollback" else 25
    pending = Pending("c-1", "r2", percent, purpose, attempts, last_error)  # type: ignore[arg-type]
    counter = metrics.record_kube_write_retry if metrics is not None else None
    return carry_out(router, state(), "knative", [pending], observed(), lambda: T0, retried=counter)


# --- what the apiserver said ------------------------------------------------------------------


def test_a_status_answer_keeps_its_reason_message_and_field_causes() -> None:
    error = _error(422, json.dumps(STATUS_422).encode(), "Unprocessable Entity")
    assert (error.status, error.reason) == (422, "Invalid")
    assert error.message == STATUS_422["message"]
    assert error.causes == (
        "spec.predictor.canaryTrafficPercent: Invalid value: 25: must be a multiple of 10",
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html><body>422 rejected by policy proxy</body></html>", id="html"),
        pytest.param(b'"rejected by policy proxy"', id="a-json-string"),
        pytest.param(b'{"error": "rejected by policy proxy"}', id="json-but-not-a-status"),
    ],
)
def test_a_refusal_whose_body_is_not_a_status_keeps_the_body_as_its_message(body: bytes) -> None:
    error = _error(422, body, "Unprocessable Entity")
    assert (error.status, error.reason) == (422, "Unprocessable Entity")
    assert "rejected by policy proxy" in error.message
    assert error.causes == ()
    execution = run(Router(error))
    (result,) = execution.results
    assert result.outcome == "failed"
    assert result.refusal is not None
    assert "rejected by policy proxy" in result.refusal.message


# --- refused for good, or tried again ---------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (400, "BadRequest"),
        (403, "Forbidden"),
        (404, "NotFound"),
        (405, "MethodNotAllowed"),
        (413, "RequestEntityTooLarge"),
        (415, "UnsupportedMediaType"),
        (422, "Invalid"),
    ],
)
def test_a_refusal_for_good_fails_the_intent_with_the_apiservers_answer(
    code: int, reason: str
) -> None:
    execution = run(Router(status_error(code, reason, "no, and not later either")))
    (result,) = execution.results
    assert result.outcome == "failed"
    assert result.refusal is not None
    assert (result.refusal.status, result.refusal.reason) == (code, reason)
    assert "no, and not later either" in result.reason
    assert execution.remaining == ()
    assert execution.retry_at is None


def test_the_evidence_of_a_422_names_the_fields() -> None:
    error = _error(422, json.dumps(STATUS_422).encode(), "Unprocessable Entity")
    (result,) = run(Router(error)).results
    assert result.refusal is not None
    evidence = result.refusal.evidence()
    assert evidence["status"] == 422
    assert evidence["api_reason"] == "Invalid"
    assert evidence["causes"] == [
        "spec.predictor.canaryTrafficPercent: Invalid value: 25: must be a multiple of 10"
    ]


@pytest.mark.parametrize(
    ("code", "reason"),
    [(409, "Conflict"), (429, "TooManyRequests"), (500, "InternalError"), (503, "Unavailable")],
)
def test_conflicts_throttling_and_server_errors_are_tried_again_with_backoff(
    code: int, reason: str
) -> None:
    execution = run(Router(status_error(code, reason)), attempts=3)
    assert execution.results == ()
    (again,) = execution.remaining
    assert again.attempts == 3
    assert reason in (again.last_error or "")
    assert execution.retry_at == T0 + timedelta(seconds=4)
    assert execution.rejected == ()


def test_a_lost_connection_is_tried_again() -> None:
    lost = KubeError(0, "Unavailable", "ConnectionResetError: connection reset by peer")
    execution = run(Router(lost))
    assert [p.correlation_id for p in execution.remaining] == ["c-1"]


def test_a_404_of_the_inference_service_itself_abandons_the_write() -> None:
    execution = run(Router(status_error(404, "NotFound"), exists=False))
    (result,) = execution.results
    assert (result.outcome, result.reason) == ("abandoned", "the InferenceService is gone")


def test_a_refused_rollback_stays_pending_and_is_reported_when_its_answer_changes() -> None:
    refusal = status_error(403, "Forbidden", "admission webhook denied the request")
    first = run(Router(refusal), purpose="rollback")
    assert first.results == ()
    (kept,) = first.remaining
    (rejected,) = first.rejected
    assert rejected.changed
    assert rejected.refusal.status == 403
    assert first.retry_at == T0 + timedelta(seconds=1)

    again = run(Router(refusal), purpose="rollback", attempts=2, last_error=kept.last_error)
    (rejected,) = again.rejected
    assert not rejected.changed, "the same answer again is not reported again"
    assert again.retry_at == T0 + timedelta(seconds=2)


def test_backoff_doubles_to_thirty_seconds() -> None:
    delays = [retry_delay(n).total_seconds() for n in (1, 2, 3, 4, 5, 6, 40)]
    assert delays == [1, 2, 4, 8, 16, 30, 30]


# --- counting writes sent again --------------------------------------------------------------


def test_a_first_time_success_is_not_a_retry() -> None:
    metrics = ControllerMetrics()
    execution = run(Router(None), metrics=metrics)
    assert [r.outcome for r in execution.results] == ["applied"]
    assert value(metrics, RETRIES) == 0


def test_every_write_sent_again_is_counted() -> None:
    metrics = ControllerMetrics()
    conflict = status_error(409, "Conflict")
    router = Router(conflict, conflict, None)
    execution = run(router, metrics=metrics)  # attempt 1: refused, not a retry yet
    for _ in range(2):
        (pending,) = execution.remaining
        claimed = Pending(
            pending.correlation_id, pending.revision, pending.percent, pending.purpose,
            pending.attempts + 1, pending.last_error,
        )  # fmt: skip
        execution = carry_out(
            router, state(), "knative", [claimed], observed(), lambda: T0,
            retried=metrics.record_kube_write_retry,
        )  # fmt: skip
    assert [r.outcome for r in execution.results] == ["applied"]
    assert len(router.sent) == 3
    assert value(metrics, RETRIES) == 2
