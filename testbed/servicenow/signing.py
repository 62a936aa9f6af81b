"""The simulator's own Standard Webhooks v1 signer (SERVICENOW.md §7).

It plays the customer's business rule that POSTs the approval callback. It is written
independently of the product's verifier on purpose: the two implementations check each
other in the integration tests. Secrets are ``whsec_<base64 of the key bytes>``; the
signature is ``v1,<base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>"))>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

__all__ = ["SECRET_PREFIX", "headers", "key_of", "new_message_id", "new_secret", "signature"]

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


def key_of(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret; ValueError if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError(
            f"the webhook secret is not valid base64 after the prefix: {exc}"
        ) from None
    if not key:
        raise ValueError("the webhook secret has an empty key")
    return key


def new_secret(size: int = 32) -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(size)).decode("ascii")


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` under ``secret``."""
    signed = message_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(key_of(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secrets_: list[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers; with several secrets (a rotation), the signature
    header lists one signature per secret, separated by spaces."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, message_id, timestamp, body) for s in secrets_),
    }
