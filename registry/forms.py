"""Forms 1–5 (CM5–CM9, UM2): what each form says, whether it can be accepted, and carrying it out.

The provincial plan refuses forms whose entries are incomplete or wrong ("信息预录入不完整、不正确的
无法处理"), so every rule is written once here and used twice: when the form is submitted, and
again when a filed form is applied, because the registry may have moved in between (another form
bound the probe, the fridge was stopped). The module is split so that the rules are testable
without a database:

- payload models — the shape of each form, every string, number and list bounded, so that a
  fuzzer or a careless client gets a 422 and never a 500;
- facts and checks — :class:`RegistryFacts` / :class:`UserFacts` are snapshots of exactly the
  registry rows a form names (loaded by :func:`load_registry_facts` / :func:`load_user_facts`), and
  ``check_formN(payload, facts)`` are pure functions returning every problem, in Chinese, with
  its row and field, so a site can correct all of them in one go;
- applying — ``apply_formN`` makes a filed form true in the registry. Nothing is deleted: a swap
  closes one binding interval and opens another, a stop decommissions, a removed user keeps their
  row; the audit triggers record every write under the action the caller names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import psycopg
from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag, TypeAdapter

from coldchain.core.db import fetch_all, fetch_one
from coldchain.core.errors import Refused
from coldchain.core.terms import LEVEL_NAMES, ROLE_NAMES, Level, Role
from registry.auth import SETUP_TOKEN_TTL, open_session, revoke_sessions
from registry.permissions import Actor, UnitRef, manager_unit, may_manage_user, role_allowed_at

# ---------------------------------------------------------------------------------------------
# Payloads

MAX_ID = 2**62
_NO_CONTROL = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+$"  # PostgreSQL text cannot hold NUL; no other control chars

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Serial = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z_-]{1,32}$")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=_NO_CONTROL)]
Remark = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500, pattern=_NO_CONTROL)]
Phone = Annotated[str, StringConstraints(pattern=r"^[0-9+() -]{5,20}$")]
Email = Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s\x00-\x1f]{1,64}@[^@\s\x00-\x1f]{1,189}$")]
Username = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{3,64}$")]
Count = Annotated[int, Field(ge=0, le=1000)]
Mode = Literal["refrigerated", "frozen"]
ChangeType = Literal["add", "delete", "close", "modify"]
FormType = Literal[1, 2, 3, 4, 5]

MODE_NAMES: dict[str, str] = {"refrigerated": "冷藏", "frozen": "冷冻"}
FORM_NAMES: dict[int, str] = {
    1: "附表1 冷链设备参数变更申请单",
    2: "附表2 冷链监测设备安装申请单（硬件）",
    3: "附表3 冷链监测设备安装申请单（软件）",
    4: "附表4 冷链监测设备停用申请单",
    5: "附表5 系统用户变更申请表",
}
CHANGE_NAMES: dict[str, str] = {"add": "新增", "delete": "删除", "close": "关闭", "modify": "修改"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _FormBase(_Strict):
    unit_id: Id = Field(description="申请单位（须在提交人辖区内）")
    submitter_name: Name = Field(description="填报人")
    submitter_phone: Phone = Field(description="填报人联系电话")
    remarks: Remark | None = Field(default=None, description="备注")


class Form1Row(_Strict):
    compartment_id: Id = Field(description="温区（冰箱的冷藏 / 冷冻室）")
    equipment_name_after: Name | None = Field(default=None, description="现使用的冰箱名称（改名时填写）")
    probe_before: Serial = Field(description="更改前使用的探头编码")
    probe_after: Serial = Field(description="现使用的探头编码")
    mode: Mode = Field(description="冷藏 refrigerated / 冷冻 frozen")


class Form1(_FormBase):
    """附表1 参数变更：换探头、改冰箱名称。"""

    form_type: Literal[1]
    rows: Annotated[list[Form1Row], Field(min_length=1, max_length=50)]


class Form2(_FormBase):
    """附表2 硬件安装申请：只是申请，备案即办结。"""

    form_type: Literal[2]
    fridges: Count = Field(description="冰箱个数")
    gateways: Count = Field(description="网关个数")
    probes: Count = Field(description="探头个数")


class Form3Row(_Strict):
    compartment_id: Id
    gateway_serial: Serial = Field(description="网关号")
    probe_serial: Serial = Field(description="探头编码")
    mode: Mode


class Form3(_FormBase):
    """附表3 软件绑定：安装后把探头绑定到温区，执行后即开始采集。"""

    form_type: Literal[3]
    rows: Annotated[list[Form3Row], Field(min_length=1, max_length=50)]
    request_form_id: Id | None = Field(default=None, description="对应的附表2（可选）")


class Form4Equipment(_Strict):
    equipment_id: Id
    stop: bool = Field(description="是否停用")


class Form4Probe(_Strict):
    probe_serial: Serial
    stop: bool = Field(description="是否停用")


class Form4(_FormBase):
    """附表4 停用：设备停用、探头解绑退回县级疾控。"""

    form_type: Literal[4]
    equipment: Annotated[list[Form4Equipment], Field(max_length=50)] = []
    probes: Annotated[list[Form4Probe], Field(max_length=100)] = []


class UserFields(_Strict):
    """变更后的用户信息。新增须填 username、real_name、phone、role、unit_id；修改只填要改的项。"""

    username: Username | None = None
    real_name: Name | None = None
    phone: Phone | None = None
    email: Email | None = None
    role: Role | None = None
    department: Name | None = None
    unit_id: Id | None = None


class Form5(_FormBase):
    """附表5 系统用户变更申请表（UM2）：新增、删除、关闭、修改。"""

    form_type: Literal[5]
    change_type: ChangeType = Field(description="add 新增 / delete 删除 / close 关闭 / modify 修改")
    applicant_department: Name | None = Field(default=None, description="申请人所在部门")
    applicant_email: Email | None = None
    target_user_id: Id | None = Field(default=None, description="删除、关闭、修改的对象")
    after: UserFields | None = Field(default=None, description="变更后")


RegistryForm = Form1 | Form3 | Form4
def _form_tag(value: Any) -> str | None:
    """Tag each variant '附表N', so a validation error reads '附表3.rows.0.probe_serial'."""
    kind = value.get("form_type") if isinstance(value, dict) else getattr(value, "form_type", None)
    return f"附表{kind}" if kind in (1, 2, 3, 4, 5) and not isinstance(kind, bool) else None


FormPayload = Annotated[
    Annotated[Form1, Tag("附表1")]
    | Annotated[Form2, Tag("附表2")]
    | Annotated[Form3, Tag("附表3")]
    | Annotated[Form4, Tag("附表4")]
    | Annotated[Form5, Tag("附表5")],
    Discriminator(_form_tag, custom_error_type="form_type", custom_error_message="form_type 应为 1–5"),
]
FORM_ADAPTER: TypeAdapter[Form1 | Form2 | Form3 | Form4 | Form5] = TypeAdapter(FormPayload)
STORED_ONLY_KEYS = ("before",)  # added by the server at submission, never sent by a client


def stored_payload(payload: Mapping[str, Any]) -> Form1 | Form2 | Form3 | Form4 | Form5:
    """The typed form back from ``forms.payload`` (without what the server added to it)."""
    return FORM_ADAPTER.validate_python({k: v for k, v in payload.items() if k not in STORED_ONLY_KEYS})


# ---------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    row: int | None  # 1-based, within the list the field names
    field: str  # "rows.probe_after", "equipment.equipment_id", "after.role", "fridges"
    problem: str

    def text(self) -> str:
        if self.row is None:
            return self.problem
        section = {"equipment": "设备清单", "probes": "探头清单"}.get(self.field.split(".", 1)[0], "")
        return f"{section}第 {self.row} 行：{self.problem}"


def form_invalid(form_type: int, problems: Sequence[Problem]) -> Refused:
    """422 ``form_invalid``: every problem in the message, and each with row and field in details."""
    texts = [p.text() for p in problems]
    more = f"（另有 {len(texts) - 20} 处）" if len(texts) > 20 else ""
    return Refused(
        422,
        "form_invalid",
        f"{FORM_NAMES.get(form_type, '表单')}填写有误：" + "；".join(texts[:20]) + more,
        details=[asdict(p) for p in problems],
    )


# ---------------------------------------------------------------------------------------------
# Registry facts (Forms 1, 3, 4)


@dataclass(frozen=True)
class UnitFact:
    id: int
    name: str
    level: Level
    parent_id: int | None
    parent_name: str | None = None

    @property
    def ref(self) -> UnitRef:
        return UnitRef(self.id, self.level, self.parent_id)


@dataclass(frozen=True)
class CompartmentFact:
    id: int
    name: str
    mode: Mode
    active: bool
    equipment_id: int
    equipment_name: str
    equipment_unit_id: int
    equipment_active: bool
    bound_probes: tuple[str, ...] = ()  # serials currently bound to it

    @property
    def label(self) -> str:
        return f"「{self.equipment_name} {self.name}」"


@dataclass(frozen=True)
class ProbeFact:
    id: int
    serial: str
    unit_id: int | None
    status: str
    binding_id: int | None = None  # current binding, if any
    compartment_id: int | None = None
    gateway_id: int | None = None


@dataclass(frozen=True)
class GatewayFact:
    id: int
    serial: str
    unit_id: int | None
    status: str


@dataclass(frozen=True)
class EquipmentFact:
    id: int
    name: str
    unit_id: int
    active: bool


@dataclass(frozen=True)
class RequestFact:
    """The Form 2 a Form 3 refers to."""

    id: int
    form_type: int
    unit_id: int
    status: str


@dataclass(frozen=True)
class RegistryFacts:
    unit: UnitFact
    compartments: Mapping[int, CompartmentFact] = field(default_factory=dict)
    probes: Mapping[str, ProbeFact] = field(default_factory=dict)
    gateways: Mapping[str, GatewayFact] = field(default_factory=dict)
    equipment: Mapping[int, EquipmentFact] = field(default_factory=dict)
    request: RequestFact | None = None


def stock_units(unit: UnitFact) -> frozenset[int | None]:
    """Whose hardware a unit may take into use: its own, its parent's (the county keeps the spare
    probes of its townships) and the province's unassigned stock (unit NULL)."""
    return frozenset({unit.id, unit.parent_id, None})


