"""The forms' workflow through the API (CM5–CM9): a request form (附表2) is filed and never
applied; the workflow refuses the wrong level, the wrong state, a stale version and read-only roles;
returning and withdrawing end a form without deleting it; another county cannot see or touch a form
whatever id it tries; and the listing with "pending for me"."""

from __future__ import annotations

from typing import Any

from apihelp import error_code
from formhelp import Env, applied, apply, common, one, refused, submit, to_filed

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
