"""Liveness and counters of the ingester, over plain HTTP.

``GET /healthz`` answers 200 while the ingester can do its job (connected to the broker and the
database) and 503 with the reason otherwise, so a supervisor or a load balancer can act on it.
``GET /metrics`` gives the counters in the Prometheus text format. The server is a few lines of
asyncio rather than a web framework: it must keep answering while the rest of the process is busy,
and it must not pull the API's dependencies into the ingester.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class Metrics:
    messages_received: int = 0
    readings_received: int = 0
    readings_stored: int = 0
    readings_duplicate: int = 0
    readings_unbound: int = 0
    readings_quarantined: int = 0
    readings_rejected: int = 0
    messages_dead_lettered: int = 0
    messages_acked: int = 0
    batches_committed: int = 0
    db_errors: int = 0
    mqtt_connects: int = 0
    read_pauses: int = 0  # times reading from the broker paused because the writer was behind
    # Gauges
    mqtt_connected: bool = False
    db_connected: bool = False
    pending_messages: int = 0
    pending_peak: int = 0  # most messages held at once since start: the memory bound in practice
    last_commit_lag_s: float = 0.0  # receipt of the oldest message of the last batch → its commit
    last_reading_age_s: float = 0.0  # commit → newest reading time of the last batch
    last_commit_at: float = 0.0
    started_at: float = field(default_factory=time.time)

    def health(self) -> tuple[bool, str]:
        if not self.mqtt_connected:
            return False, "未连接 MQTT 代理"
        if not self.db_connected:
            return False, "数据库不可用，暂停确认消息"
        return True, "正常"

    def as_dict(self) -> dict[str, float | int | bool]:
        return dict(vars(self))

    def prometheus(self) -> str:
        lines: list[str] = []
        for name, value in self.as_dict().items():
            kind = (
                "counter"
                if isinstance(value, int)
                and not isinstance(value, bool)
                and name
                not in (
                    "pending_messages",
                    "pending_peak",
                )
                else "gauge"
            )
            metric = f"coldchain_ingest_{name}" + ("_total" if kind == "counter" else "")
            lines.append(f"# TYPE {metric} {kind}")
            lines.append(f"{metric} {float(value)}")
        return "\n".join(lines) + "\n"


async def serve_health(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            path = request.split(b" ")[1].decode("latin-1") if request.count(b" ") >= 2 else ""
            if path == "/healthz":
                ok, reason = metrics.health()
                body = json.dumps({"ok": ok, "reason": reason, **metrics.as_dict()}, ensure_ascii=False)
                status, ctype = ("200 OK" if ok else "503 Service Unavailable"), "application/json; charset=utf-8"
            elif path == "/metrics":
                body, status, ctype = metrics.prometheus(), "200 OK", "text/plain; version=0.0.4"
            else:
                body = "未知路径：仅支持 /healthz 与 /metrics"
                status, ctype = "404 Not Found", "text/plain; charset=utf-8"
            data = body.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