def county_of(unit: UnitFact) -> int:
    """Where stopped hardware goes back to (CM8): a township's county; a county, city or the
    province keeps its own."""
    if unit.level == "township" and unit.parent_id is not None:
        return unit.parent_id
    return unit.id


def _duplicates(values: Iterable[Any]) -> set[Any]:
    return {v for v, n in Counter(values).items() if n > 1}


def _compartment_problems(
    row: int, compartment_id: int, mode: str, facts: RegistryFacts, problems: list[Problem]
) -> CompartmentFact | None:
    """The compartment if it can be used by this unit in this mode; else records why not."""
    c = facts.compartments.get(compartment_id)
    if c is None or c.equipment_unit_id != facts.unit.id:
        problems.append(Problem(row, "rows.compartment_id", f"温区 {compartment_id} 不存在或不属于本单位"))
        return None
    if not (c.active and c.equipment_active):
        problems.append(Problem(row, "rows.compartment_id", f"温区{c.label}已停用"))
        return None
    if mode != c.mode:
        problems.append(Problem(
            row, "rows.mode",
            f"模式不符：温区{c.label}为{MODE_NAMES[c.mode]}，填写为{MODE_NAMES.get(mode, mode)}",
        ))
    return c


def _usable_probe(row: int, fld: str, serial: str, facts: RegistryFacts, problems: list[Problem]) -> ProbeFact | None:
    """A probe that exists, is not scrapped and is the unit's (or its county's or the province's) stock."""
    p = facts.probes.get(serial)
    if p is None:
        problems.append(Problem(row, fld, f"探头 {serial} 不存在"))
        return None
    if p.status == "decommissioned":
        problems.append(Problem(row, fld, f"探头 {serial} 已报废"))
        return None
    if p.unit_id not in stock_units(facts.unit):
        problems.append(Problem(row, fld, f"探头 {serial} 属于其他单位，不能在本单位使用"))
        return None
    return p


