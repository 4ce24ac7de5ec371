"""A form's problems: each with its row and field, and all of them in one Chinese message, so a
site can correct every entry in one go instead of resubmitting once per mistake.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from coldchain.core.errors import Refused
from registry.forms.payloads import FORM_NAMES


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
