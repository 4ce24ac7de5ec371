"""Where stock may go and who must approve it (VT8, VT10), as pure functions over the unit tree.

From the provincial plan (二、（三）2 and 3):
- programme vaccines may be issued to the same level or a lower level, and returned to the level
  above; same-level issues and returns need the approval of the level above;
- vaccination sites (乡级) may not issue to the same level;
- a scrap request is approved by the level above, then the system books it.

The plan states the movement rules for programme vaccines and is silent on the others; the same
rules apply to non-programme vaccines here, because a county that buys them still distributes them
down its own tree and a second rule set would only invite mistakes. "The level above" is the parent
link of the unit tree (韩城市's is the province). A same-level issue crosses two jurisdictions, so it
is approved by the lowest unit above both (for two counties of one city: that city). The province
has no level above: its own scrap is booked directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

from coldchain.core.errors import Refused
from coldchain.core.terms import Level

RANK: dict[str, int] = {"province": 1, "city": 2, "county": 3, "township": 4}


class RuleError(Refused):
    """A movement the rules forbid; the message is for the user, in Chinese.

    A refusal like any other (422 ``rule_violation``), so the web layer needs no handler of its own;
    raising it does no I/O, and the rules stay pure."""

    def __init__(self, message: str) -> None:
        super().__init__(422, "rule_violation", message)


@dataclass(frozen=True)
class Node:
    """A unit with its ancestors from the province down to its parent (empty for the province)."""

    id: int
    level: Level
    ancestors: tuple[int, ...]
    name: str = ""
    active: bool = True

    @property
    def parent_id(self) -> int | None:
        return self.ancestors[-1] if self.ancestors else None


@dataclass(frozen=True)
class Route:
    """How a transfer or scrap is booked: directly, or as a request for ``approver`` to decide."""

    kind: Literal["issue", "return", "scrap"]
    approver: int | None

    @property
    def needs_approval(self) -> bool:
        return self.approver is not None


def lowest_common_ancestor(a: Node, b: Node) -> int:
    """The lowest unit that has both in its jurisdiction (a unit counts as its own ancestor)."""
    chain_a = (*a.ancestors, a.id)
    chain_b = set((*b.ancestors, b.id))
    for unit in reversed(chain_a):
        if unit in chain_b:
            return unit
    raise RuleError("两个单位不在同一单位树中")


def transfer_route(src: Node, dst: Node) -> Route:
    """The route of moving stock from ``src`` to ``dst``, or :class:`RuleError` with the reason."""
    if src.id == dst.id:
        raise RuleError("不能出库给本单位")
    if not dst.active:
        raise RuleError(f"收货单位{dst.name}已停用")
    if src.id in dst.ancestors:
        return Route("issue", None)  # down into one's own jurisdiction
    if dst.id == src.parent_id:
        return Route("return", dst.id)  # back up: the receiving parent approves
    if dst.id in src.ancestors:
        raise RuleError("疫苗只能退回直接上级单位，不能越级退回")
    if RANK[dst.level] < RANK[src.level]:
        raise RuleError("不能出库至上级单位：向上只能退回直接上级")
    if dst.level == src.level and src.level == "township":
        raise RuleError("接种单位不能平级出库（VT8）")
    # Same level, or a lower unit outside one's own jurisdiction: both cross into another
    # jurisdiction, so the unit above both decides.
    return Route("issue", lowest_common_ancestor(src, dst))


def scrap_route(unit: Node) -> Route:
    """Scrap needs the level above (VT10); the province has none and books its own."""
    return Route("scrap", unit.parent_id)


def check_receipt_unit(unit: Node) -> None:
    """Vaccines reach a site only through its CDC: a site cannot book a receipt from a supplier."""
    if unit.level == "township":
        raise RuleError("接种单位的疫苗只能由上级疾控中心出库调入，不能直接采购入库")


def check_usage_unit(unit: Node) -> None:
    """Vaccination usage is booked by the sites that vaccinate (VT7)."""
    if unit.level != "township":
        raise RuleError("接种使用出库只能由接种单位（乡级）登记")


def check_not_expired(kind: str, expiry: date, on: date) -> None:
    """An expired lot may still go back up or be scrapped, but may not be received, issued or used."""
    if on > expiry and kind in {"receipt", "issue", "usage", "vaccination"}:
        raise RuleError(f"该批号已于 {expiry.isoformat()} 失效，不能{_KIND_VERB[kind]}")


_KIND_VERB = {"receipt": "入库", "issue": "出库", "usage": "使用出库", "vaccination": "接种"}


ADJUSTMENT_REASONS: dict[str, str] = {
    "breakage": "破损",
    "loss": "丢失",
    "miscount": "账目差错",
    "found": "盘盈",
    "temperature": "温度异常待处理",
    "other": "其他",
}

SCRAP_REASONS: dict[str, str] = {
    "expired": "过期",
    "breakage": "破损",
    "temperature": "冷链温度异常",
    "quality": "质量问题（召回）",
    "opened": "开启后超时未用完",
    "other": "其他",
}


def count_differences(book: dict[int, int], counted: dict[int, int]) -> dict[int, int]:
    """Per lot, counted − book for every lot whose physical count differs from the books.

    A lot on the books but missing from the count is counted as zero: a count states the whole
    stock, so silence is not agreement."""
    lots = set(book) | set(counted)
    diffs = {lot: counted.get(lot, 0) - book.get(lot, 0) for lot in lots}
    return {lot: d for lot, d in sorted(diffs.items()) if d != 0}


def vials_needed(doses: int, doses_per_vial: int) -> int:
    """The fewest vials that can have given ``doses`` (an opened multi-dose vial counts whole)."""
    return -(-doses // doses_per_vial)
