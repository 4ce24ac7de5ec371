"""A small province for the API tests, its users, and signing in as any of them.

Tree (parent links as in Shaanxi, 韩城 reporting straight to the province):

    P 陕西省疾控 ─┬─ C1 西安市疾控 ── K1 雁塔区疾控 ── T1 电子城社区卫生服务中心
                 ├─ C2 渭南市疾控 ── K2 临渭区疾控 ── T2 向阳街道卫生院
                 └─ K3 韩城市疾控 ── T3 龙门镇卫生院

Users are named ``<role>_<unit>``: sa_P, ba_P, sup_P, ana_P, sa_C1, ba_C1, sa_K1, ba_K1, ana_K1,
ba_T1, sa_C2, ba_C2, sa_K2, ba_K2, ba_T2, sa_K3, ba_K3, ba_T3; all with :data:`PASSWORD`.
Each township has a two-zone fridge (冷藏 probe x8601, 冷冻 probe x8604, gateway x0001), a spare
probe x8602 in stock, and a few readings.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import uvicorn
from dbhelp import as_runtime
from fastapi.testclient import TestClient

from api.deps import CSRF_HEADER
from coldchain.app import create_app
from coldchain.core import db
from coldchain.core.settings import load_settings
from registry.auth import hash_password

PASSWORD = "Test@Pass2026"
BOUND_FROM = datetime(2026, 1, 1, tzinfo=UTC)

_UNITS = [
    # key, code, name, level, parent key
    ("P", "6100000000", "陕西省疾病预防控制中心", "province", None),
    ("C1", "6101000000", "西安市疾病预防控制中心", "city", "P"),
    ("K1", "6101130000", "雁塔区疾病预防控制中心", "county", "C1"),
    ("T1", "6101130001", "电子城街道社区卫生服务中心", "township", "K1"),
    ("C2", "6105000000", "渭南市疾病预防控制中心", "city", "P"),
    ("K2", "6105020000", "临渭区疾病预防控制中心", "county", "C2"),
    ("T2", "6105020001", "向阳街道卫生院", "township", "K2"),
    ("K3", "6105810000", "韩城市疾病预防控制中心", "county", "P"),
    ("T3", "6105810001", "龙门镇卫生院", "township", "K3"),
]
_USERS = [
    ("sa", "system_admin", ["P", "C1", "K1", "C2", "K2", "K3"]),
    ("ba", "business_admin", ["P", "C1", "K1", "T1", "C2", "K2", "T2", "K3", "T3"]),
    ("sup", "supervisor", ["P"]),
    ("ana", "analyst", ["P", "K1"]),
]
_SITE_SERIALS = {"T1": "1", "T2": "2", "T3": "3"}


@dataclass
class World:
    url: str
    units: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    equipment: dict[str, int] = field(default_factory=dict)  # by site key
    compartments: dict[str, int] = field(default_factory=dict)  # "T1/冷藏", "T1/冷冻"
    gateways: dict[str, int] = field(default_factory=dict)  # by serial
    probes: dict[str, int] = field(default_factory=dict)  # by serial
    bindings: dict[str, int] = field(default_factory=dict)  # by probe serial


@cache
def _password_hash() -> str:
    return hash_password(PASSWORD)


def build_world(url: str, *, readings: bool = True) -> World:
    """``readings=False``: no readings at all (alarm tests build their own time lines)."""
    w = World(url)
    with db.connect(url) as conn:
        for key, code, name, level, parent in _UNITS:
            row = conn.execute(
                "INSERT INTO units (code, name, level, parent_id) VALUES (%s, %s, %s, %s) RETURNING id",
                (code, name, level, w.units[parent] if parent else None),
            ).fetchone()
            assert row
            w.units[key] = row[0]
        for prefix, role, keys in _USERS:
            for key in keys:
                username = f"{prefix}_{key}"
                row = conn.execute(
                    """INSERT INTO users (username, real_name, phone, unit_id, role, password_hash)
                       VALUES (%s, %s, '13800000000', %s, %s, %s) RETURNING id""",
                    (username, f"测试{username}", w.units[key], role, _password_hash()),
                ).fetchone()
                assert row
                w.users[username] = row[0]
        for site, digit in _SITE_SERIALS.items():
            unit = w.units[site]
            eq = conn.execute(
                """INSERT INTO equipment (unit_id, kind, name, brand)
                   VALUES (%s, 'fridge', '海尔双温冰箱', '海尔') RETURNING id""",
                (unit,),
            ).fetchone()
            assert eq
            w.equipment[site] = eq[0]
            gw_serial = f"{digit}0001"
            gw = conn.execute(
                """INSERT INTO gateways (serial, unit_id, vendor, installed_on, warranty_end)
                   VALUES (%s, %s, '精创', '2024-01-01', current_date + 20) RETURNING id""",
                (gw_serial, unit),
            ).fetchone()
            assert gw
            w.gateways[gw_serial] = gw[0]
            for zone, mode, probe_tail in (("冷藏", "refrigerated", "8601"), ("冷冻", "frozen", "8604")):
                comp = conn.execute(
                    "INSERT INTO compartments (equipment_id, name, mode) VALUES (%s, %s, %s) RETURNING id",
                    (eq[0], zone, mode),
                ).fetchone()
                assert comp
                w.compartments[f"{site}/{zone}"] = comp[0]
                serial = f"{digit}0{probe_tail}"
                probe = conn.execute(
                    """INSERT INTO probes (serial, unit_id, vendor, installed_on, warranty_end)
                       VALUES (%s, %s, '精创', '2024-01-01', current_date + 400) RETURNING id""",
                    (serial, unit),
                ).fetchone()
                assert probe
                w.probes[serial] = probe[0]
                binding = conn.execute(
                    """INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid)
                       VALUES (%s, %s, %s, tstzrange(%s, NULL)) RETURNING id""",
                    (probe[0], comp[0], gw[0], BOUND_FROM),
                ).fetchone()
                assert binding
                w.bindings[serial] = binding[0]
                for minutes in (10, 20, 30) if readings else ():
                    conn.execute(
                        "INSERT INTO probe_readings (probe_id, ts, t) VALUES (%s, now() - %s, %s)",
                        (probe[0], timedelta(minutes=minutes), 4.5 if mode == "refrigerated" else -20.0),
                    )
            spare = conn.execute(
                """INSERT INTO probes (serial, unit_id, vendor, status, warranty_end)
                   VALUES (%s, %s, '精创', 'in_stock', current_date + 10) RETURNING id""",
                (f"{digit}08602", unit),
            ).fetchone()
            assert spare
            w.probes[f"{digit}08602"] = spare[0]
        conn.commit()
    return w


@contextmanager
def api_client(url: str, env: dict[str, str] | None = None) -> Iterator[TestClient]:
    """``env``: COLDCHAIN_* settings for this app (the process environment is not read)."""
    app = create_app(load_settings(env or {}), as_runtime(url), pool_size=4)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def bearer(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    """Headers of an API client signed in as ``username``."""
    r = client.post("/api/v1/auth/token", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def web_session(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    """Signs the client's cookie jar in; returns the CSRF header its writes must carry."""
    r = client.post("/api/v1/auth/session", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {CSRF_HEADER: r.json()["csrf_token"]}


def error_code(response: Any) -> str:
    body = response.json()
    assert "error" in body, body
    return str(body["error"]["code"])


@contextmanager
def live_server(url: str) -> Iterator[str]:
    """The whole app on 127.0.0.1 in a background thread; yields its base address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(load_settings({}), as_runtime(url), pool_size=4)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
