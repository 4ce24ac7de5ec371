"""Facts: snapshots of exactly the registry rows a form names, as plain records, so that every
rule of :mod:`registry.forms.hardware_checks` and :mod:`registry.forms.user_checks` is a pure
function testable without a database. :mod:`registry.forms.loading` reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coldchain.core.terms import Level, Role
from registry.forms.payloads import Mode
from registry.permissions import UnitRef


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
            "id": self.id,
            "username": self.username,
            "real_name": self.real_name,
            "phone": self.phone,
            "email": self.email,
            "role": self.role,
            "department": self.department,
            "unit_id": self.unit.id,
            "unit_name": self.unit.name,
            "status": self.status,
            "version": self.version,
        }


@dataclass(frozen=True)
class UserFacts:
    form_unit: UnitFact
    target_unit: UnitFact | None = None  # add: the new user's unit
    target: UserFact | None = None  # delete / close / modify
    under_form_unit: bool = False  # the target unit / user is the applying unit or below it
    username_taken: bool = False
