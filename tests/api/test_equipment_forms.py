"""The forms that change the monitoring hardware, from a township up to the province and back
into the registry (CM5–CM8): form 3's software binding goes live after the chain with every step
recorded, form 1 swaps a probe and renames a fridge keeping the history, form 4 stops equipment and
probes and sends the hardware back to the county; each form's refusals, checked again when applied;
and form 1's checks of :mod:`registry.forms` without a database."""

from __future__ import annotations

import re
from typing import Any

from apihelp import error_code
from formhelp import (
    T1,
    Env,
    add_fridge,
    applied,
    apply,
    common,
    execute,
    one,
    probe_state,
    refused,
    rows,
    submit,
    to_filed,
)

from registry.forms import CompartmentFact, Form1, Form1Row, ProbeFact, RegistryFacts, check_form1

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
# Form 1's rules without a database


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
