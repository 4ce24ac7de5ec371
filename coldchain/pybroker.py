"""A Python MQTT broker (amqtt) for machines without Mosquitto.

Run as a child process by :mod:`coldchain.services`, so that the broker has its own event loop
and a crash of the system under test cannot take the broker down with it (or the reverse).

Written for amqtt 0.12: ``plugins`` maps a plugin's dotted class path to the fields of its
``Config`` dataclass, and replaces amqtt's default plugin set (event and packet loggers, ``$SYS``
topics), so only anonymous authentication is loaded. The broker logs errors only, and exits with
status 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

log = logging.getLogger("coldchain.pybroker")

#: Seconds that amqtt gets to close its sessions and listeners before the process exits anyway.
SHUTDOWN_TIMEOUT = 5.0


def broker_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def _not_a_probe(record: logging.LogRecord) -> bool:
    # A connection that closes without sending anything (a port probe, such as the readiness
    # check in coldchain.services) is logged by amqtt as an error; it is none.
    return not record.getMessage().startswith("No data from ")


def configure_logging() -> None:
    logging.basicConfig(level=logging.ERROR, format="pybroker %(levelname)s %(name)s: %(message)s")
    logging.getLogger("amqtt.broker").addFilter(_not_a_probe)


async def serve(port: int, host: str = "127.0.0.1") -> None:
    from amqtt.broker import Broker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before the listener opens: whoever sees the port open may send SIGTERM straight away.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    broker = Broker(broker_config(host, port))
    await broker.start()
    await stop.wait()
    try:
        await asyncio.wait_for(broker.shutdown(), SHUTDOWN_TIMEOUT)
    except TimeoutError:
        log.error("amqtt did not shut down within %s s; exiting anyway", SHUTDOWN_TIMEOUT)
    except Exception:
        log.exception("amqtt shutdown failed; exiting anyway")


def main() -> None:
    parser = argparse.ArgumentParser(description="内置 MQTT 代理（amqtt）")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    configure_logging()
    asyncio.run(serve(args.port, args.host))


if __name__ == "__main__":
    main()
