"""Who may do what (UM1, RS1), as pure functions over small records, so the whole permission
matrix is tested without a server and every route asks the same questions.

UM1, from the provincial plan (三、用户管理):
- a unit's system administrator is made by the platform and managed by the level above;
- business administrators are made and managed by their own unit's system administrator;
- townships have no system administrator: the county makes and manages their business
  administrators.
Two roles the plan implies but does not name are added on the same principle: the provincial
health authority's read-only supervisor (managed by the province's system administrator) and an
analyst (managed like a business administrator of the unit). "The level above" is the parent
link, never a code prefix: 韩城市's level above is the province.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from coldchain.core.errors import forbidden
from coldchain.core.terms import Level, Role

ROLES: tuple[Role, ...] = get_args(Role)
LEVELS: tuple[Level, ...] = get_args(Level)


WRITER_ROLES: frozenset[str] = frozenset({"system_admin", "business_admin"})


@dataclass(frozen=True)
class UnitRef:
    id: int
    level: Level
    parent_id: int | None


@dataclass(frozen=True)
class Actor:
    user_id: int
    role: Role
    unit: UnitRef


def role_allowed_at(role: Role, level: Level) -> str | None:
    """None if a user of ``role`` may exist at a unit of ``level``, else the reason."""
    if role == "system_admin" and level == "township":
        return "乡级及以下单位不设系统管理员（UM1），其业务管理员由县级创建和管理"
    if role == "supervisor" and level != "province":
        return "督导（只读）角色属于省级卫生健康主管部门，只能设在省级单位"
    return None


def manager_unit(role: Role, unit: UnitRef) -> int | None:
    """The unit whose system administrator manages a user of ``role`` at ``unit`` (None: the platform)."""
    if role == "system_admin":
        return unit.parent_id  # the level above; the province's own is the platform's
    if unit.level == "township":
        return unit.parent_id  # the county manages township users
    return unit.id  # supervisor (province), business administrator, analyst: their own unit's


def may_manage_user(actor: Actor, role: Role, unit: UnitRef) -> bool:
    """May ``actor`` create, close, delete or change a user of ``role`` at ``unit``?"""
    if actor.role != "system_admin" or role_allowed_at(role, unit.level) is not None:
        return False
    manager = manager_unit(role, unit)
    return manager is not None and manager == actor.unit.id


def may_write(actor: Actor) -> bool:
    """Supervisors inspect and analysts read; only administrators change data (RS1)."""
    return actor.role in WRITER_ROLES


def require_may_write(actor: Actor) -> None:
    """Refuse a read-only role's write (403), with the one message every write answers it with."""
    if not may_write(actor):
        raise forbidden("只读角色（督导、分析员）不能修改数据")
