"""The login page's ``next`` is never an open redirect (issue #15): after signing in, the page
goes to ``next`` only when it is a path on this site, judged as a browser would read it — tabs
and newlines dropped, ``\\`` read as ``/``, percent-encoding undone — and to the board otherwise.

The page sends the browser on with ``location.href = <next>``; the tests read that value from
the page and resolve it the way a browser's URL parser does, and the result must stay on the
site whatever the attacker's link said."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import quote, urljoin, urlsplit

import pytest
from apihelp import api_client
from dbhelp import DatabaseFactory
from fastapi.testclient import TestClient

from coldchain.core.migrate import migrate
from dashboards.web import safe_next

BASE = "http://testserver"

# The query string of an attacker's link: ?next=<this>, exactly as it would be typed.
BYPASSES = [
    "%2F%09%2Fevil.example%2Fx",  # the reported one: "/\t/evil.example/x" → //evil.example/x
    "%2F%0A%2Fevil.example%2Fx",
    "%2F%0D%2Fevil.example%2Fx",
    "/%09/evil.example/x",
    "%09//evil.example/x",
    "//evil.example/x",
    "%2F%2Fevil.example%2Fx",
    "///evil.example/x",
    "/%5Cevil.example/x",  # "/\evil.example": browsers read \ as /
    "%5C%5Cevil.example/x",
    "%2F%5C%2Fevil.example",
    "/%5C/evil.example",
    "https://evil.example/x",
    "https:%2F%2Fevil.example%2Fx",
    "http:evil.example",
    "HTTPS://evil.example",
    "javascript:alert(document.cookie)",
    "evil.example/x",
    "%20//evil.example/x",
    "/%252F%252Fevil.example",  # "/%2F%2Fevil.example", and decoded once more "///evil.example"
    "%2F%2509%2Fevil.example",  # "/%09/evil.example", and decoded "/\t/evil.example"
    "/%00/evil.example",
    "/%7F/evil.example",
    "/%C2%85/evil.example",  # a C1 control (NEL)
    "%2F%25255C%2Fevil.example",  # encoded three times over
    "",
]
SAME_SITE = [
    "/board",
    "/alarms/42",
    "/devices/7?tab=history",
    "/reports/monthly?unit_id=3&month=2026-11",
    "/stock?q=乙肝 疫苗",
    "/board?next=https://evil.example",  # a query that names a site is still a path here
]


@pytest.fixture(scope="module")
def client(databases: DatabaseFactory, migrated_template: str | None) -> Iterator[TestClient]:
    """One app for the whole module: the login page reads nothing from the database."""
    if migrated_template is None:
        url = databases.create()
        migrate(url)
    else:
        url = databases.create(template=migrated_template)
    with api_client(url) as c:
        yield c


def _next_of(client: TestClient, raw_query_value: str) -> str:
    page = client.get(f"/login?next={raw_query_value}")
    assert page.status_code == 200, page.text
    found = re.search(r"location\.href = (\".*?\");", page.text)
    assert found, page.text
    value: str = json.loads(found.group(1))
    return value


def _as_a_browser_goes(value: str) -> tuple[str, str]:
    """(scheme, host) a browser ends at after ``location.href = value`` on the login page: the URL
    parser strips leading and trailing C0 controls and spaces, removes tabs and newlines anywhere,
    and treats a backslash as a slash in http(s) URLs."""
    cleaned = value.strip("".join(chr(c) for c in range(0x21))).replace("\t", "").replace("\n", "").replace("\r", "")
    parts = urlsplit(urljoin(f"{BASE}/login", cleaned.replace("\\", "/")))
    return parts.scheme, parts.netloc


@pytest.mark.parametrize("raw", BYPASSES)
def test_a_link_elsewhere_ends_on_the_board(client: TestClient, raw: str) -> None:
    value = _next_of(client, raw)
    assert value == "/board"
    assert _as_a_browser_goes(value) == ("http", "testserver")


@pytest.mark.parametrize("path", SAME_SITE)
def test_a_path_on_this_site_is_kept(client: TestClient, path: str) -> None:
    value = _next_of(client, quote(path, safe=""))
    assert value == path
    assert _as_a_browser_goes(value) == ("http", "testserver")


def test_the_sign_in_redirect_carries_the_page_asked_for() -> None:
    assert safe_next("/alarms/5?x=1") == "/alarms/5?x=1"
    for hostile in ("/\t/evil.example/x", "/\\evil.example", "//evil.example", "/\x00/e", None):
        assert safe_next(hostile) == "/board"


def test_an_unsigned_page_sends_to_login_with_a_safe_next(client: TestClient) -> None:
    r = client.get("/alarms/42?view=full", follow_redirects=False)
    assert r.status_code == 303
    location = r.headers["location"]
    assert location.startswith("/login?next=")
    assert _next_of(client, location.split("next=", 1)[1]) == "/alarms/42?view=full"
