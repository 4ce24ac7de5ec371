"""Real servers for the tests, and a fresh database for every test that writes.

Each test run makes its own databases on whatever PostgreSQL the chain in
:mod:`coldchain.services` finds (``COLDCHAIN_TEST_DATABASE_URL`` first), and drops them at the
end, so a run never depends on what an earlier run left. A migrated template database is built
once per run; each test gets ``CREATE DATABASE … TEMPLATE`` of it, which takes milliseconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from apihelp import World, api_client, build_world
from dbhelp import DatabaseFactory
from fakewechat import FakeWechat
from fastapi.testclient import TestClient

from coldchain import services
from coldchain.core import db
from coldchain.core.migrate import migrate

# Fixtures shared by several test modules live in plugins, not in test modules.
pytest_plugins = ["alarmhelp", "analysthelp", "formhelp", "ledgerhelp", "tlshelp"]


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("coldchain-state")


@pytest.fixture(scope="session")
def pg_server(state_dir: Path) -> Iterator[services.Started]:
    server = services.find_postgres(os.environ.get("COLDCHAIN_TEST_DATABASE_URL"), state_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def databases(pg_server: services.Started) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(pg_server.url)
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def migrated_template(databases: DatabaseFactory) -> str | None:
    """A migrated database to copy, or None on TimescaleDB, whose background scheduler keeps a
    connection open to every database and so makes it unusable as a template."""
    url = databases.create()
    migrate(url)
    with db.connect(url) as conn:
        if db.storage_path(conn) == "timescaledb":
            return None
    return db.database_name(url)


@pytest.fixture
def empty_db(databases: DatabaseFactory) -> str:
    """A fresh database with nothing in it."""
    return databases.create()


@pytest.fixture
def db_url(databases: DatabaseFactory, migrated_template: str | None) -> str:
    """A fresh, fully migrated database for this test alone."""
    if migrated_template is None:
        url = databases.create()
        migrate(url)
        return url
    return databases.create(template=migrated_template)


@pytest.fixture(scope="session")
def mqtt_broker(state_dir: Path) -> Iterator[services.Started]:
    broker = services.find_mqtt(os.environ.get("COLDCHAIN_TEST_MQTT_URL"), state_dir)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def deploy_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Started]:
    """A Mosquitto of our own with the settings shipped in ingest/mosquitto.conf (unlimited queue
    for an absent persistent client), for the tests where the ingester is away while publishing
    goes on: the machine's broker keeps its default 1000-message queue and would drop the rest."""
    if services.mosquitto_executable() is None:
        pytest.skip("本机没有 mosquitto 可执行文件，无法启动带部署配置的代理")
    broker = services.start_mosquitto(tmp_path_factory.mktemp("deploy-broker"))
    yield broker
    broker.stop()


@pytest.fixture
def wechat() -> Iterator[FakeWechat]:
    """A stand-in for WeChat's API server (tests/fakewechat.py)."""
    fake = FakeWechat()
    yield fake
    fake.close()


@pytest.fixture
def world(db_url: str) -> World:
    """A fresh database holding the small province of tests/apihelp.py."""
    return build_world(db_url)


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    """The API and its pages, in-process, on the world's database (a module that needs other
    settings defines its own ``client``)."""
    with api_client(world.url) as c:
        yield c
