"""``coldchain simulate``: a deterministic fleet of gateways that speaks the device contract, for
the demo and the tests.

The registry in the database says which gateways exist and which probes hang off them; the
simulator makes up what those probes would measure and publishes it the way real gateways do.
The model is pure (:class:`FleetSimulator` has no clock and no sockets): given the fleet, the seed,
the start and the faults, every run produces the same bytes, so a test can name the exact message
it expects and a demo can be replayed. I/O lives at the edges: :func:`load_fleet` reads the
registry, :func:`publish_forever` talks to the broker, :func:`cmd_simulate` is the CLI glue.

Faults are what make the rest of the system worth watching: a power cut that warms a fridge past
8 ℃ over a few hours, a failing freezer, a drifting or silent probe, a gateway on battery or with
weak signal, and a gateway that drops off the network and later uploads what it buffered (each
reading with its own timestamp, which is the case the ingester must not get wrong). A share of
messages can be replaced by garbage, because real gateways send garbage.

The package: ``_fleet`` (the registry's gateways and probes, durations and faults), ``_model``
(what each probe measures and each gateway sends, pure), ``_publish`` (the broker and the CLI).
"""

from ingest.simulate._fleet import (
    BUFFER_CHUNK,
    FAULT_KINDS,
    FAULT_NAMES,
    GATEWAY_FAULTS,
    MALFORMED_KINDS,
    PROBE_FAULTS,
    UNREGISTERED_GATEWAY,
    Fault,
    Fleet,
    SimGateway,
    SimProbe,
    format_duration,
    load_fleet,
    parse_duration,
    parse_fault,
    random_faults,
)
from ingest.simulate._model import FleetSimulator, Outgoing
from ingest.simulate._publish import cmd_simulate, configure_parser, publish_forever

__all__ = [
    "BUFFER_CHUNK",
    "FAULT_KINDS",
    "FAULT_NAMES",
    "GATEWAY_FAULTS",
    "MALFORMED_KINDS",
    "PROBE_FAULTS",
    "UNREGISTERED_GATEWAY",
    "Fault",
    "Fleet",
    "FleetSimulator",
    "Outgoing",
    "SimGateway",
    "SimProbe",
    "cmd_simulate",
    "configure_parser",
    "format_duration",
    "load_fleet",
    "parse_duration",
    "parse_fault",
    "publish_forever",
    "random_faults",
]