def check_form1(p: Form1, facts: RegistryFacts) -> list[Problem]:
    """Probe swaps and renames: the old probe must be the one on that compartment, the new one free."""
    problems: list[Problem] = []
    used: list[str] = []
    for row in p.rows:
        used.extend({row.probe_before, row.probe_after})
    twice = _duplicates(used)
    repeated_compartments = _duplicates(r.compartment_id for r in p.rows)
    new_names: dict[int, set[str]] = {}
    for i, row in enumerate(p.rows, 1):
        if row.compartment_id in repeated_compartments:
            problems.append(Problem(i, "rows.compartment_id", f"温区 {row.compartment_id} 在本表中重复出现"))
        c = _compartment_problems(i, row.compartment_id, row.mode, facts, problems)
        if c is not None and row.equipment_name_after is not None:
            new_names.setdefault(c.equipment_id, set()).add(row.equipment_name_after)
        before = facts.probes.get(row.probe_before)
        if before is None:
            problems.append(Problem(i, "rows.probe_before", f"探头 {row.probe_before} 不存在"))
        elif c is not None and before.compartment_id != c.id:
            problems.append(Problem(i, "rows.probe_before", f"探头 {row.probe_before} 当前并未绑定在温区{c.label}"))
        if row.probe_after == row.probe_before:
            if row.equipment_name_after is None:
                problems.append(Problem(i, "rows.probe_after", "本行没有任何变更（探头相同，也未改冰箱名称）"))
        else:
            after = _usable_probe(i, "rows.probe_after", row.probe_after, facts, problems)
            if after is not None and after.binding_id is not None:
                problems.append(Problem(i, "rows.probe_after", f"探头 {row.probe_after} 已绑定在其他温区，须先解绑"))
        for serial in sorted({row.probe_before, row.probe_after} & twice):
            fld = "rows.probe_before" if serial == row.probe_before else "rows.probe_after"
            problems.append(Problem(i, fld, f"探头 {serial} 在本表中重复出现"))
    for equipment_id, names in sorted(new_names.items()):
        if len(names) > 1:
            problems.append(Problem(
                None, "rows.equipment_name_after",
                f"同一冰箱（设备 {equipment_id}）填写了不同的新名称：{'、'.join(sorted(names))}",
            ))
    return problems


