"""What each of Forms 1–5 says (CM5–CM9, UM2): the payload models, every string, number and list
bounded, so that a fuzzer or a careless client gets a 422 and never a 500, and the Chinese names
of forms, modes and changes the messages use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag, TypeAdapter

from coldchain.core.terms import Role

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


# What a Form 5 "modify" may change about a user (username and unit never: a move is close + add).
MODIFIABLE = ("real_name", "phone", "email", "role", "department")


class Form5(_FormBase):
    """附表5 系统用户变更申请表（UM2）：新增、删除、关闭、修改。"""

    form_type: Literal[5]
    change_type: ChangeType = Field(description="add 新增 / delete 删除 / close 关闭 / modify 修改")
    applicant_department: Name | None = Field(default=None, description="申请人所在部门")
    applicant_email: Email | None = None
    target_user_id: Id | None = Field(default=None, description="删除、关闭、修改的对象")
    after: UserFields | None = Field(default=None, description="变更后")


AnyForm = Form1 | Form2 | Form3 | Form4 | Form5
RegistryForm = Form1 | Form3 | Form4  # the forms that change monitoring hardware


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
FORM_ADAPTER: TypeAdapter[AnyForm] = TypeAdapter(FormPayload)
STORED_ONLY_KEYS = ("before",)  # added by the server at submission, never sent by a client


def stored_payload(payload: Mapping[str, Any]) -> AnyForm:
    """The typed form back from ``forms.payload`` (without what the server added to it)."""
    return FORM_ADAPTER.validate_python({k: v for k, v in payload.items() if k not in STORED_ONLY_KEYS})
