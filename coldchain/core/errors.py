"""A refusal: what a domain says when it will not do what it was asked, with the HTTP status the
web layer answers with, a stable machine-readable code and a Chinese message a site's staff can
act on.

Why in the core: the domains (registry, alarms, inventory) refuse things themselves — a username
taken, an alarm already closed, stock too low — and the web layer only turns a refusal into the
one error shape (``api/errors.py``); a domain must not import the web layer to say no.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Refused(Exception):
    """A refusal with its HTTP status, stable code and Chinese message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})


def not_found(what: str) -> Refused:
    """Out of jurisdiction and nonexistent look the same, so ids cannot be probed for existence."""
    return Refused(404, "not_found", f"{what}不存在或不在您的辖区内")


def forbidden(message: str) -> Refused:
    return Refused(403, "forbidden", message)


def invalid(message: str, details: Any = None) -> Refused:
    return Refused(422, "invalid", message, details=details)


def conflict(code: str, message: str, details: Any = None) -> Refused:
    return Refused(409, code, message, details=details)
