"""``coldchain admin create``: the platform makes a unit's system administrator (UM1)."""

from __future__ import annotations

import os
import subprocess
import sys

from apihelp import api_client, build_world, error_code
from dbhelp import as_runtime


def _run(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coldchain.cli", "admin", "create", *args],
        env={**os.environ, "COLDCHAIN_DATABASE_URL": as_runtime(db_url)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_platform_creates_a_system_admin_who_sets_a_password_and_signs_in(db_url: str) -> None:
    build_world(db_url)
    proc = _run(
        db_url, "--unit", "6101130000", "--username", "yanta_admin2", "--real-name", "王建国", "--phone", "13900000000"
    )
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip().rsplit("：", 1)[1]
    with api_client(db_url) as c:
        # No password until the token is used, and the token works once.
        r = c.post("/api/v1/auth/token", json={"username": "yanta_admin2", "password": "Anything@2026"})
        assert r.status_code == 401
        r = c.post("/api/v1/auth/setup-password", json={"token": token, "new_password": "Yanta@Admin2026"})
        assert r.status_code == 204, r.text
        r = c.post("/api/v1/auth/setup-password", json={"token": token, "new_password": "Yanta@Admin2027"})
        assert r.status_code == 401 and error_code(r) == "setup_token_invalid"
        r = c.post("/api/v1/auth/token", json={"username": "yanta_admin2", "password": "Yanta@Admin2026"})
        assert r.status_code == 200
        me = c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"}).json()
        assert (me["role"], me["unit_name"]) == ("system_admin", "雁塔区疾病预防控制中心")


def test_townships_get_no_system_admin_and_usernames_are_unique(db_url: str) -> None:
    build_world(db_url)
    township = _run(db_url, "--unit", "6101130001", "--username", "site_admin", "--real-name", "李", "--phone", "139")
    assert township.returncode == 2 and "乡级及以下单位不设系统管理员" in township.stderr
    taken = _run(db_url, "--unit", "6101130000", "--username", "sa_K1", "--real-name", "李", "--phone", "139")
    assert taken.returncode == 2 and "错误：" in taken.stderr and "Traceback" not in taken.stderr