def check_form2(p: Form2) -> list[Problem]:
    if p.fridges == 0 and p.gateways == 0 and p.probes == 0:
        return [Problem(None, "fridges", "冰箱、网关、探头个数至少一项大于 0")]
    return []


def check_form3(p: Form3, facts: RegistryFacts) -> list[Problem]:
    """New bindings: a free probe on an empty compartment through a usable gateway."""
    problems: list[Problem] = []
    if p.request_form_id is not None:
        r = facts.request
        if r is None or r.form_type != 2 or r.unit_id != facts.unit.id or r.status not in ("filed", "applied"):
            problems.append(Problem(None, "request_form_id", f"申请单 {p.request_form_id} 不是本单位已备案的附表2"))
    twice_probes = _duplicates(r.probe_serial for r in p.rows)
    twice_compartments = _duplicates(r.compartment_id for r in p.rows)
    for i, row in enumerate(p.rows, 1):
        if row.compartment_id in twice_compartments:
            problems.append(Problem(i, "rows.compartment_id", f"温区 {row.compartment_id} 在本表中重复出现"))
        if row.probe_serial in twice_probes:
            problems.append(Problem(i, "rows.probe_serial", f"探头 {row.probe_serial} 在本表中重复出现"))
        c = _compartment_problems(i, row.compartment_id, row.mode, facts, problems)
        if c is not None and c.bound_probes:
            problems.append(Problem(
                i, "rows.compartment_id",
                f"该温区已有探头（温区{c.label}已绑定 {'、'.join(c.bound_probes)}），更换请用附表1",
            ))
        g = facts.gateways.get(row.gateway_serial)
        if g is None:
            problems.append(Problem(i, "rows.gateway_serial", f"网关 {row.gateway_serial} 不存在"))
        elif g.status == "decommissioned":
            problems.append(Problem(i, "rows.gateway_serial", f"网关 {row.gateway_serial} 已报废"))
        elif g.unit_id not in stock_units(facts.unit):
            problems.append(Problem(
                i, "rows.gateway_serial", f"网关 {row.gateway_serial} 属于其他单位，不能在本单位使用"))
        probe = _usable_probe(i, "rows.probe_serial", row.probe_serial, facts, problems)
        if probe is not None and probe.binding_id is not None:
            problems.append(Problem(
                i, "rows.probe_serial", f"探头 {row.probe_serial} 已绑定，更换请用附表1，停用请用附表4"))
    return problems


def check_form4(p: Form4, facts: RegistryFacts) -> list[Problem]:
    """Stops: only the unit's own active equipment and its own probes."""
    problems: list[Problem] = []
    if not any(e.stop for e in p.equipment) and not any(x.stop for x in p.probes):
        problems.append(Problem(None, "equipment", "没有选择任何要停用的设备或探头"))
    twice_equipment = _duplicates(e.equipment_id for e in p.equipment)
    for i, e in enumerate(p.equipment, 1):
        if e.equipment_id in twice_equipment:
            problems.append(Problem(i, "equipment.equipment_id", f"设备 {e.equipment_id} 在本表中重复出现"))
        eq = facts.equipment.get(e.equipment_id)
        if eq is None or eq.unit_id != facts.unit.id:
            problems.append(Problem(i, "equipment.equipment_id", f"设备 {e.equipment_id} 不存在或不属于本单位"))
        elif not eq.active:
            problems.append(Problem(i, "equipment.equipment_id", f"设备「{eq.name}」已停用"))
    twice_probes = _duplicates(x.probe_serial for x in p.probes)
    for i, x in enumerate(p.probes, 1):
        if x.probe_serial in twice_probes:
            problems.append(Problem(i, "probes.probe_serial", f"探头 {x.probe_serial} 在本表中重复出现"))
        probe = facts.probes.get(x.probe_serial)
        if probe is None:
            problems.append(Problem(i, "probes.probe_serial", f"探头 {x.probe_serial} 不存在"))
        elif probe.unit_id != facts.unit.id:
            problems.append(Problem(i, "probes.probe_serial", f"探头 {x.probe_serial} 不属于本单位"))
        elif probe.status == "decommissioned":
            problems.append(Problem(i, "probes.probe_serial", f"探头 {x.probe_serial} 已报废"))
    return problems


def check_registry_form(p: RegistryForm, facts: RegistryFacts) -> list[Problem]:
    if isinstance(p, Form1):
        return check_form1(p, facts)
    if isinstance(p, Form3):
        return check_form3(p, facts)
    return check_form4(p, facts)


# ---------------------------------------------------------------------------------------------
# User facts (Form 5)


