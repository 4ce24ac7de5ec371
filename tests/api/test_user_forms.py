"""Form 5, user changes (UM1, UM2): a user added by the manager UM1 names, with a one-time
setup token; closing, modifying and deleting keep the user row; the refusals (who may manage whom,
no township system administrator); and the same rules of :mod:`registry.forms` without a database."""

from __future__ import annotations

from typing import Any

from apihelp import error_code
from formhelp import API, K1, T1, Env, P, applied, apply, common, execute, one, refused, submit, to_filed

from coldchain.core import db
from coldchain.core.settings import load_settings
from registry.forms import Form5, UserFact, UserFacts, UserFields, check_form5, county_of, form5_refusal
from registry.permissions import Actor, UnitRef
from registry.sessions import setup_link

NEW_PASSWORD = "Fresh#Cold2026"
K1_CHAIN = ("ba_C1",)
NO_TOWNSHIP_SA = "乡级及以下单位不设系统管理员（UM1），其业务管理员由县级创建和管理"


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
    # The page link to hand over, on the public address (the same as `coldchain admin create` prints).
    assert done["setup_link"] == setup_link(load_settings({}).public_url, token)
    assert done["setup_link"].startswith("http://127.0.0.1:8000/setup-password?token=")
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
# Form 5's rules without a database


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
