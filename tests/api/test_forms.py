"""Forms 1–5 as workflows (CM5–CM9, UM2) against a real database through the API: each form's
happy path from a township up to the province and back into the registry, each form's refusals,
the workflow's own refusals (wrong level, wrong state, stale version, read-only roles) and that
another county cannot see or touch a form whatever id it tries — plus the pure rules of
:mod:`registry.forms` without a database."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from apihelp import World, api_client, bearer, build_world, error_code
from fastapi.testclient import TestClient

from coldchain.core import db
from registry.forms import (
    CompartmentFact,
    Form1,
    Form1Row,
    Form5,
    ProbeFact,
    RegistryFacts,
    UnitFact,
    UserFact,
    UserFacts,
    UserFields,
    check_form1,
    check_form5,
    county_of,
    form5_refusal,
)
from registry.permissions import Actor, UnitRef

API = "/api/v1"
NEW_PASSWORD = "Fresh#Cold2026"
T1_CHAIN = ("ba_K1", "ba_C1")  # who forwards a T1 form on its way to the province
K1_CHAIN = ("ba_C1",)
NO_TOWNSHIP_SA = "乡级及以下单位不设系统管理员（UM1），其业务管理员由县级创建和管理"


@dataclass
class Env:
    world: World
    client: TestClient
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)

    def auth(self, username: str) -> dict[str, str]:
        if username not in self.tokens:
            self.tokens[username] = bearer(self.client, username)
        return self.tokens[username]

    def post(self, path: str, username: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.client.post(API + path, json=body, headers=self.auth(username))

    def get(self, path: str, username: str, params: dict[str, Any] | None = None) -> httpx.Response:
        return self.client.get(API + path, params=params, headers=self.auth(username))


@pytest.fixture
def env(db_url: str) -> Iterator[Env]:
    world = build_world(db_url)
    with api_client(db_url) as client:
        yield Env(world, client)


def common(w: World, unit: str = "T1", **fields: Any) -> dict[str, Any]:
    return {"unit_id": w.units[unit], "submitter_name": "王芳", "submitter_phone": "029-88886666", **fields}


def submit(env: Env, username: str, body: dict[str, Any]) -> dict[str, Any]:
    r = env.post("/forms", username, body)
    assert r.status_code == 201, r.text
    form: dict[str, Any] = r.json()
    assert form["status"] == "submitted"
    return form


def refused(env: Env, username: str, body: dict[str, Any]) -> dict[str, Any]:
    """Submits a form that must be refused as invalid; returns the error."""
    r = env.post("/forms", username, body)
    assert (r.status_code, error_code(r)) == (422, "form_invalid"), r.text
    error: dict[str, Any] = r.json()["error"]
    return error


def to_filed(
    env: Env, form: dict[str, Any], forwarders: Sequence[str] = T1_CHAIN, filer: str = "ba_P"
) -> dict[str, Any]:
    """Pushes a submitted form up the chain and has the province file it."""
    for username in forwarders:
        r = env.post(f"/forms/{form['id']}/forward", username, {"version": form["version"], "comment": "同意上报"})
        assert r.status_code == 200, r.text
        form = r.json()
    r = env.post(f"/forms/{form['id']}/file", filer, {"version": form["version"]})
    assert r.status_code == 200, r.text
    filed: dict[str, Any] = r.json()
    assert filed["status"] == "filed" and filed["current_unit_id"] is None and filed["filed_at"]
    return filed


def apply(env: Env, username: str, form: dict[str, Any]) -> httpx.Response:
    return env.post(f"/forms/{form['id']}/apply", username, {"version": form["version"]})


def applied(env: Env, username: str, form: dict[str, Any]) -> dict[str, Any]:
    r = apply(env, username, form)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    assert out["status"] == "applied" and out["applied_by_username"] == username
    return out


def add_fridge(env: Env, modes: Sequence[str] = ("refrigerated",), site: str = "T1") -> list[int]:
    """A new fridge at ``site`` whose compartments have no probe yet; their ids."""
    with db.connect(env.world.url) as conn:
        row = conn.execute(
            "INSERT INTO equipment (unit_id, kind, name) VALUES (%s, 'medical_fridge', '新医用冷藏柜') RETURNING id",
            (env.world.units[site],),
        ).fetchone()
        assert row
        ids = []
        for mode in modes:
            c = conn.execute(
                "INSERT INTO compartments (equipment_id, name, mode) VALUES (%s, %s, %s) RETURNING id",
                (row[0], "冷藏" if mode == "refrigerated" else "冷冻", mode),
            ).fetchone()
            assert c
            ids.append(c[0])
        conn.commit()
    return ids


def one(env: Env, query: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
    with db.connect(env.world.url) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row


def rows(env: Env, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with db.connect(env.world.url) as conn:
        return conn.execute(query, params).fetchall()


def probe_state(env: Env, serial: str) -> tuple[Any, ...]:
    return one(env, "SELECT status, unit_id FROM probes WHERE id = %s", (env.world.probes[serial],))


def execute(env: Env, query: str, params: Sequence[Any] = ()) -> None:
    with db.connect(env.world.url) as conn:
        conn.execute(query, params)
        conn.commit()


# ---------------------------------------------------------------------------------------------
# Form 3 — software binding, and the workflow's steps


def test_form3_binding_goes_live_after_the_chain_with_every_step_recorded(env: Env) -> None:
    w = env.world
    (new_comp,) = add_fridge(env)
    hardware = {"form_type": 2, **common(w), "fridges": 1, "gateways": 0, "probes": 1}
    request = to_filed(env, submit(env, "ba_T1", hardware))
    r = apply(env, "sa_K1", request)
    assert (r.status_code, error_code(r)) == (409, "form_state")
    assert r.json()["error"]["message"] == "附表2 为申请，无需执行"

    form = submit(
        env,
        "ba_T1",
        {
            "form_type": 3,
            **common(w),
            "request_form_id": request["id"],
            "rows": [
                {
                    "compartment_id": new_comp,
                    "gateway_serial": "10001",
                    "probe_serial": "108602",
                    "mode": "refrigerated",
                }
            ],
        },
    )
    assert re.fullmatch(r"F3-\d{8}-\d{6}", form["form_no"]) and form["form_no"].endswith(f"{form['id']:06d}")
    assert form["current_unit_id"] == w.units["K1"] and form["unit_name"] == "电子城街道社区卫生服务中心"
    assert rows(env, "SELECT * FROM probe_bindings_current WHERE probe_id = %s", (w.probes["108602"],)) == []

    done = applied(env, "sa_K1", to_filed(env, form))
    binding_id = done["result"]["bindings"][0]["binding_id"]
    assert done["result"]["bindings"] == [
        {"binding_id": binding_id, "compartment_id": new_comp, "probe_serial": "108602", "gateway_serial": "10001"}
    ]
    assert one(
        env,
        "SELECT id, compartment_id, gateway_id FROM probe_bindings_current WHERE probe_id = %s",
        (w.probes["108602"],),
    ) == (binding_id, new_comp, w.gateways["10001"])
    assert probe_state(env, "108602") == ("active", w.units["T1"])
    assert [(s["action"], s["unit_name"], s["username"]) for s in done["steps"]] == [
        ("submit", "电子城街道社区卫生服务中心", "ba_T1"),
        ("forward", "雁塔区疾病预防控制中心", "ba_K1"),
        ("forward", "西安市疾病预防控制中心", "ba_C1"),
        ("file", "陕西省疾病预防控制中心", "ba_P"),
        ("apply", "雁塔区疾病预防控制中心", "sa_K1"),
    ]
    assert [s["comment"] for s in done["steps"][1:3]] == ["同意上报", "同意上报"]
    assert done["steps"] == sorted(done["steps"], key=lambda s: (s["ts"], s["id"]))
    # The audit log names the action and the actor of the binding.
    assert one(
        env, "SELECT action, actor_id FROM audit_log WHERE entity = 'probe_bindings' AND entity_id = %s", (binding_id,)
    ) == ("form3.apply", w.users["sa_K1"])
    # Applying twice is refused: the form is done.
    r = apply(env, "sa_K1", done)
    assert (r.status_code, error_code(r)) == (409, "form_state")


def test_form3_refusals_list_every_problem_with_its_row(env: Env) -> None:
    w = env.world
    refrigerated, frozen = add_fridge(env, ("refrigerated", "frozen"))
    error = refused(
        env,
        "ba_T1",
        {
            "form_type": 3,
            **common(w),
            "request_form_id": 999999,
            "rows": [
                {
                    "compartment_id": w.compartments["T1/冷藏"],
                    "gateway_serial": "10001",
                    "probe_serial": "108602",
                    "mode": "refrigerated",
                },
                {
                    "compartment_id": w.compartments["T2/冷藏"],
                    "gateway_serial": "10001",
                    "probe_serial": "208699",
                    "mode": "refrigerated",
                },
                {"compartment_id": frozen, "gateway_serial": "20001", "probe_serial": "108601", "mode": "refrigerated"},
                {
                    "compartment_id": refrigerated,
                    "gateway_serial": "19999",
                    "probe_serial": "208602",
                    "mode": "refrigerated",
                },
            ],
        },
    )
    problems = {(d["row"], d["field"]): d["problem"] for d in error["details"]}
    assert "该温区已有探头" in problems[(1, "rows.compartment_id")] and "108601" in problems[(1, "rows.compartment_id")]
    assert problems[(2, "rows.compartment_id")] == f"温区 {w.compartments['T2/冷藏']} 不存在或不属于本单位"
    assert problems[(2, "rows.probe_serial")] == "探头 208699 不存在"
    assert problems[(3, "rows.mode")].startswith("模式不符")
    assert problems[(3, "rows.gateway_serial")] == "网关 20001 属于其他单位，不能在本单位使用"
    assert problems[(3, "rows.probe_serial")].startswith("探头 108601 已绑定")
    assert problems[(4, "rows.gateway_serial")] == "网关 19999 不存在"
    assert problems[(4, "rows.probe_serial")] == "探头 208602 属于其他单位，不能在本单位使用"
    assert problems[(None, "request_form_id")] == "申请单 999999 不是本单位已备案的附表2"
    assert "第 2 行：探头 208699 不存在" in error["message"]
    assert error["message"].startswith("附表3 冷链监测设备安装申请单（软件）填写有误：")
    assert rows(env, "SELECT id FROM forms") == []

    # The same probe twice in one form.
    error = refused(
        env,
        "ba_T1",
        {
            "form_type": 3,
            **common(w),
            "rows": [
                {
                    "compartment_id": refrigerated,
                    "gateway_serial": "10001",
                    "probe_serial": "108602",
                    "mode": "refrigerated",
                },
                {"compartment_id": frozen, "gateway_serial": "10001", "probe_serial": "108602", "mode": "frozen"},
            ],
        },
    )
    assert [d["problem"] for d in error["details"]] == ["探头 108602 在本表中重复出现"] * 2


def test_form3_is_checked_again_when_applied(env: Env) -> None:
    w = env.world
    refrigerated, frozen = add_fridge(env, ("refrigerated", "frozen"))
    form = to_filed(
        env,
        submit(
            env,
            "ba_T1",
            {
                "form_type": 3,
                **common(w),
                "rows": [
                    {
                        "compartment_id": refrigerated,
                        "gateway_serial": "10001",
                        "probe_serial": "108602",
                        "mode": "refrigerated",
                    },
                ],
            },
        ),
    )
    # Meanwhile the spare probe was bound elsewhere.
    execute(
        env,
        "INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid) "
        "VALUES (%s, %s, %s, tstzrange(now(), NULL))",
        (w.probes["108602"], frozen, w.gateways["10001"]),
    )
    r = apply(env, "sa_K1", form)
    assert (r.status_code, error_code(r)) == (422, "form_invalid"), r.text
    assert "探头 108602 已绑定" in r.json()["error"]["message"]
    assert env.get(f"/forms/{form['id']}", "ba_T1").json()["status"] == "filed"


# ---------------------------------------------------------------------------------------------
# Form 1 — probe swap and rename, history kept


def test_form1_swaps_the_probe_and_renames_the_fridge_keeping_history(env: Env) -> None:
    w = env.world
    form = submit(
        env,
        "ba_T1",
        {
            "form_type": 1,
            **common(w),
            "remarks": "原探头漂移超过 0.5 ℃",
            "rows": [
                {
                    "compartment_id": w.compartments["T1/冷藏"],
                    "equipment_name_after": "美菱医用冷藏柜",
                    "probe_before": "108601",
                    "probe_after": "108602",
                    "mode": "refrigerated",
                },
            ],
        },
    )
    assert form["steps"][0]["comment"] == "原探头漂移超过 0.5 ℃"
    done = applied(env, "sa_K1", to_filed(env, form))
    new_id = done["result"]["rows"][0]["new_binding_id"]
    assert done["result"]["rows"][0]["closed_binding_id"] == w.bindings["108601"]

    old_upper, new_lower, new_open = one(
        env,
        """
        SELECT upper(o.valid), lower(n.valid), upper_inf(n.valid)
        FROM probe_bindings o, probe_bindings n WHERE o.id = %s AND n.id = %s""",
        (w.bindings["108601"], new_id),
    )
    assert old_upper is not None and old_upper == new_lower and new_open is True
    assert one(
        env, "SELECT probe_id, compartment_id, gateway_id FROM probe_bindings_current WHERE id = %s", (new_id,)
    ) == (w.probes["108602"], w.compartments["T1/冷藏"], w.gateways["10001"])
    assert rows(
        env,
        "SELECT probe_id FROM probe_bindings WHERE compartment_id = %s ORDER BY lower(valid)",
        (w.compartments["T1/冷藏"],),
    ) == [(w.probes["108601"],), (w.probes["108602"],)]
    assert probe_state(env, "108601") == ("in_stock", w.units["T1"])
    assert probe_state(env, "108602") == ("active", w.units["T1"])
    assert one(env, "SELECT name, version FROM equipment WHERE id = %s", (w.equipment["T1"],)) == ("美菱医用冷藏柜", 2)
    assert one(
        env,
        """SELECT before ->> 'name', after ->> 'name', actor_id FROM audit_log
                       WHERE entity = 'equipment' AND entity_id = %s AND action = 'form1.apply'""",
        (w.equipment["T1"],),
    ) == ("海尔双温冰箱", "美菱医用冷藏柜", w.users["sa_K1"])


def test_form1_refusals(env: Env) -> None:
    w = env.world
    cold, frozen, other = w.compartments["T1/冷藏"], w.compartments["T1/冷冻"], w.compartments["T2/冷藏"]

    def only_problem(row: dict[str, Any]) -> str:
        error = refused(env, "ba_T1", {"form_type": 1, **common(w), "rows": [row]})
        assert len(error["details"]) == 1, error
        assert error["details"][0]["row"] == 1
        return str(error["details"][0]["problem"])

    def row(compartment: int, before: str, after: str, mode: str = "refrigerated", **extra: Any) -> dict[str, Any]:
        return {"compartment_id": compartment, "probe_before": before, "probe_after": after, "mode": mode, **extra}

    assert only_problem(row(cold, "108604", "108602")) == "探头 108604 当前并未绑定在温区「海尔双温冰箱 冷藏」"
    assert only_problem(row(frozen, "108604", "108602")) == "模式不符：温区「海尔双温冰箱 冷冻」为冷冻，填写为冷藏"
    assert only_problem(row(other, "208601", "108602")) == f"温区 {other} 不存在或不属于本单位"
    assert only_problem(row(cold, "108601", "208602")) == "探头 208602 属于其他单位，不能在本单位使用"
    assert only_problem(row(cold, "108601", "108699")) == "探头 108699 不存在"
    assert only_problem(row(cold, "108601", "108604")) == "探头 108604 已绑定在其他温区，须先解绑"
    assert only_problem(row(cold, "108601", "108601")) == "本行没有任何变更（探头相同，也未改冰箱名称）"
    # A rename alone is a change.
    rename = row(cold, "108601", "108601", equipment_name_after="新名")
    submit(env, "ba_T1", {"form_type": 1, **common(w), "rows": [rename]})
    # A probe in the county's stock may be used by its township.
    execute(env, "UPDATE probes SET unit_id = %s WHERE id = %s", (w.units["K1"], w.probes["108602"]))
    submit(env, "ba_T1", {"form_type": 1, **common(w), "rows": [row(cold, "108601", "108602")]})

    # Incomplete or malformed payloads never reach the rules.
    for body in (
        {"form_type": 1, **common(w)},
        {"form_type": 1, **common(w), "rows": []},
        {"form_type": 1, **common(w, submitter_phone="call me"), "rows": [row(cold, "108601", "108602")]},
        {"form_type": 1, **common(w), "rows": [row(cold, "108601", "108602", mode="warm")]},
        {"form_type": 1, **common(w), "rows": [row(cold, "108601", "108602", color="red")]},
        {"form_type": 9, **common(w)},
        common(w),
    ):
        r = env.post("/forms", "ba_T1", body)
        assert (r.status_code, error_code(r)) == (422, "invalid_request"), (body, r.text)
    # The refusal names the form and the field as the user knows them.
    r = env.post("/forms", "ba_T1", {"form_type": 1, **common(w, submitter_phone="call me"), "rows": []})
    fields = {d["field"]: d["problem"] for d in r.json()["error"]["details"]}
    assert fields == {"附表1.submitter_phone": "格式不正确", "附表1.rows": "项数太少"}
    r = env.post("/forms", "ba_T1", {"form_type": 9, **common(w)})
    assert r.json()["error"]["details"][0]["problem"] == "表单类型 form_type 应为 1–5"


# ---------------------------------------------------------------------------------------------
# Form 4 — stopping equipment and probes


def test_form4_stops_equipment_and_probes_and_hardware_goes_back_to_the_county(env: Env) -> None:
    w = env.world
    form = submit(
        env,
        "ba_T1",
        {
            "form_type": 4,
            **common(w),
            "equipment": [{"equipment_id": w.equipment["T1"], "stop": True}],
            "probes": [{"probe_serial": "108602", "stop": True}],
        },
    )
    done = applied(env, "ba_K1", to_filed(env, form))
    assert done["result"]["probes_returned"] == ["108601", "108602", "108604"]
    assert done["result"]["returned_to_unit_id"] == w.units["K1"]
    assert sorted(done["result"]["closed_binding_ids"]) == sorted([w.bindings["108601"], w.bindings["108604"]])

    status, decommissioned_at = one(
        env, "SELECT status, decommissioned_at FROM equipment WHERE id = %s", (w.equipment["T1"],)
    )
    assert status == "decommissioned" and decommissioned_at is not None
    assert rows(env, "SELECT DISTINCT status FROM compartments WHERE equipment_id = %s", (w.equipment["T1"],)) == [
        ("decommissioned",)
    ]
    for serial in ("108601", "108604"):
        (upper,) = one(env, "SELECT upper(valid) FROM probe_bindings WHERE id = %s", (w.bindings[serial],))
        assert upper is not None
    for serial in ("108601", "108604", "108602"):
        assert probe_state(env, serial) == ("in_stock", w.units["K1"]), serial
    assert (
        rows(
            env,
            "SELECT id FROM probe_bindings_current WHERE compartment_id = ANY(%s)",
            ([w.compartments["T1/冷藏"], w.compartments["T1/冷冻"]],),
        )
        == []
    )
    # Nothing was deleted: both bindings are still there, now closed.
    assert one(
        env, "SELECT count(*) FROM probe_bindings WHERE probe_id = ANY(%s)", ([w.probes["108601"], w.probes["108604"]],)
    ) == (2,)
    # T2's fridge is untouched.
    assert one(env, "SELECT status FROM equipment WHERE id = %s", (w.equipment["T2"],)) == ("active",)


def test_form4_refusals(env: Env) -> None:
    w = env.world
    error = refused(
        env,
        "ba_T1",
        {
            "form_type": 4,
            **common(w),
            "equipment": [
                {"equipment_id": w.equipment["T2"], "stop": True},
                {"equipment_id": w.equipment["T2"], "stop": True},
            ],
            "probes": [{"probe_serial": "208601", "stop": True}, {"probe_serial": "108699", "stop": False}],
        },
    )
    problems = [(d["row"], d["field"], d["problem"]) for d in error["details"]]
    assert (1, "equipment.equipment_id", f"设备 {w.equipment['T2']} 不存在或不属于本单位") in problems
    assert (2, "equipment.equipment_id", f"设备 {w.equipment['T2']} 在本表中重复出现") in problems
    assert (1, "probes.probe_serial", "探头 208601 不属于本单位") in problems
    assert (2, "probes.probe_serial", "探头 108699 不存在") in problems
    assert "探头清单第 1 行：探头 208601 不属于本单位" in error["message"]
    error = refused(env, "ba_T1", {"form_type": 4, **common(w), "probes": [{"probe_serial": "108601", "stop": False}]})
    assert [d["problem"] for d in error["details"]] == ["没有选择任何要停用的设备或探头"]


# ---------------------------------------------------------------------------------------------
# Form 5 — user changes (UM1, UM2)


def test_form5_add_user_by_the_um1_manager_with_a_one_time_setup_token(env: Env) -> None:
    w = env.world
    form = submit(
        env,
        "ba_T1",
        {
            "form_type": 5,
            **common(w),
            "change_type": "add",
            "applicant_department": "预防接种门诊",
            "after": {
                "username": "ba_T1b",
                "real_name": "赵敏",
                "phone": "13900000001",
                "role": "business_admin",
                "unit_id": w.units["T1"],
                "email": "zm@example.cn",
            },
        },
    )
    assert form["payload"]["before"] is None
    filed = to_filed(env, form)
    # The county manages township users (UM1): not the city, and not a business administrator.
    r = apply(env, "sa_C1", filed)
    assert (r.status_code, error_code(r)) == (403, "forbidden")
    assert "雁塔区疾病预防控制中心的系统管理员" in r.json()["error"]["message"]
    r = apply(env, "ba_K1", filed)
    assert (r.status_code, error_code(r)) == (403, "forbidden")

    done = applied(env, "sa_K1", filed)
    token = done["setup_token"]
    assert isinstance(token, str) and len(token) > 20
    user_id = done["result"]["user_id"]
    new_user = one(
        env,
        "SELECT username, unit_id, role, created_by, password_hash IS NULL, status FROM users WHERE id = %s",
        (user_id,),
    )
    assert new_user == ("ba_T1b", w.units["T1"], "business_admin", w.users["sa_K1"], True, "active")
    # The token is returned once and stored nowhere in clear.
    assert env.get(f"/forms/{form['id']}", "ba_T1").json().get("setup_token") is None
    assert one(
        env,
        "SELECT count(*) FROM forms WHERE payload::text LIKE %s OR result::text LIKE %s",
        (f"%{token}%", f"%{token}%"),
    ) == (0,)
    assert one(
        env,
        "SELECT count(*) FROM audit_log WHERE before::text LIKE %s OR after::text LIKE %s",
        (f"%{token}%", f"%{token}%"),
    ) == (0,)

    r = env.client.post(f"{API}/auth/setup-password", json={"token": token, "new_password": NEW_PASSWORD})
    assert r.status_code == 204, r.text
    r = env.client.post(f"{API}/auth/token", json={"username": "ba_T1b", "password": NEW_PASSWORD})
    assert r.status_code == 200, r.text


def test_form5_close_modify_and_delete_keep_the_user_row(env: Env) -> None:
    w = env.world
    close = submit(
        env, "ba_K1", {"form_type": 5, **common(w, "K1"), "change_type": "close", "target_user_id": w.users["ana_K1"]}
    )
    before = close["payload"]["before"]
    assert before["username"] == "ana_K1" and before["role"] == "analyst" and "password_hash" not in before
    assert close["current_unit_id"] == w.units["C1"]
    env.auth("ana_K1")  # a session that closing must end
    applied(env, "sa_K1", to_filed(env, close, K1_CHAIN))
    status, closed_at = one(env, "SELECT status, closed_at FROM users WHERE id = %s", (w.users["ana_K1"],))
    assert status == "closed" and closed_at is not None
    r = env.client.get(f"{API}/users/me", headers=env.tokens["ana_K1"])
    assert r.status_code == 401
    r = env.client.post(f"{API}/auth/token", json={"username": "ana_K1", "password": "Test@Pass2026"})
    assert (r.status_code, error_code(r)) == (403, "account_closed")

    modify = submit(
        env,
        "ba_T1",
        {
            "form_type": 5,
            **common(w),
            "change_type": "modify",
            "target_user_id": w.users["ba_T1"],
            "after": {"real_name": "王芳芳", "phone": "13911112222"},
        },
    )
    done = applied(env, "sa_K1", to_filed(env, modify))
    assert done["result"]["changed"] == {"real_name": "王芳芳", "phone": "13911112222"}
    assert one(env, "SELECT real_name, phone, role, version FROM users WHERE id = %s", (w.users["ba_T1"],)) == (
        "王芳芳",
        "13911112222",
        "business_admin",
        2,
    )

    delete = submit(
        env, "ba_K3", {"form_type": 5, **common(w, "K3"), "change_type": "delete", "target_user_id": w.users["ba_T3"]}
    )
    filed = to_filed(env, delete, ())  # 韩城 reports straight to the province
    r = apply(env, "sa_P", filed)  # the province does not manage a township's users
    assert (r.status_code, error_code(r)) == (403, "forbidden")
    assert "韩城市疾病预防控制中心的系统管理员" in r.json()["error"]["message"]
    with db.connect(w.url) as conn:  # ba_T3 is the site's level-1 alarm contact (CM15)
        conn.execute(
            "INSERT INTO unit_responsibles (unit_id, level, user_id) VALUES (%s, 1, %s)",
            (w.units["T3"], w.users["ba_T3"]),
        )
        conn.commit()
    done = applied(env, "sa_K3", filed)
    assert one(env, "SELECT status FROM users WHERE id = %s", (w.users["ba_T3"],)) == ("deleted",)
    # A deleted account is no longer anyone's alarm contact.
    assert done["result"]["responsible_levels_dropped"] == [[w.units["T3"], 1]]
    assert one(env, "SELECT count(*) FROM unit_responsibles WHERE user_id = %s", (w.users["ba_T3"],)) == (0,)


def test_form5_refusals(env: Env) -> None:
    w = env.world

    def problems(body: dict[str, Any], username: str = "ba_T1") -> list[str]:
        return [d["problem"] for d in refused(env, username, {"form_type": 5, **common(w), **body})["details"]]

    def add(**after: Any) -> dict[str, Any]:
        return {
            "change_type": "add",
            "after": {
                "username": "new_user",
                "real_name": "新人",
                "phone": "13900000009",
                "role": "business_admin",
                "unit_id": w.units["T1"],
                **after,
            },
        }

    assert problems(add(role="system_admin")) == [NO_TOWNSHIP_SA]
    assert problems(add(role="supervisor")) == ["督导（只读）角色属于省级卫生健康主管部门，只能设在省级单位"]
    assert problems(add(username="ba_T2")) == ["用户名 ba_T2 已被使用"]
    assert problems({"change_type": "add", "after": {"username": "x_y_z"}}) == [
        "新增用户须填写姓名",
        "新增用户须填写电话",
        "新增用户须填写角色",
        "新增用户须填写所在单位",
    ]
    assert problems({"change_type": "close"}) == ["关闭用户须填写变更对象"]
    assert problems(
        {"change_type": "modify", "target_user_id": w.users["ba_T1"], "after": {"real_name": "测试ba_T1"}}
    ) == ["没有任何变更"]
    assert problems(
        {"change_type": "modify", "target_user_id": w.users["ba_T1"], "after": {"role": "system_admin"}}
    ) == [NO_TOWNSHIP_SA]
    # A unit may only apply for itself and below.
    assert problems({"change_type": "close", "target_user_id": w.users["ba_K1"]}, "sa_K1") == [
        "该用户不属于申请单位或其下级单位"
    ]
    execute(env, "UPDATE users SET status = 'closed', closed_at = now() WHERE id = %s", (w.users["ana_K1"],))
    assert problems({**common(w, "K1"), "change_type": "close", "target_user_id": w.users["ana_K1"]}, "ba_K1") == [
        "用户 ana_K1 已关闭"
    ]
    # Users and units outside the submitter's jurisdiction do not exist for them.
    for body in (
        {"change_type": "close", "target_user_id": w.users["ba_T2"]},
        {"change_type": "close", "target_user_id": 10**9},
        add(unit_id=w.units["T2"]),
    ):
        r = env.post("/forms", "ba_T1", {"form_type": 5, **common(w), **body})
        assert (r.status_code, error_code(r)) == (404, "not_found"), r.text
    r = env.post("/forms", "ba_T1", {"form_type": 5, **common(w), **add(role="root")})
    assert (r.status_code, error_code(r)) == (422, "invalid_request")


# ---------------------------------------------------------------------------------------------
# Form 2 and the workflow's refusals


def test_form2_is_filed_and_never_applied(env: Env) -> None:
    w = env.world
    error = refused(env, "ba_T1", {"form_type": 2, **common(w), "fridges": 0, "gateways": 0, "probes": 0})
    assert error["details"] == [{"row": None, "field": "fridges", "problem": "冰箱、网关、探头个数至少一项大于 0"}]
    r = env.post("/forms", "ba_T1", {"form_type": 2, **common(w), "fridges": 4, "gateways": 2})
    assert (r.status_code, error_code(r)) == (422, "invalid_request")
    filed = to_filed(env, submit(env, "ba_T1", {"form_type": 2, **common(w), "fridges": 4, "gateways": 2, "probes": 5}))
    assert filed["payload"]["fridges"] == 4 and filed["form_type_name"] == "附表2 冷链监测设备安装申请单（硬件）"
    r = apply(env, "sa_P", filed)
    assert (r.status_code, error_code(r)) == (409, "form_state")


def test_workflow_refuses_wrong_level_wrong_state_stale_version_and_read_only_roles(env: Env) -> None:
    w = env.world
    body = {"form_type": 2, **common(w), "fridges": 1, "gateways": 1, "probes": 2}
    for username in ("sup_P", "ana_K1", "ana_P"):
        r = env.post("/forms", username, body)
        assert (r.status_code, error_code(r)) == (403, "forbidden"), username
    r = env.post("/forms", "ba_T2", body)  # T1 is not in T2's jurisdiction
    assert (r.status_code, error_code(r)) == (404, "not_found")

    form = submit(env, "ba_T1", body)
    fid = form["id"]
    r = apply(env, "sa_K1", form)
    assert (r.status_code, error_code(r)) == (409, "form_state")
    for username in ("ba_C1", "ba_T1", "ba_P"):  # the form sits at K1
        r = env.post(f"/forms/{fid}/forward", username)
        assert (r.status_code, error_code(r)) == (403, "forbidden"), username
        assert "雁塔区疾病预防控制中心" in r.json()["error"]["message"]
    r = env.post(f"/forms/{fid}/file", "ba_K1")
    assert (r.status_code, error_code(r)) == (409, "form_state")
    r = env.post(f"/forms/{fid}/forward", "sup_P")
    assert (r.status_code, error_code(r)) == (403, "forbidden")

    r = env.post(f"/forms/{fid}/forward", "sa_K1", {"version": 1})
    assert r.status_code == 200 and r.json()["version"] == 2
    r = env.post(f"/forms/{fid}/forward", "ba_C1", {"version": 1})  # saw the old version
    assert (r.status_code, error_code(r)) == (409, "version_conflict")
    assert r.json()["error"]["message"] == "表单已被他人处理（当前版本 2），请刷新后重试"
    r = env.post(f"/forms/{fid}/forward", "ba_C1", {"version": 2})
    assert r.status_code == 200
    r = env.post(f"/forms/{fid}/forward", "ba_P", {"version": 3})  # the province files instead
    assert (r.status_code, error_code(r)) == (409, "form_state")
    r = env.post(f"/forms/{fid}/file", "sa_P", {"version": 3, "comment": "已备案"})
    assert r.status_code == 200 and r.json()["status"] == "filed"
    r = env.post(f"/forms/{fid}/forward", "ba_P")
    assert (r.status_code, error_code(r)) == (409, "form_state")

    form1 = to_filed(
        env,
        submit(
            env,
            "ba_T1",
            {
                "form_type": 1,
                **common(w),
                "rows": [
                    {
                        "compartment_id": w.compartments["T1/冷藏"],
                        "equipment_name_after": "新名",
                        "probe_before": "108601",
                        "probe_after": "108601",
                        "mode": "refrigerated",
                    }
                ],
            },
        ),
    )
    r = env.post(f"/forms/{form1['id']}/apply", "sa_K1", {})
    assert (r.status_code, error_code(r)) == (422, "invalid_request")  # apply needs the version
    r = env.post(f"/forms/{form1['id']}/apply", "sa_K1", {"version": form1["version"] - 1})
    assert (r.status_code, error_code(r)) == (409, "version_conflict")
    for username in ("ba_T1", "sup_P", "ana_K1"):  # a township does not apply hardware changes; nor read-only roles
        r = apply(env, username, form1)
        assert (r.status_code, error_code(r)) == (403, "forbidden"), username
    applied(env, "ba_C1", form1)  # the city may, for its jurisdiction


def test_return_and_withdraw_end_the_form(env: Env) -> None:
    w = env.world
    body = {"form_type": 2, **common(w), "fridges": 1, "gateways": 0, "probes": 0}
    form = submit(env, "ba_T1", body)
    r = env.post(f"/forms/{form['id']}/return", "ba_K1", {"reason": "x"})
    assert (r.status_code, error_code(r)) == (422, "invalid_request")
    r = env.post(f"/forms/{form['id']}/return", "ba_C1", {"reason": "单位编码有误"})
    assert (r.status_code, error_code(r)) == (403, "forbidden")
    r = env.post(f"/forms/{form['id']}/return", "ba_K1", {"reason": "单位编码有误"})
    assert r.status_code == 200
    returned = r.json()
    assert returned["status"] == "returned" and returned["current_unit_id"] is None
    assert (returned["steps"][-1]["action"], returned["steps"][-1]["comment"]) == ("return", "单位编码有误")
    r = env.post(f"/forms/{form['id']}/forward", "ba_K1")
    assert (r.status_code, error_code(r)) == (409, "form_state")

    form = submit(env, "ba_T1", body)
    r = env.post(f"/forms/{form['id']}/withdraw", "ba_K1")
    assert (r.status_code, error_code(r)) == (403, "forbidden")
    r = env.post(f"/forms/{form['id']}/withdraw", "ba_T1", {"comment": "填错了"})
    assert r.status_code == 200 and r.json()["status"] == "withdrawn"
    assert [s["action"] for s in r.json()["steps"]] == ["submit", "withdraw"]
    # Nothing is deleted.
    assert one(env, "SELECT count(*) FROM forms") == (2,)


def test_other_counties_get_404_whatever_id(env: Env) -> None:
    w = env.world
    form = submit(env, "ba_T1", {"form_type": 2, **common(w), "fridges": 1, "gateways": 0, "probes": 0})
    fid = form["id"]
    for username in ("ba_K2", "sa_K2", "ba_T2", "sa_C2", "sa_K3"):
        bodies: list[Any] = []
        for target in (fid, fid + 1, 10**9):
            r = env.get(f"/forms/{target}", username)
            bodies.append((r.status_code, r.json()))
            for action, body in (
                ("forward", {}),
                ("file", {}),
                ("return", {"reason": "无理由退回"}),
                ("withdraw", {}),
                ("apply", {"version": 1}),
            ):
                r = env.post(f"/forms/{target}/{action}", username, body)
                bodies.append((r.status_code, r.json()))
        assert {repr(b) for b in bodies} == {
            repr((404, {"error": {"code": "not_found", "message": "表单不存在或不在您的辖区内", "details": None}}))
        }, username
        r = env.get("/forms", username)
        assert r.status_code == 200 and r.json() == []
    # Nothing happened to it.
    assert env.get(f"/forms/{fid}", "ba_T1").json()["version"] == 1


def test_listing_and_pending_for_me(env: Env) -> None:
    w = env.world
    form = submit(env, "ba_T1", {"form_type": 2, **common(w), "fridges": 1, "gateways": 0, "probes": 0})
    other = submit(env, "ba_T2", {"form_type": 2, **common(w, "T2"), "fridges": 1, "gateways": 0, "probes": 0})

    def ids(username: str, **params: Any) -> list[int]:
        r = env.get("/forms", username, params)
        assert r.status_code == 200, r.text
        return [f["id"] for f in r.json()]

    assert ids("ba_T1") == [form["id"]]
    assert ids("ana_K1") == [form["id"]]
    assert ids("sup_P") == [other["id"], form["id"]]
    assert ids("ba_K1", pending_for_me="true") == [form["id"]]
    assert ids("ba_C1", pending_for_me="true") == []
    env.post(f"/forms/{form['id']}/forward", "ba_K1")
    assert ids("ba_K1", pending_for_me="true") == []
    assert ids("ba_C1", pending_for_me="true") == [form["id"]]
    assert ids("sa_P", form_type=2, status="submitted", unit_id=w.units["T2"]) == [other["id"]]
    assert ids("sa_P", form_type=3) == []
    r = env.get("/forms", "ba_T1", {"unit_id": w.units["T2"]})
    assert (r.status_code, error_code(r)) == (404, "not_found")


# ---------------------------------------------------------------------------------------------
# The pure rules


P = UnitFact(1, "陕西省疾控", "province", None)
K1 = UnitFact(3, "雁塔区疾控", "county", 2, "西安市疾控")
T1 = UnitFact(4, "电子城", "township", 3, "雁塔区疾控")


def test_county_of_and_manager_naming() -> None:
    assert county_of(T1) == 3 and county_of(K1) == 3 and county_of(P) == 1
    add = Form5(
        form_type=5,
        unit_id=4,
        submitter_name="王",
        submitter_phone="12345",
        change_type="add",
        after=UserFields(username="abc", real_name="甲", phone="12345", role="business_admin", unit_id=4),
    )
    facts = UserFacts(T1, target_unit=T1, under_form_unit=True)
    city_admin = Actor(9, "system_admin", UnitRef(2, "city", 1))
    county_admin = Actor(8, "system_admin", UnitRef(3, "county", 2))
    assert form5_refusal(county_admin, add, facts) is None
    assert form5_refusal(city_admin, add, facts) == (
        "电子城（乡级）的业务管理员由雁塔区疾控的系统管理员管理，您无权执行此变更"
    )
    # A county system administrator is managed by the level above.
    target = UserFact(5, "sa_K1", "甲", None, None, "system_admin", None, "active", 1, K1)
    close = Form5(
        form_type=5, unit_id=3, submitter_name="王", submitter_phone="12345", change_type="close", target_user_id=5
    )
    close_facts = UserFacts(K1, target=target, under_form_unit=True)
    assert form5_refusal(county_admin, close, close_facts) == (
        "雁塔区疾控（县级）的系统管理员由西安市疾控的系统管理员管理，您无权执行此变更"
    )
    assert form5_refusal(city_admin, close, close_facts) is None
    assert check_form5(close, close_facts, before_version=1) == []
    assert [p.problem for p in check_form5(close, close_facts, before_version=0)] == [
        "用户 sa_K1 的信息在提交后已被修改，请重新填报"
    ]


def test_check_form1_without_a_database() -> None:
    cold = CompartmentFact(10, "冷藏", "refrigerated", True, 20, "海尔", 4, True, ("108601",))
    facts = RegistryFacts(
        T1,
        compartments={10: cold},
        probes={
            "108601": ProbeFact(1, "108601", 4, "active", 100, 10, 7),
            "108602": ProbeFact(2, "108602", None, "in_stock"),
            "108603": ProbeFact(3, "108603", 4, "decommissioned"),
            "108605": ProbeFact(5, "108605", 2, "in_stock"),  # the city's: not the township's stock
        },
    )

    def form(*rows: Form1Row) -> Form1:
        return Form1(form_type=1, unit_id=4, submitter_name="王", submitter_phone="12345", rows=list(rows))

    assert (
        check_form1(
            form(Form1Row(compartment_id=10, probe_before="108601", probe_after="108602", mode="refrigerated")), facts
        )
        == []
    )
    scrapped = Form1Row(compartment_id=10, probe_before="108601", probe_after="108603", mode="refrigerated")
    assert [p.text() for p in check_form1(form(scrapped), facts)] == ["第 1 行：探头 108603 已报废"]
    assert [
        p.problem
        for p in check_form1(
            form(Form1Row(compartment_id=10, probe_before="108601", probe_after="108605", mode="refrigerated")), facts
        )
    ] == ["探头 108605 属于其他单位，不能在本单位使用"]
    both = check_form1(
        form(
            Form1Row(
                compartment_id=10,
                probe_before="108601",
                probe_after="108602",
                mode="refrigerated",
                equipment_name_after="甲",
            ),
            Form1Row(
                compartment_id=10,
                probe_before="108602",
                probe_after="108601",
                mode="refrigerated",
                equipment_name_after="乙",
            ),
        ),
        facts,
    )
    texts = [p.text() for p in both]
    assert "第 1 行：温区 10 在本表中重复出现" in texts
    assert "第 2 行：探头 108602 当前并未绑定在温区「海尔 冷藏」" in texts
    assert "同一冰箱（设备 20）填写了不同的新名称：乙、甲" in texts
    assert sum("在本表中重复出现" in t and "探头" in t for t in texts) == 4