@dataclass(frozen=True)
class UserFact:
    id: int
    username: str
    real_name: str
    phone: str | None
    email: str | None
    role: Role
    department: str | None
    status: str
    version: int
    unit: UnitFact

    def snapshot(self) -> dict[str, Any]:
        """变更前 — what the form records of the user (never the password hash)."""
        return {
            "id": self.id, "username": self.username, "real_name": self.real_name, "phone": self.phone,
            "email": self.email, "role": self.role, "department": self.department, "unit_id": self.unit.id,
            "unit_name": self.unit.name, "status": self.status, "version": self.version,
        }


@dataclass(frozen=True)
class UserFacts:
    form_unit: UnitFact
    target_unit: UnitFact | None = None  # add: the new user's unit
    target: UserFact | None = None  # delete / close / modify
    under_form_unit: bool = False  # the target unit / user is the applying unit or below it
    username_taken: bool = False


_MODIFIABLE = ("real_name", "phone", "email", "role", "department")


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
        for name, label in (("username", "用户名"), ("real_name", "姓名"), ("phone", "电话"), ("role", "角色"),
                            ("unit_id", "所在单位")):
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
    changes = {k: getattr(after, k) for k in _MODIFIABLE if getattr(after, k) is not None}
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
            return (f"{unit.name}（{LEVEL_NAMES[unit.level]}）的{ROLE_NAMES[role]}由{_manager_name(role, unit)}"
                    "管理，您无权执行此变更")
    return None


# ---------------------------------------------------------------------------------------------
# Loading facts

_UNIT = """
SELECT n.id, n.name, n.level, n.parent_id, p.name AS parent_name
FROM units n LEFT JOIN units p ON p.id = n.parent_id WHERE n.id = %(id)s
"""
_COMPARTMENTS = """
SELECT c.id, c.name, c.mode, c.status = 'active' AS active, e.id AS equipment_id, e.name AS equipment_name,
       e.unit_id AS equipment_unit_id, e.status = 'active' AS equipment_active,
       coalesce(array_agg(p.serial ORDER BY p.serial) FILTER (WHERE p.serial IS NOT NULL), '{}') AS bound_probes
FROM compartments c
JOIN equipment e ON e.id = c.equipment_id
LEFT JOIN probe_bindings_current b ON b.compartment_id = c.id
LEFT JOIN probes p ON p.id = b.probe_id
WHERE c.id = ANY(%(ids)s)
GROUP BY c.id, e.id
"""
_PROBES = """
SELECT p.id, p.serial, p.unit_id, p.status, b.id AS binding_id, b.compartment_id, b.gateway_id
FROM probes p LEFT JOIN probe_bindings_current b ON b.probe_id = p.id
WHERE p.serial = ANY(%(serials)s)
"""
_GATEWAYS = "SELECT id, serial, unit_id, status FROM gateways WHERE serial = ANY(%(serials)s)"
_EQUIPMENT = "SELECT id, name, unit_id, status = 'active' AS active FROM equipment WHERE id = ANY(%(ids)s)"
_REQUEST = "SELECT id, form_type, unit_id, status FROM forms WHERE id = %(id)s"

# Taken at apply time, always in this order (equipment, compartments, probes, gateways), so that
# two forms applied at once wait for each other instead of both acting on what they read.
_LOCK_EQUIPMENT = "SELECT id FROM equipment WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE"
_LOCK_COMPARTMENTS = """
SELECT id FROM compartments WHERE id = ANY(%(ids)s) OR equipment_id = ANY(%(equipment)s) ORDER BY id FOR UPDATE
"""
_LOCK_PROBES = "SELECT id FROM probes WHERE serial = ANY(%(serials)s) ORDER BY id FOR UPDATE"
_LOCK_GATEWAYS = "SELECT id FROM gateways WHERE serial = ANY(%(serials)s) ORDER BY id FOR UPDATE"

_USER = """
SELECT u.id, u.username, u.real_name, u.phone, u.email, u.role, u.department, u.status, u.version,
       n.id AS unit_id, n.name AS unit_name, n.level, n.parent_id, p.name AS parent_name
FROM users u JOIN units n ON n.id = u.unit_id LEFT JOIN units p ON p.id = n.parent_id
WHERE u.id = %(id)s
"""
_UNDER = "SELECT 1 FROM unit_tree WHERE ancestor_id = %(ancestor)s AND descendant_id = %(descendant)s"
_USERNAME_TAKEN = "SELECT 1 FROM users WHERE lower(username) = lower(%(username)s)"
_LOCK_USER = "SELECT id FROM users WHERE id = %(id)s FOR UPDATE"


def load_unit(conn: psycopg.Connection, unit_id: int) -> UnitFact | None:
    row = fetch_one(conn, _UNIT, {"id": unit_id})
    return UnitFact(**row) if row else None


