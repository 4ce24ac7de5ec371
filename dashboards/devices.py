"""The device page (issue #7): one chart per compartment of a device — temperature with the limits,
the min/max band when aggregated, shaded alarm intervals, thermometer readings as markers — over a
small panel of the gateway's power and offline periods; 24 h / 7 d / 30 d / custom ranges. The
device's alarms not yet closed are listed first, and every alarm line links to its alarm page.

The first chart comes with the page (the same JSON as ``GET /api/v1/compartments/{id}/series``,
drawn by the same script that draws every later fetch, so the two cannot disagree); zooming in
fetches that range again, which brings finer data (raw readings below a week).

The charts are history: read from the streaming replica when one is configured (issue #18), with
a note when it is behind (:func:`dashboards.reports.replica_note`; the page's later fetches update
it from their ``X-Coldchain-Replica-Lag`` header). The device, its compartments and its open
alarms — which a person acts on from here — are read from the primary.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from alarms.queries import INBOX_TABS, list_alarms
from alarms.rules import KIND_NAMES, SEVERITY_NAMES
from analytics.series import MAX_RANGE, compartment_row, compartment_series
from api.deps import LAG_HEADER, Conn, ReadConn, lag_headers, replica_read, unit_in_scope
from api.routes.series import SeriesOut
from coldchain.core.db import fetch_all, fetch_one
from dashboards.confirm import STATES
from dashboards.reports import NOTE_AFTER, replica_note
from dashboards.web import PageError, PageUser, render

router = APIRouter(include_in_schema=False)

Range = Literal["24h", "7d", "30d"]
RANGES: dict[str, tuple[timedelta, str]] = {
    "24h": (timedelta(hours=24), "24 小时"),
    "7d": (timedelta(days=7), "7 天"),
    "30d": (timedelta(days=30), "30 天"),
}
KIND_LABELS = {
    "fridge": "冰箱",
    "freezer": "冰柜",
    "medical_fridge": "医用冷藏柜",
    "cold_room": "冷库",
    "vehicle": "冷藏车",
}

_EQUIPMENT = """
SELECT e.id, e.name, e.kind, e.brand, e.model, e.asset_no, e.plate_no, e.status, e.unit_id, u.name AS unit_name
FROM equipment e JOIN units u ON u.id = e.unit_id
WHERE e.id = %(id)s
"""
# Active compartments first; a decommissioned one still has its history to show.
_COMPARTMENTS = """
SELECT c.id, c.status, p.serial AS probe_serial, g.serial AS gateway_serial
FROM compartments c
LEFT JOIN probe_bindings_current b ON b.compartment_id = c.id
LEFT JOIN probes p ON p.id = b.probe_id
LEFT JOIN gateways g ON g.id = b.gateway_id
WHERE c.equipment_id = %(id)s
ORDER BY c.status, c.id, p.serial
"""


@router.get("/devices/{equipment_id}", response_class=HTMLResponse)
def device_page(
    request: Request,
    equipment_id: int,
    user: PageUser,
    conn: Conn,
    read: ReadConn,
    span: Annotated[Range, Query(alias="range", description="24h / 7d / 30d")] = "24h",
) -> HTMLResponse:
    equipment = fetch_one(conn, _EQUIPMENT, {"id": equipment_id}) if 1 <= equipment_id <= 2**62 else None
    if equipment is None or not unit_in_scope(conn, user, equipment["unit_id"]):
        raise PageError(404, "设备不存在或不在您的辖区内")
    now = datetime.now(UTC)
    start = now - RANGES[span][0]
    # One row per compartment and current probe (a cold room may have several).
    found: dict[int, dict[str, Any]] = {}
    for row in fetch_all(conn, _COMPARTMENTS, {"id": equipment_id}):
        c = found.setdefault(row["id"], {"id": row["id"], "status": row["status"], "probes": [], "gateways": []})
        if row["probe_serial"]:
            c["probes"].append(row["probe_serial"])
        if row["gateway_serial"] and row["gateway_serial"] not in c["gateways"]:
            c["gateways"].append(row["gateway_serial"])
    compartments = list(found.values())
    for c in compartments:
        comp = compartment_row(conn, c["id"])
        assert comp is not None
        series = compartment_series(read, comp, start, now, now)
        c["series"] = SeriesOut.model_validate(series).model_dump(mode="json")
    # The device's alarms not yet closed, each a link: from here a person acknowledges or closes.
    open_alarms = [
        {**a, "kind_name": KIND_NAMES.get(a["kind"], a["kind"]), "severity_name": SEVERITY_NAMES.get(a["severity"], "")}
        for a in list_alarms(
            conn, user.unit_id, equipment_id=equipment_id, states=INBOX_TABS["open"], order="severity", limit=20
        )
    ]
    page = render(
        request,
        "device.html",
        user,
        plotly=True,
        equipment=equipment,
        kind_label=KIND_LABELS.get(equipment["kind"], equipment["kind"]),
        compartments=compartments,
        ranges=[(key, label) for key, (_, label) in RANGES.items()],
        span=span,
        max_days=MAX_RANGE.days,
        open_alarms=open_alarms,
        states=STATES,
        replica_note=replica_note(replica_read(request)),
        lag_header=LAG_HEADER,
        note_after=NOTE_AFTER,
    )
    page.headers.update(lag_headers(request))
    return page
