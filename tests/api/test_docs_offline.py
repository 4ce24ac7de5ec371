"""Issue #18, part 3: ``/api/v1/docs`` works offline.

Swagger UI's script, style sheet and icon come from this server (``/api/v1/docs-static/``, the
files of the installed ``fastapi-offline`` package), never from a CDN; and in Chromium, with every
request that would leave 127.0.0.1 blocked, the page renders the list of operations."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import pytest
from apihelp import api_client, live_server
from browserhelp import browser_page, require_browser

from coldchain.app import DOCS_STATIC

pytestmark = pytest.mark.timeout(120)
TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",)}


class _Refs(HTMLParser):
    """Every URL the page's markup points at."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value is not None]


def _page_urls(html: str) -> list[str]:
    refs = _Refs()
    refs.feed(html)
    # …and the ones its inline script loads (the OpenAPI document).
    return refs.urls + re.findall(r"""\burl:\s*['"]([^'"]+)['"]""", html)


def test_the_docs_page_points_only_at_this_server_and_every_asset_answers(db_url: str) -> None:
    with api_client(db_url) as client:
        page = client.get("/api/v1/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        urls = _page_urls(page.text)
        assert "cdn" not in page.text.lower()
        for url in urls:
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc and url.startswith("/"), url
        assets = [u for u in urls if u.startswith(f"{DOCS_STATIC}/")]
        assert {urlsplit(u).path.rsplit(".", 1)[1] for u in assets} == {"js", "css", "png"}, urls
        assert "/api/v1/openapi.json" in urls
        for url in assets:
            r = client.get(url)
            suffix = "." + url.rsplit(".", 1)[1]
            assert r.status_code == 200, url
            assert r.headers["content-type"].split(";")[0] in TYPES[suffix], (url, r.headers["content-type"])
            assert len(r.content) > 1000
        bundle = client.get(f"{DOCS_STATIC}/swagger-ui-bundle.js").text
        assert "SwaggerUIBundle" in bundle
        assert client.get(f"{DOCS_STATIC}/no-such-file.js").status_code == 404


def test_swagger_ui_renders_the_operations_with_nothing_leaving_the_machine(db_url: str) -> None:
    require_browser()
    left: list[str] = []

    def only_here(route: Any) -> None:
        host = urlsplit(route.request.url).hostname
        if host == "127.0.0.1":
            route.continue_()
        else:  # what a blank page offline would have needed
            left.append(route.request.url)
            route.abort()

    with live_server(db_url) as base, browser_page(base, (1280, 900)) as (page, console):
        page.context.route("**/*", only_here)
        page.goto("/api/v1/docs")
        page.wait_for_selector(".opblock-summary", timeout=30000)
        operations = page.locator(".opblock").count()
        assert operations > 50, operations  # the whole API, not an error box
        assert "存活检查" in page.locator("#swagger-ui").inner_text()
        assert page.locator(".errors-wrapper").count() == 0
        # Opening an operation works too (the UI's own scripts are all there).
        page.locator(".opblock-summary", has_text="存活检查").first.click()
        page.wait_for_selector(".opblock.is-open")
    assert left == [], left
    assert console.problems == [], console.problems
