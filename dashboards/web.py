"""The page shell shared by every server-rendered page: templates, sign-in for pages, the error page
and the Plotly bundle served from the package (nothing may be fetched from a CDN at run time, and
WeChat's browser in a township clinic may not reach one anyway).

Pages authenticate with the same session cookie as the API (``api.deps.current_principal``); a
page opened without a session is redirected to ``/login`` instead of getting the API's JSON 401,
because a person, not a program, is on the other end.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote, urlsplit

import jinja2
import plotly
import psycopg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from alarms.queries import open_count
from api.deps import Conn, Principal, current_principal, unit_in_scope
from coldchain.core.errors import Refused
from coldchain.core.terms import BEIJING

PLOTLY_PATH = "/static/plotly.min.js"
API = "/api/v1"

templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _beijing(value: Any, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return "" if value is None else str(value.astimezone(BEIJING).strftime(fmt))


templates.filters["beijing"] = _beijing

router = APIRouter(include_in_schema=False)


class LoginRequired(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class PageError(Exception):
    """A page that cannot be shown, with the reason in Chinese (the HTML twin of ``Refused``)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


def page_principal(request: Request, conn: Conn) -> Principal:
    """The signed-in user of a page, and the number of alarms nobody has acknowledged in their
    jurisdiction: the navigation shows it on every page, and every signed-in page passes here, on
    the page's own connection and transaction, so no page can forget it."""
    try:
        principal = current_principal(request, conn)
    except Refused as exc:
        if exc.status == 401:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(target) from exc
        raise
    request.state.open_alarms = open_count(conn, principal.unit_id)
    return principal


PageUser = Annotated[Principal, Depends(page_principal)]


def scoped_unit(conn: psycopg.Connection, user: Principal, unit_id: int | None) -> int:
    """The unit a page is about: the one asked for if it is in the user's jurisdiction, else the
    user's own; outside the jurisdiction the page is "not found", as in the API."""
    unit = unit_id or user.unit_id
    if not unit_in_scope(conn, user, unit):
        raise PageError(404, "单位不存在或不在您的辖区内")
    return unit


def figure_json(fig: Any) -> dict[str, Any]:
    """A Plotly figure as plain data, for templates to embed with ``|tojson`` (which escapes
    ``</script>`` inside user-entered names, where the figure's own JSON string would not)."""
    data: dict[str, Any] = json.loads(fig.to_json())
    return data


def render(request: Request, name: str, user: Principal | None, *, status: int = 200, **context: Any) -> HTMLResponse:
    """Render a page with what every page needs: the signed-in user for the header, the count of
    open alarms on its badge, the API prefix for the page's own fetches, and whether to load Plotly
    (``plotly=True``)."""
    context.setdefault("plotly", False)
    context.setdefault("nav_open_alarms", getattr(request.state, "open_alarms", None) if user else None)
    html = templates.get_template(name).render(
        request_path=request.url.path, user=user, api=API, plotly_src=PLOTLY_PATH, **context
    )
    return HTMLResponse(html, status_code=status)


BOARD = "/board"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: ``target`` if it is a path on this site, else the board.

    Nothing is cleaned up and then trusted: browsers drop tabs and newlines from a URL and read
    ``\\`` as ``/``, so ``/\t/evil.example`` or ``/\\evil.example`` would leave the site. Refused:
    control characters or backslashes anywhere; anything not starting with exactly
    one ``/``; anything with a scheme or host once parsed — in the form given and in each
    percent-decoded form of it (``%2F%09%2Fevil.example``)."""
    if not target or len(target) > 2000:
        return BOARD
    form = target
    for _ in range(4):  # the raw form and up to three levels of percent-encoding
        if not _same_site_path(form):
            return BOARD
        decoded = unquote(form)
        if decoded == form:
            return target
        form = decoded
    return BOARD  # encoded over and over: nobody's real link


def _same_site_path(path: str) -> bool:
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c == "\\" for c in path):
        return False
    if not path.startswith("/") or path.startswith("//"):
        return False
    parts = urlsplit(path)
    return not parts.scheme and not parts.netloc


@router.get("/", response_class=RedirectResponse)
def home() -> RedirectResponse:
    return RedirectResponse(BOARD, status_code=303)


@router.get("/favicon.ico")
def favicon() -> Response:
    """No icon, but no 404 either: browsers ask on every page, and a 404 is a console error."""
    return Response(status_code=204, headers={"Cache-Control": "public, max-age=604800"})


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", None, next_path=safe_next(next))


@cache
def _plotly_bundle() -> tuple[bytes, bytes, str]:
    raw = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    return raw, gzip.compress(raw, 6), hashlib.sha256(raw).hexdigest()[:16]


@router.get(PLOTLY_PATH)
def plotly_js(request: Request) -> Response:
    """4.8 MB plain, ~1.4 MB gzipped: compressed once per process and cached by the browser, which
    matters on a clinic's mobile connection."""
    raw, packed, etag = _plotly_bundle()
    headers = {"Cache-Control": "public, max-age=604800", "ETag": f'"{etag}"', "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == f'"{etag}"':
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(packed, media_type="text/javascript", headers={**headers, "Content-Encoding": "gzip"})
    return Response(raw, media_type="text/javascript", headers=headers)


def install(app: FastAPI, pages: tuple[Any, ...]) -> None:
    app.include_router(router)
    for module in pages:
        app.include_router(module.router)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/login?next={quote(exc.next_path, safe='')}", status_code=303)

    @app.exception_handler(PageError)
    async def _page_error(request: Request, exc: PageError) -> HTMLResponse:
        return render(request, "error.html", None, status=exc.status, message=exc.message)