def _mentioned(p: RegistryForm) -> tuple[list[int], list[str], list[str], list[int]]:
    """(compartment ids, probe serials, gateway serials, equipment ids) a form names."""
    if isinstance(p, Form1):
        serials = sorted({s for r in p.rows for s in (r.probe_before, r.probe_after)})
        return [r.compartment_id for r in p.rows], serials, [], []
    if isinstance(p, Form3):
        return ([r.compartment_id for r in p.rows], sorted({r.probe_serial for r in p.rows}),
                sorted({r.gateway_serial for r in p.rows}), [])
    return [], sorted({x.probe_serial for x in p.probes}), [], [e.equipment_id for e in p.equipment]


def load_registry_facts(conn: psycopg.Connection, p: RegistryForm, *, lock: bool = False) -> RegistryFacts:
    """The rows Form 1/3/4 names, as they are now. ``lock`` (apply) holds them until commit."""
    unit = load_unit(conn, p.unit_id)
    if unit is None:
        raise Refused(404, "not_found", "单位不存在或不在您的辖区内")
    compartment_ids, probe_serials, gateway_serials, equipment_ids = _mentioned(p)
    if lock:
        conn.execute(_LOCK_EQUIPMENT, {"ids": equipment_ids})
        conn.execute(_LOCK_COMPARTMENTS, {"ids": compartment_ids, "equipment": equipment_ids})
        conn.execute(_LOCK_PROBES, {"serials": probe_serials})
        conn.execute(_LOCK_GATEWAYS, {"serials": gateway_serials})
    compartments = {
        r["id"]: CompartmentFact(**{**r, "bound_probes": tuple(r["bound_probes"])})
        for r in (fetch_all(conn, _COMPARTMENTS, {"ids": compartment_ids}) if compartment_ids else [])
    }
    probes = {
        r["serial"]: ProbeFact(**r)
        for r in (fetch_all(conn, _PROBES, {"serials": probe_serials}) if probe_serials else [])
    }
    gateways = {
        r["serial"]: GatewayFact(**r)
        for r in (fetch_all(conn, _GATEWAYS, {"serials": gateway_serials}) if gateway_serials else [])
    }
    equipment = {
        r["id"]: EquipmentFact(**r)
        for r in (fetch_all(conn, _EQUIPMENT, {"ids": equipment_ids}) if equipment_ids else [])
    }
    request = None
    if isinstance(p, Form3) and p.request_form_id is not None:
        row = fetch_one(conn, _REQUEST, {"id": p.request_form_id})
        request = RequestFact(**row) if row else None
    return RegistryFacts(unit, compartments, probes, gateways, equipment, request)


def load_target_user(conn: psycopg.Connection, user_id: int) -> UserFact | None:
    row = fetch_one(conn, _USER, {"id": user_id})
    if row is None:
        return None
    unit = UnitFact(
        row.pop("unit_id"), row.pop("unit_name"), row.pop("level"), row.pop("parent_id"), row.pop("parent_name")
    )
    return UserFact(**row, unit=unit)


def _under(conn: psycopg.Connection, ancestor: int, descendant: int) -> bool:
    return fetch_one(conn, _UNDER, {"ancestor": ancestor, "descendant": descendant}) is not None


def load_user_facts(conn: psycopg.Connection, p: Form5, *, lock: bool = False) -> UserFacts:
    form_unit = load_unit(conn, p.unit_id)
    if form_unit is None:
        raise Refused(404, "not_found", "单位不存在或不在您的辖区内")
    if p.change_type == "add":
        after = p.after
        target_unit = load_unit(conn, after.unit_id) if after is not None and after.unit_id is not None else None
        taken = (after is not None and after.username is not None
                 and fetch_one(conn, _USERNAME_TAKEN, {"username": after.username}) is not None)
        under = target_unit is not None and _under(conn, form_unit.id, target_unit.id)
        return UserFacts(form_unit, target_unit=target_unit, under_form_unit=under, username_taken=taken)
    if p.target_user_id is None:
        return UserFacts(form_unit)
    if lock:
        conn.execute(_LOCK_USER, {"id": p.target_user_id})
    target = load_target_user(conn, p.target_user_id)
    under = target is not None and _under(conn, form_unit.id, target.unit.id)
    return UserFacts(form_unit, target=target, under_form_unit=under)


# ---------------------------------------------------------------------------------------------
# Applying (the caller has re-checked the form against facts loaded with lock=True, and named
# the audit action with set_action).

