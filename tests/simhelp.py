"""A small fleet for the simulator tests (tests/ingest/test_simulate.py,
test_simulate_publish.py): four gateways whose probes cover every mode and kind of equipment,
a start at midnight on a Monday in Beijing, and running a simulator for some ticks.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from coldchain.core.terms import BEIJING
from ingest.simulate import Fleet, FleetSimulator, Outgoing, SimGateway, SimProbe

START = datetime(2026, 11, 23, 0, 0, tzinfo=BEIJING)  # a Monday, midnight in Beijing
MINUTE = timedelta(minutes=1)


def _probe(serial: str, mode: str, kind: str) -> SimProbe:
    if mode == "refrigerated":
        return SimProbe(serial, "refrigerated", kind, 2.0, 8.0)
    return SimProbe(serial, "frozen", kind, None, -15.0)


FLEET: Fleet = (
    SimGateway("10001", (_probe("200001", "refrigerated", "fridge"), _probe("200002", "frozen", "fridge"))),
    SimGateway("10002", (_probe("200003", "refrigerated", "vehicle"),)),
    SimGateway(
        "10003",
        (
            _probe("200004", "frozen", "freezer"),
            _probe("200005", "refrigerated", "medical_fridge"),
            _probe("200006", "refrigerated", "cold_room"),
        ),
    ),
    SimGateway("10004", (_probe("200007", "frozen", "cold_room"), _probe("200008", "refrigerated", "fridge"))),
)
Tick = tuple[datetime, list[Outgoing]]


def _run(sim: FleetSimulator, ticks: int) -> list[Tick]:
    out = []
    for _ in range(ticks):
        messages = sim.step()
        out.append((sim.now, messages))
    return out
