"""Schemathesis fuzzes every operation of the OpenAPI document against the real database:
whatever a client sends, the answer is never a server error. Examples per operation are bounded
(``COLDCHAIN_FUZZ_EXAMPLES``, default 25) so the suite stays within CI's budget; raise it for a
longer hunt.

The application is entered once (one connection pool for the module) and driven through
schemathesis's requests transport with a requests-style ASGI client, signed in as the
province's system administrator so that ids resolve and writes get past authorisation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from apihelp import PASSWORD, build_world
from dbhelp import DatabaseFactory
from fakewechat import FakeWechat
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.transports import RequestsTransport
from starlette_testclient import TestClient

from coldchain.app import create_app
from coldchain.core.migrate import migrate
from coldchain.core.settings import load_settings

EXAMPLES = int(os.environ.get("COLDCHAIN_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def fuzz_target(databases: DatabaseFactory, migrated_template: str | None) -> Iterator[dict[str, Any]]:
    # On whichever path the test server offers: a copy of the migrated template, or, on TimescaleDB
    # (which cannot be a template, see conftest.py), a database migrated for this module.
    url = databases.create(template=migrated_template)
    if migrated_template is None:
        migrate(url)
    build_world(url)
    wechat = FakeWechat()  # WeChat configured, so its routes run through (random codes are refused)
    app = create_app(load_settings(wechat.env), url, pool_size=4)
    with TestClient(app) as client:
        r = client.post("/api/v1/auth/token", json={"username": "sa_P", "password": PASSWORD})
        assert r.status_code == 200, r.text
        yield {"app": app, "client": client, "headers": {"Authorization": f"Bearer {r.json()['access_token']}"}}
    wechat.close()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_target: dict[str, Any]) -> Any:
    # FastAPI writes OpenAPI 3.1 (nullable as anyOf […, null]); schemathesis 3 reads it behind this flag.
    schemathesis.experimental.OPEN_API_3_1.enable()
    return schemathesis.from_dict(fuzz_target["app"].openapi())


schema = schemathesis.from_pytest_fixture("fuzz_schema")


class _RawBytes:
    """The certificate upload takes the file as the raw body: send whatever was generated, as bytes."""

    def as_requests(self, context: Any, value: Any) -> dict[str, Any]:
        return {"data": value if isinstance(value, bytes) else str(value).encode()}

    def as_werkzeug(self, context: Any, value: Any) -> dict[str, Any]:
        return self.as_requests(context, value)


for _media_type in ("image/jpeg", "image/png", "application/pdf"):
    schemathesis.serializer(_media_type)(_RawBytes)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    # data_too_large: the schema, not the test, sizes the inputs (a receipt may carry many lines of
    # codes); hypothesis 6.170 refuses to go on when most draws are that large.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
    derandomize=True,
)
def test_no_input_makes_a_server_error(case: Any, fuzz_target: dict[str, Any]) -> None:
    headers = dict(fuzz_target["headers"])
    if case.path.startswith("/api/v1/auth/logout"):
        return  # would sign the fuzzer itself out; covered by tests/api/test_auth.py
    response = RequestsTransport().send(
        case, session=fuzz_target["client"], base_url="http://testserver", headers=headers
    )
    case.validate_response(response, checks=(not_a_server_error,))
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"], body
