"""Standard Webhooks v1 signatures: signing a delivery and verifying one.

PURE: no I/O; the caller passes the raw body bytes as received (never re-serialised JSON),
the headers, the configured secrets and the current time.

A delivery carries ``webhook-id`` (unique per delivery), ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature``: a space-separated list of ``v1,<base64 signature>``
entries, where the signature is HMAC-SHA256 over ``"<id>.<timestamp>.<body>"`` with the key
bytes of a secret written ``whsec_<base64 of the key>``. Several secrets may be active at
once (rotation): a delivery is accepted when any ``v1`` entry matches any of them. Entries
of other versions are ignored. The timestamp must be within :data:`TOLERANCE` of now, in
either direction, so an old delivery cannot be replayed later and a signature for one id
and timestamp does not fit another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = [
    "HEADER_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MIN_KEY_BYTES",
    "TOLERANCE",
    "BadHeader",
    "BadTimestamp",
    "FutureTimestamp",
    "InvalidSecret",
    "MissingHeader",
    "NoMatchingSignature",
    "SignatureError",
    "StaleTimestamp",
    "VerifiedDelivery",
    "parse_secret",
    "sign",
    "verify",
]

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
TOLERANCE = timedelta(seconds=300)
# Standard Webhooks asks for keys of 24 to 64 bytes; shorter keys are refused.
MIN_KEY_BYTES = 24
_PREFIX = "whsec_"
_MAX_ID = 255
_MAX_TIMESTAMP_DIGITS = 20


class InvalidSecret(ValueError):
    """A configured secret is not ``whsec_<base64 key>`` with a long enough key."""


class SignatureError(Exception):
    """The delivery is not proven to come from a holder of a configured secret."""


class MissingHeader(SignatureError):
    def __init__(self, header: str) -> None:
        super().__init__(f"the {header} header is missing or empty")
        self.header = header


class BadHeader(SignatureError):
    """A header is present but not in the form Standard Webhooks prescribes."""


class BadTimestamp(SignatureError):
    pass


class StaleTimestamp(SignatureError):
    pass


class FutureTimestamp(SignatureError):
    pass


class NoMatchingSignature(SignatureError):
    pass


@dataclass(frozen=True, slots=True)
class VerifiedDelivery:
    """A delivery whose signature matched: its id, its time, and which secret matched
    (the index into the configured list, so a rotation can tell when the old one is unused).
    """

    msg_id: str
    timestamp: datetime
    body: bytes = field(repr=False)
    secret_index: int


def parse_secret(secret: str) -> bytes:
    """The key bytes of ``whsec_<base64>``."""
    if not secret.startswith(_PREFIX):
        raise InvalidSecret("a webhook secret is written whsec_<base64 of the key bytes>")
    try:
        key = base64.b64decode(secret[len(_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret("the part after whsec_ is not valid base64") from None
    if len(key) < MIN_KEY_BYTES:
        raise InvalidSecret(
            f"a webhook secret's key must be at least {MIN_KEY_BYTES} bytes, not {len(key)}"
        )
    return key


def _digest(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


_ID_RULE = f"1 to {_MAX_ID} characters without '.', spaces or control characters"


def _valid_id(msg_id: str) -> bool:
    # A '.' in the id would make "id.timestamp.body" ambiguous; whitespace or control
    # characters have no place in a header value we store and compare.
    return 0 < len(msg_id) <= _MAX_ID and not any(c == "." or ord(c) <= 32 for c in msg_id)


def sign(secret: str, msg_id: str, timestamp: int | datetime, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one delivery."""
    key = parse_secret(secret)
    if not _valid_id(msg_id):
        raise ValueError(f"a webhook id must be {_ID_RULE}, not {msg_id!r}")
    seconds = str(_seconds(timestamp))
    return "v1," + base64.b64encode(_digest(key, msg_id, seconds, body)).decode("ascii")


def _seconds(timestamp: int | datetime) -> int:
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            raise ValueError("the timestamp must be timezone-aware")
        return int(timestamp.timestamp())
    return timestamp


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                value = candidate
                break
    if value is None or not value.strip():
        raise MissingHeader(name)
    return value.strip()


def verify(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
    *,
    tolerance: timedelta = TOLERANCE,
) -> VerifiedDelivery:
    """Check one delivery against the active secrets; raise a :class:`SignatureError` if it
    does not hold. ``headers`` may be any mapping (case-insensitive or not); ``body`` is the
    raw request body.
    """
    if not secrets:
        raise InvalidSecret("no webhook secret is configured")
    keys = [parse_secret(s) for s in secrets]
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    msg_id = _header(headers, HEADER_ID)
    if not _valid_id(msg_id):
        raise BadHeader(f"{HEADER_ID} must be {_ID_RULE}")
    raw_timestamp = _header(headers, HEADER_TIMESTAMP)
    signatures = _header(headers, HEADER_SIGNATURE)
    if not raw_timestamp.isascii() or not raw_timestamp.isdigit():
        raise BadTimestamp(f"{HEADER_TIMESTAMP} {raw_timestamp[:40]!r} is not Unix seconds")
    if len(raw_timestamp) > _MAX_TIMESTAMP_DIGITS:
        raise BadTimestamp(f"{HEADER_TIMESTAMP} {raw_timestamp[:40]!r} is out of range")
    seconds = int(raw_timestamp)
    skew = seconds - now.timestamp()
    limit = tolerance.total_seconds()
    if -skew > limit:
        raise StaleTimestamp(
            f"{HEADER_TIMESTAMP} {seconds} is {-skew:.0f} s before now, beyond the {limit:g} s "
            "tolerance"
        )
    if skew > limit:
        raise FutureTimestamp(
            f"{HEADER_TIMESTAMP} {seconds} is {skew:.0f} s after now, beyond the {limit:g} s "
            "tolerance"
        )
    offered: list[bytes] = []
    for entry in signatures.split():
        version, comma, encoded = entry.partition(",")
        if version != "v1" or not comma:
            continue
        try:
            offered.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not offered:
        raise NoMatchingSignature(f"{HEADER_SIGNATURE} holds no v1 signature")
    matched: int | None = None
    for index, key in enumerate(keys):
        # Over the header's own text, as the sender signed it.
        expected = _digest(key, msg_id, raw_timestamp, body)
        for candidate in offered:
            # Every pair is compared, in constant time, whatever matched before.
            if hmac.compare_digest(expected, candidate) and matched is None:
                matched = index
    if matched is None:
        raise NoMatchingSignature(
            "no v1 signature matches the body, id and timestamp under any configured secret"
        )
    sent = datetime.fromtimestamp(seconds, UTC)
    return VerifiedDelivery(msg_id=msg_id, timestamp=sent, body=body, secret_index=matched)
