"""Supervisors and analysts never write (RS1): one rule, enforced once for every route.

:func:`refuse_read_only_writes` is a dependency of every API router (``api/app.py``): a
POST / PUT / PATCH / DELETE by a read-only role is refused with 403 ``forbidden`` before the
route runs — before its body is even validated — so no route can forget the check. The few
writes a read-only user may make are marked on the route with :func:`open_to_read_only` and the
reason, which the OpenAPI document shows as ``x-read-only-roles``: signing in and out, their own
password and WeChat binding, the link from a WeChat message (its token is the authority), and a
scan lookup that is a POST only because of its body. ``tests/api/test_read_only_roles.py`` walks
the OpenAPI document and tries every other write as each read-only role.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from api.deps import SAFE_METHODS, Conn, current_principal, require_writer

READ_ONLY_MAY = "x-read-only-roles"


def open_to_read_only(reason: str) -> dict[str, Any]:
    """``openapi_extra`` of a write that read-only roles may make too, with the reason."""
    return {READ_ONLY_MAY: reason}


def refuse_read_only_writes(request: Request, conn: Conn) -> None:
    if request.method in SAFE_METHODS:
        return
    extra = getattr(request.scope.get("route"), "openapi_extra", None) or {}
    if READ_ONLY_MAY in extra:
        return
    require_writer(current_principal(request, conn))
