"""The rules of Form 5 (UM1, UM2): whether a user change makes sense (pure, like the other
forms' checks) and whether the acting administrator is the one UM1 lets carry it out.
"""

from __future__ import annotations

from coldchain.core.terms import LEVEL_NAMES, ROLE_NAMES, Role
from registry.forms.facts import UnitFact, UserFacts
from registry.forms.payloads import CHANGE_NAMES, MODIFIABLE, Form5
from registry.forms.problems import Problem
from registry.permissions import Actor, manager_unit, may_manage_user, role_allowed_at


def check_form5(p: Form5, facts: UserFacts, *, before_version: int | None = None) -> list[Problem]:
    """UM1/UM2: who may exist where, usernames unique, and only changes that make sense.

    ``before_version`` (at apply) is the user's version recorded at submission: a user changed
    meanwhile is refused, so a form never overwrites what it did not see."""
    problems: list[Problem] = []
    after = p.after
    if p.change_type == "add":
        if p.target_user_id is not None:
            problems.append(Problem(None, "target_user_id", "新增用户不填写变更对象"))
        if after is None:
            return [*problems, Problem(None, "after", "新增用户须填写变更后的用户信息")]
        for name, label in (
            ("username", "用户名"),
            ("real_name", "姓名"),
            ("phone", "电话"),
            ("role", "角色"),
            ("unit_id", "所在单位"),
        ):
            if getattr(after, name) is None:
                problems.append(Problem(None, f"after.{name}", f"新增用户须填写{label}"))
        if after.unit_id is not None:
            if facts.target_unit is None:
                problems.append(Problem(None, "after.unit_id", f"单位 {after.unit_id} 不存在"))
            elif not facts.under_form_unit:
                problems.append(Problem(None, "after.unit_id", "新用户的单位须为申请单位或其下级单位"))
            elif after.role is not None and (reason := role_allowed_at(after.role, facts.target_unit.level)):
                problems.append(Problem(None, "after.role", reason))
        if after.username is not None and facts.username_taken:
            problems.append(Problem(None, "after.username", f"用户名 {after.username} 已被使用"))
        return problems

    if p.target_user_id is None:
        return [Problem(None, "target_user_id", f"{CHANGE_NAMES[p.change_type]}用户须填写变更对象")]
    target = facts.target
    if target is None:
        return [Problem(None, "target_user_id", f"用户 {p.target_user_id} 不存在")]
    if not facts.under_form_unit:
        problems.append(Problem(None, "target_user_id", "该用户不属于申请单位或其下级单位"))
    if before_version is not None and before_version != target.version:
        problems.append(Problem(None, "target_user_id", f"用户 {target.username} 的信息在提交后已被修改，请重新填报"))
    if target.status == "deleted":
        problems.append(Problem(None, "target_user_id", f"用户 {target.username} 已删除"))
    elif p.change_type == "close" and target.status == "closed":
        problems.append(Problem(None, "target_user_id", f"用户 {target.username} 已关闭"))
    if p.change_type in ("delete", "close"):
        if after is not None:
            problems.append(Problem(None, "after", f"{CHANGE_NAMES[p.change_type]}用户不填写变更后内容"))
        return problems
    # modify
    if after is None:
        return [*problems, Problem(None, "after", "修改用户须填写要修改的内容")]
    if after.username is not None or after.unit_id is not None:
        problems.append(Problem(None, "after", "修改不能变更用户名或所在单位（调动请关闭原账号后新增）"))
    changes = {k: getattr(after, k) for k in MODIFIABLE if getattr(after, k) is not None}
    if not any(getattr(target, k) != v for k, v in changes.items()):
        problems.append(Problem(None, "after", "没有任何变更"))
    if after.role is not None and (reason := role_allowed_at(after.role, target.unit.level)):
        problems.append(Problem(None, "after.role", reason))
    return problems


def _manager_name(role: Role, unit: UnitFact) -> str:
    manager = manager_unit(role, unit.ref)
    if manager is None:
        return "平台（系统运维方）"
    name = unit.name if manager == unit.id else (unit.parent_name or f"单位 {manager}")
    return f"{name}的系统管理员"


def form5_refusal(actor: Actor, p: Form5, facts: UserFacts) -> str | None:
    """Why ``actor`` may not carry out this Form 5 (UM1), naming who may; None if they may.

    Combinations UM1 forbids outright (a township system administrator) are left to
    :func:`check_form5`, which reports them as a problem of the form, not of the actor."""
    pairs: list[tuple[Role, UnitFact]] = []
    if p.change_type == "add":
        if p.after is not None and p.after.role is not None and facts.target_unit is not None:
            pairs.append((p.after.role, facts.target_unit))
    elif facts.target is not None:
        pairs.append((facts.target.role, facts.target.unit))
        if p.change_type == "modify" and p.after is not None and p.after.role is not None:
            pairs.append((p.after.role, facts.target.unit))
    for role, unit in pairs:
        if role_allowed_at(role, unit.level) is None and not may_manage_user(actor, role, unit.ref):
            return (
                f"{unit.name}（{LEVEL_NAMES[unit.level]}）的{ROLE_NAMES[role]}由{_manager_name(role, unit)}"
                "管理，您无权执行此变更"
            )
    return None