_CLOSE_BINDING = """
UPDATE probe_bindings SET valid = tstzrange(lower(valid), now()) WHERE id = %(id)s AND upper_inf(valid)
"""
_OPEN_BINDING = """
INSERT INTO probe_bindings (probe_id, compartment_id, gateway_id, valid, reason, created_by)
VALUES (%(probe)s, %(compartment)s, %(gateway)s, tstzrange(now(), NULL), %(reason)s, %(actor)s)
RETURNING id
"""
_PROBE_TO_STOCK = "UPDATE probes SET status = 'in_stock', version = version + 1 WHERE id = %(id)s"
_PROBE_INTO_USE = """
UPDATE probes SET status = 'active', unit_id = %(unit)s, version = version + 1 WHERE id = %(id)s
"""
_GATEWAY_INTO_USE = """
UPDATE gateways SET status = 'active', unit_id = %(unit)s, version = version + 1
WHERE id = %(id)s AND (status <> 'active' OR unit_id IS DISTINCT FROM %(unit)s)
"""
_RENAME_EQUIPMENT = """
UPDATE equipment SET name = %(name)s, version = version + 1 WHERE id = %(id)s AND name <> %(name)s
"""
_STOP_EQUIPMENT = """
UPDATE equipment SET status = 'decommissioned', decommissioned_at = now(), version = version + 1
WHERE id = ANY(%(ids)s) AND status = 'active' RETURNING id
"""
_STOP_COMPARTMENTS = """
UPDATE compartments SET status = 'decommissioned', decommissioned_at = now(), version = version + 1
WHERE equipment_id = ANY(%(ids)s) AND status = 'active' RETURNING id
"""
_CLOSE_COMPARTMENT_BINDINGS = """
UPDATE probe_bindings SET valid = tstzrange(lower(valid), now())
WHERE upper_inf(valid) AND compartment_id IN (SELECT id FROM compartments WHERE equipment_id = ANY(%(ids)s))
RETURNING id, probe_id
"""
_CLOSE_PROBE_BINDINGS = """
UPDATE probe_bindings SET valid = tstzrange(lower(valid), now())
WHERE upper_inf(valid) AND probe_id IN (SELECT id FROM probes WHERE serial = ANY(%(serials)s))
RETURNING id, probe_id
"""
_PROBES_BACK_TO_COUNTY = """
UPDATE probes SET status = 'in_stock', unit_id = %(county)s, version = version + 1
WHERE (id = ANY(%(ids)s) OR serial = ANY(%(serials)s)) AND status <> 'decommissioned'
RETURNING serial
"""


def apply_form1(
    conn: psycopg.Connection, p: Form1, facts: RegistryFacts, *, actor_id: int, form_no: str
) -> dict[str, Any]:
    """Swap: the old interval ends and the new one starts at the same instant (now()), so every
    reading before it stays attributed to the old probe and every one after to the new."""
    rows: list[dict[str, Any]] = []
    for row in p.rows:
        c = facts.compartments[row.compartment_id]
        out: dict[str, Any] = {"compartment_id": c.id, "equipment_id": c.equipment_id}
        if row.probe_after != row.probe_before:
            before = facts.probes[row.probe_before]
            after = facts.probes[row.probe_after]
            conn.execute(_CLOSE_BINDING, {"id": before.binding_id})
            conn.execute(_PROBE_TO_STOCK, {"id": before.id})
            new = fetch_one(conn, _OPEN_BINDING, {
                "probe": after.id, "compartment": c.id, "gateway": before.gateway_id,
                "reason": f"{form_no} 更换探头 {before.serial} → {after.serial}", "actor": actor_id,
            })
            assert new is not None
            conn.execute(_PROBE_INTO_USE, {"id": after.id, "unit": facts.unit.id})
            out |= {"closed_binding_id": before.binding_id, "new_binding_id": new["id"],
                    "probe_before": before.serial, "probe_after": after.serial}
        if row.equipment_name_after is not None:
            conn.execute(_RENAME_EQUIPMENT, {"id": c.equipment_id, "name": row.equipment_name_after})
            out |= {"equipment_name_before": c.equipment_name, "equipment_name_after": row.equipment_name_after}
        rows.append(out)
    return {"rows": rows}


def apply_form3(
    conn: psycopg.Connection, p: Form3, facts: RegistryFacts, *, actor_id: int, form_no: str
) -> dict[str, Any]:
    """Bindings valid from now(): the ingester attributes the probe's readings from this instant."""
    bindings: list[dict[str, Any]] = []
    for row in p.rows:
        probe = facts.probes[row.probe_serial]
        gateway = facts.gateways[row.gateway_serial]
        new = fetch_one(conn, _OPEN_BINDING, {
            "probe": probe.id, "compartment": row.compartment_id, "gateway": gateway.id,
            "reason": f"{form_no} 软件绑定", "actor": actor_id,
        })
        assert new is not None
        conn.execute(_PROBE_INTO_USE, {"id": probe.id, "unit": facts.unit.id})
        conn.execute(_GATEWAY_INTO_USE, {"id": gateway.id, "unit": facts.unit.id})
        bindings.append({"binding_id": new["id"], "compartment_id": row.compartment_id,
                         "probe_serial": probe.serial, "gateway_serial": gateway.serial})
    return {"bindings": bindings}


