"""Standard Webhooks v1 signatures as a receiver meets them: genuine deliveries pass, and a
forged body, a wrong or retired secret, a stale or future timestamp, missing or malformed
headers, and a signature moved onto another delivery are each refused with their own error.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from approvals.signatures import (
    BadHeader,
    BadTimestamp,
    FutureTimestamp,
    InvalidSecret,
    MissingHeader,
    NoMatchingSignature,
    SignatureError,
    StaleTimestamp,
    sign,
    verify,
)

OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"x" * 32).decode()
NOW = datetime(2026, 12, 5, 17, 0, 0, tzinfo=UTC)
TS = int(NOW.timestamp())
MSG = "msg_2b8Yq0aZ"
BODY = b'{"type": "change.approval", "change": {"sys_id": "0123", "approval": "approved"}}'

# The published test vector of the Standard Webhooks reference libraries
# (standard-webhooks/standard-webhooks, libraries/go/webhook_test.go, TestWebhookSign):
# key, id, timestamp and payload below, and the signature they give.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(
    signature: str | None = None, *, msg_id: str = MSG, timestamp: int | str = TS
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature if signature is not None else sign(OLD, MSG, TS, BODY),
    }


Case = tuple[list[str], dict[str, str], bytes, datetime]


def case(
    secrets: list[str] | None = None,
    hdrs: dict[str, str] | None = None,
    body: bytes = BODY,
    now: datetime = NOW,
) -> Case:
    return (secrets if secrets is not None else [OLD], hdrs or headers(), body, now)


def without(name: str) -> dict[str, str]:
    h = headers()
    del h[name]
    return h


ACCEPTED: list[tuple[str, Case, int]] = [
    ("genuine", case(), 0),
    ("signed with the new secret while both are active", case(
        [OLD, NEW], headers(sign(NEW, MSG, TS, BODY))), 1),
    ("signed with the old secret while both are active", case([OLD, NEW]), 0),
    ("sender signs with both during rotation", case(
        [NEW], headers(f"{sign(OLD, MSG, TS, BODY)} {sign(NEW, MSG, TS, BODY)}")), 0),
    ("other versions and junk entries are ignored", case(
        hdrs=headers(f"v2,AAAA v1a,zz v1,!!notb64 {sign(OLD, MSG, TS, BODY)}")), 0),
    ("299 s old", case(now=NOW + timedelta(seconds=299)), 0),
    ("exactly 300 s old", case(now=NOW + timedelta(seconds=300)), 0),
    ("300 s ahead of our clock", case(now=NOW - timedelta(seconds=300)), 0),
    ("headers in another case", case(hdrs={k.title(): v for k, v in headers().items()}), 0),
    ("published test vector", (
        [VECTOR_SECRET],
        headers(VECTOR_SIGNATURE, msg_id=VECTOR_ID, timestamp=VECTOR_TIMESTAMP),
        VECTOR_BODY,
        datetime.fromtimestamp(VECTOR_TIMESTAMP + 10, UTC),
    ), 0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("label", "delivery", "secret_index"),
    [pytest.param(*a, id=a[0]) for a in ACCEPTED],
)
def test_genuine_deliveries_are_accepted(label: str, delivery: Case, secret_index: int) -> None:
    secrets, hdrs, body, now = delivery
    verified = verify(secrets, hdrs, body, now)
    assert verified.msg_id == hdrs.get("webhook-id", hdrs.get("Webhook-Id"))
    assert verified.body == body
    assert verified.secret_index == secret_index
    assert abs(verified.timestamp - now) <= timedelta(seconds=300)


def test_published_vector_is_what_we_sign() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    when = datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC)
    assert sign(VECTOR_SECRET, VECTOR_ID, when, VECTOR_BODY) == VECTOR_SIGNATURE


REFUSED: list[tuple[str, Case, type[SignatureError], str]] = [
    ("forged body", case(body=BODY.replace(b"approved", b"rejected")),
     NoMatchingSignature, "no v1 signature matches"),
    ("body re-serialised (spacing differs)", case(body=BODY.replace(b": ", b":")),
     NoMatchingSignature, "no v1 signature matches"),
    ("wrong secret", case([OTHER]), NoMatchingSignature, "no v1 signature matches"),
    ("old secret after it was removed", case([NEW]), NoMatchingSignature, "no v1"),
    ("stale: 301 s old", case(now=NOW + timedelta(seconds=301)), StaleTimestamp, "before now"),
    ("stale: a day old", case(now=NOW + timedelta(days=1)), StaleTimestamp, "before now"),
    ("future: 301 s ahead", case(now=NOW - timedelta(seconds=301)), FutureTimestamp,
     "after now"),
    ("replay onto a fresh timestamp", case(
        hdrs=headers(timestamp=TS + 60), now=NOW + timedelta(seconds=60)),
     NoMatchingSignature, "no v1 signature matches"),
    ("replay onto another delivery id", case(hdrs=headers(msg_id="msg_other")),
     NoMatchingSignature, "no v1 signature matches"),
    ("missing webhook-id", case(hdrs=without("webhook-id")), MissingHeader, "webhook-id"),
    ("missing webhook-timestamp", case(hdrs=without("webhook-timestamp")), MissingHeader,
     "webhook-timestamp"),
    ("missing webhook-signature", case(hdrs=without("webhook-signature")), MissingHeader,
     "webhook-signature"),
    ("empty webhook-signature", case(hdrs=headers("  ")), MissingHeader, "webhook-signature"),
    ("timestamp in milliseconds", case(hdrs=headers(timestamp=TS * 1000)), FutureTimestamp,
     "after now"),
    ("timestamp not a number", case(hdrs=headers(timestamp="yesterday")), BadTimestamp,
     "not Unix seconds"),
    ("negative timestamp", case(hdrs=headers(timestamp="-5")), BadTimestamp, "not Unix"),
    ("fractional timestamp", case(hdrs=headers(timestamp=f"{TS}.5")), BadTimestamp,
     "not Unix seconds"),
    ("huge timestamp", case(hdrs=headers(timestamp="9" * 40)), BadTimestamp, "out of range"),
    ("id with a dot", case(hdrs=headers(msg_id="msg.1")), BadHeader, "webhook-id"),
    ("only other versions", case(hdrs=headers("v2," + sign(OLD, MSG, TS, BODY)[3:])),
     NoMatchingSignature, "holds no v1 signature"),
    ("v1 entry without a comma", case(hdrs=headers("v1" + sign(OLD, MSG, TS, BODY)[3:])),
     NoMatchingSignature, "holds no v1 signature"),
    ("truncated signature", case(hdrs=headers(sign(OLD, MSG, TS, BODY)[:-8] + "AAAAAAA=")),
     NoMatchingSignature, "no v1 signature matches"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("label", "delivery", "error", "message"),
    [pytest.param(*a, id=a[0]) for a in REFUSED],
)
def test_bad_deliveries_are_refused(
    label: str, delivery: Case, error: type[SignatureError], message: str
) -> None:
    secrets, hdrs, body, now = delivery
    with pytest.raises(error, match=message):
        verify(secrets, hdrs, body, now)


# A correct signature does not save a delivery from the tolerance: a sender whose timestamps
# are in milliseconds, or an old delivery signed correctly, are both refused.
@pytest.mark.parametrize(
    ("timestamp", "error"), [(TS * 1000, FutureTimestamp), (TS - 3600, StaleTimestamp)]
)
def test_tolerance_applies_to_correct_signatures(
    timestamp: int, error: type[SignatureError]
) -> None:
    signed = headers(sign(OLD, MSG, timestamp, BODY), timestamp=timestamp)
    with pytest.raises(error, match="beyond the 300 s tolerance"):
        verify([OLD], signed, BODY, NOW)


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ([], "no webhook secret is configured"),
        (["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "whsec_"),
        (["whsec_not base64!"], "not valid base64"),
        (["whsec_" + base64.b64encode(b"short").decode()], "at least 24 bytes, not 5"),
        ([OLD, "whsec_"], "at least 24 bytes, not 0"),
    ],
)
def test_misconfigured_secrets_are_a_configuration_error(secrets: list[str], message: str) -> None:
    with pytest.raises(InvalidSecret, match=message):
        verify(secrets, headers(), BODY, NOW)
    assert not issubclass(InvalidSecret, SignatureError)


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify([OLD], headers(), BODY, NOW.replace(tzinfo=None))


@pytest.mark.parametrize(
    "call",
    [
        lambda: sign(OLD, "msg.1", TS, BODY),
        lambda: sign(OLD, "", TS, BODY),
        lambda: sign(OLD, MSG, NOW.replace(tzinfo=None), BODY),
    ],
    ids=["dot in id", "empty id", "naive time"],
)
def test_sign_refuses_what_verify_would_refuse(call: Callable[[], str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each message is checked above
        call()


@given(body=st.binary(max_size=2048), data=st.data())
def test_round_trip_and_any_flipped_bit_fails(body: bytes, data: st.DataObject) -> None:
    signature = sign(NEW, MSG, TS, body)
    assert verify([OLD, NEW], headers(signature), body, NOW).secret_index == 1

    message = f"{MSG}.{TS}.".encode() + body
    bit = data.draw(st.integers(0, len(message) * 8 - 1), label="bit")
    flipped = bytearray(message)
    flipped[bit // 8] ^= 1 << (bit % 8)
    # Flip the bit in whichever part it falls (the id, the timestamp or the body) and hand
    # the receiver those three parts.
    head, _, rest = bytes(flipped).partition(b".")
    stamp, _, new_body = rest.partition(b".")
    try:
        msg_id, timestamp = head.decode(), stamp.decode()
    except UnicodeDecodeError:
        assume(False)  # not a header value anyone could send
    with pytest.raises(SignatureError):
        verify([NEW], headers(signature, msg_id=msg_id, timestamp=timestamp), new_body, NOW)


@given(body=st.binary(max_size=512), bit=st.integers(0, 255))
def test_a_flipped_bit_in_the_signature_fails(body: bytes, bit: int) -> None:
    raw = bytearray(base64.b64decode(sign(NEW, MSG, TS, body)[3:]))
    raw[bit // 8] ^= 1 << (bit % 8)
    tampered = "v1," + base64.b64encode(bytes(raw)).decode()
    with pytest.raises(NoMatchingSignature):
        verify([NEW], headers(tampered), body, NOW)
