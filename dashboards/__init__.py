"""Server-rendered pages: live board, device pages, reports, stock (issue #7), the page behind a new
user's one-time set-up link (issue #18).

Each page module has a ``router``; :data:`PAGES` lists them and :func:`dashboards.web.install`
mounts them with the shell (sign-in redirect, error page, Plotly bundle)."""

from __future__ import annotations

from dashboards import (
    alarms,
    board,
    confirm,
    devices,
    reports,
    settings,
    setup_password,
    stock,
)

PAGES = (
    alarms,
    confirm,
    board,
    stock,
    devices,
    reports,
    settings,
    setup_password,
)
