"""Signed JSON webhooks (DC4): the one byte form that is signed, the signature, and its check.

Why its own module: receivers (a city's own duty system) verify with :func:`verify_signature`;
the sender signs with :func:`signed_webhook`. Neither needs anything else of the alarm messages.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "canonical_json", "signed_webhook", "verify_signature"]

TIMESTAMP_HEADER = "X-Coldchain-Timestamp"
SIGNATURE_HEADER = "X-Coldchain-Signature"


def canonical_json(body: Mapping[str, object]) -> bytes:
    """The one byte form of ``body`` that is signed: sorted keys, compact, UTF-8 Chinese as-is.

    No silent conversions (a datetime must be made a string by the caller) and no NaN, which is not
    JSON and which a strict receiver would refuse after the signature had already been checked.
    """
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _signature(body: bytes, secret: bytes, timestamp: int) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signed_webhook(body: Mapping[str, object], secret: bytes, timestamp: int) -> tuple[bytes, dict[str, str]]:
    """Bytes to POST and the headers that let the receiver check them.

    The timestamp is inside the signed text so a captured request cannot be replayed later with a
    fresh timestamp; receivers check it with :func:`verify_signature`.
    """
    if not secret:
        raise ValueError("Webhook 签名密钥不能为空")
    payload = canonical_json(body)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: f"sha256={_signature(payload, secret, timestamp)}",
    }
    return payload, headers


def verify_signature(body: bytes, headers: Mapping[str, str], secret: bytes, now: int, tolerance: int = 300) -> bool:
    """For receivers: true only for the exact bytes, signed with ``secret``, within ``tolerance`` seconds of ``now``.

    Header names are matched case-insensitively (HTTP frameworks differ); any malformed input is
    simply "not verified" rather than an exception, and the comparison is constant-time.
    """
    if not secret:
        return False
    lowered = {name.lower(): value for name, value in headers.items()}
    raw_timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "").strip()
    claimed = lowered.get(SIGNATURE_HEADER.lower(), "").strip()
    if not (raw_timestamp.isascii() and raw_timestamp.isdigit() and len(raw_timestamp) <= 12):
        return False
    if not claimed.startswith("sha256="):
        return False
    timestamp = int(raw_timestamp)
    if abs(now - timestamp) > tolerance:
        return False
    expected = _signature(body, secret, timestamp).encode()
    return hmac.compare_digest(claimed.removeprefix("sha256=").encode("utf-8", "replace"), expected)