def apply_form4(conn: psycopg.Connection, p: Form4, facts: RegistryFacts) -> dict[str, Any]:
    """Stop: the equipment and its compartments are decommissioned (rows kept), every binding
    involved ends now() — so later readings of those probes are no longer attributed (CM8) — and
    the probes go back to the county's stock."""
    equipment_ids = [e.equipment_id for e in p.equipment if e.stop]
    probe_serials = [x.probe_serial for x in p.probes if x.stop]
    stopped: list[int] = []
    compartments: list[int] = []
    closed: list[dict[str, Any]] = []
    if equipment_ids:
        stopped = [r["id"] for r in fetch_all(conn, _STOP_EQUIPMENT, {"ids": equipment_ids})]
        compartments = [r["id"] for r in fetch_all(conn, _STOP_COMPARTMENTS, {"ids": equipment_ids})]
        closed = fetch_all(conn, _CLOSE_COMPARTMENT_BINDINGS, {"ids": equipment_ids})
    if probe_serials:
        closed += fetch_all(conn, _CLOSE_PROBE_BINDINGS, {"serials": probe_serials})
    county = county_of(facts.unit)
    returned = fetch_all(conn, _PROBES_BACK_TO_COUNTY, {
        "county": county, "ids": sorted({r["probe_id"] for r in closed}), "serials": probe_serials,
    })
    return {
        "equipment_ids": sorted(stopped),
        "compartment_ids": sorted(compartments),
        "closed_binding_ids": sorted(r["id"] for r in closed),
        "probes_returned": sorted(r["serial"] for r in returned),
        "returned_to_unit_id": county,
    }


_INSERT_USER = """
INSERT INTO users (username, real_name, phone, email, unit_id, role, department, created_by)
VALUES (%(username)s, %(real_name)s, %(phone)s, %(email)s, %(unit)s, %(role)s, %(department)s, %(actor)s)
RETURNING id
"""
_CLOSE_USER = """
UPDATE users SET status = 'closed', closed_at = now(), version = version + 1 WHERE id = %(id)s
"""
_DELETE_USER = """
UPDATE users SET status = 'deleted', closed_at = coalesce(closed_at, now()), version = version + 1 WHERE id = %(id)s
"""
_MODIFY_USER = """
UPDATE users SET real_name = coalesce(%(real_name)s, real_name), phone = coalesce(%(phone)s, phone),
                 email = coalesce(%(email)s, email), role = coalesce(%(role)s, role),
                 department = coalesce(%(department)s, department), version = version + 1
WHERE id = %(id)s
"""


def apply_form5(
    conn: psycopg.Connection, p: Form5, facts: UserFacts, *, actor_id: int
) -> tuple[dict[str, Any], str | None]:
    """(result, one-time set-up token for a new user). The token goes back to the caller once and
    is never stored: only its digest is, in auth_sessions. A removed user's row stays."""
    if p.change_type == "add":
        after = p.after
        assert after is not None and facts.target_unit is not None
        row = fetch_one(conn, _INSERT_USER, {
            "username": after.username, "real_name": after.real_name, "phone": after.phone, "email": after.email,
            "unit": facts.target_unit.id, "role": after.role, "department": after.department, "actor": actor_id,
        })
        assert row is not None
        setup = open_session(conn, row["id"], "setup", SETUP_TOKEN_TTL, None, None)
        return ({"change_type": "add", "user_id": row["id"], "username": after.username,
                 "setup_token_expires_at": setup.expires_at.isoformat()}, setup.token)
    target = facts.target
    assert target is not None
    if p.change_type == "modify":
        assert p.after is not None
        changes = {k: getattr(p.after, k) for k in _MODIFIABLE}
        conn.execute(_MODIFY_USER, {"id": target.id, **changes})
        changed = {k: v for k, v in changes.items() if v is not None and getattr(target, k) != v}
        return {"change_type": "modify", "user_id": target.id, "username": target.username, "changed": changed}, None
    conn.execute(_CLOSE_USER if p.change_type == "close" else _DELETE_USER, {"id": target.id})
    revoke_sessions(conn, target.id)
    # A closed account can no longer be told of an alarm (CM15): it leaves the unit's three
    # levels (the audit log keeps that it was there), and the unit must name someone else.
    dropped = fetch_all(conn, _DROP_RESPONSIBLE, {"id": target.id})
    return {"change_type": p.change_type, "user_id": target.id, "username": target.username,
            "responsible_levels_dropped": sorted({(r["unit_id"], r["level"]) for r in dropped})}, None


_DROP_RESPONSIBLE = "DELETE FROM unit_responsibles WHERE user_id = %(id)s RETURNING unit_id, level"
