"""The demo's stand-in for a WeCom group robot, and the fault that gives it something to say.

Why: a newcomer running ``./dev run`` has no WeCom group, and this machine may not reach WeCom at
all; without a robot every notification "failed" and the on-call loop — message, acknowledgement,
resolution — could not be seen (issue #17). So, when no robot is configured, ``coldchain run``
starts this stand-in on a loopback port, points the scheduler's fallback robot at it (the outbound
rule lets literal loopback addresses through only with
``COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK``, which is set for the scheduler child alone), and
injects one power cut right after the simulator's back-fill. The robot answers like WeCom
(``{"errcode": 0}``) and shows what it received on a page, newest first, labelled as a stand-in.

It is a demo part of the composition root: nothing in a deployment uses it.
"""

from __future__ import annotations

import html
import json
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from coldchain.core import db
from coldchain.core.terms import BEIJING

KEEP = 200
"""Messages kept for the page: the demo's first hours, not a log."""

FAULT_AFTER_BACKFILL_S = 30
FAULT_MINUTES = 2


@dataclass(frozen=True)
class Received:
    at: datetime
    kind: str
    content: str
    mentioned: tuple[str, ...]


class StandInRobot:
    """A WeCom robot look-alike on 127.0.0.1: POST takes a message, GET / shows them."""

    def __init__(self, port: int = 0) -> None:
        self.messages: deque[Received] = deque(maxlen=KEEP)
        self.lock = threading.Lock()
        robot = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), 1 << 16)
                robot.take(self.rfile.read(length))
                self._answer(200, "application/json", b'{"errcode":0,"errmsg":"ok"}')

            def do_GET(self) -> None:
                self._answer(200, "text/html; charset=utf-8", robot.page().encode())

            def _answer(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return  # the run's log is for the services

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-robot", daemon=True)

    @property
    def url(self) -> str:
        """The page; the robot URL the scheduler posts to is :attr:`webhook`."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    @property
    def webhook(self) -> str:
        return f"{self.url}cgi-bin/webhook/send?key=demo-stand-in"

    def start(self) -> StandInRobot:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take(self, raw: bytes) -> None:
        """Keep one request as WeCom would show it: markdown or text, with its @mentions."""
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = {"msgtype": "text", "text": {"content": raw.decode("utf-8", "replace")}}
        kind = str(body.get("msgtype", "?")) if isinstance(body, dict) else "?"
        part = body.get(kind, {}) if isinstance(body, dict) else {}
        content = str(part.get("content", "")) if isinstance(part, dict) else ""
        mentioned = tuple(str(m) for m in part.get("mentioned_mobile_list", [])) if isinstance(part, dict) else ()
        with self.lock:
            self.messages.appendleft(Received(datetime.now(BEIJING), kind, content, mentioned))

    def page(self) -> str:
        """Phone-sized, refreshing every 5 s; plain HTML, nothing from elsewhere."""
        with self.lock:
            shown = list(self.messages)
        items = "".join(
            f"<li><time>{m.at:%m-%d %H:%M:%S}</time> <b>{html.escape(m.kind)}</b>"
            + (f" @{html.escape('、'.join(m.mentioned))}" if m.mentioned else "")
            + f"<pre>{html.escape(m.content)}</pre></li>"
            for m in shown
        )
        empty = "<p>还没有消息。模拟器回填完成后约半分钟会注入一次停电故障，报警会出现在这里。</p>"
        return (
            '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            '<meta http-equiv="refresh" content="5"><title>演示用企业微信群机器人（替身）</title>'
            "<style>body{font:15px/1.5 sans-serif;margin:12px;max-width:640px}li{list-style:none;"
            "border-bottom:1px solid #ddd;padding:8px 0}pre{white-space:pre-wrap;margin:4px 0}"
            "time{color:#888}</style></head><body>"
            "<h1>演示用企业微信群机器人（替身）</h1>"
            "<p>本页只在演示中出现：系统未配置企业微信群机器人时，报警通知发到这里。"
            "消息中的链接打开报警页，可登录后确认、关闭。</p>"
            f"<ul>{items}</ul>{'' if shown else empty}</body></html>"
        )


def demo_fault(gateway_serial: str, backfill_minutes: float) -> str:
    """The simulator's ``--fault`` for a power cut on ``gateway_serial`` starting half a minute
    after the back-fill ends: the gateway reports battery power at once (an alarm without delay),
    and mains comes back two minutes later, so the loop closes within minutes."""
    start = backfill_minutes + FAULT_AFTER_BACKFILL_S / 60
    return f"power_cut:{gateway_serial}:{start:g}m:{FAULT_MINUTES}m"


def demo_robot_env(robot: StandInRobot) -> dict[str, str]:
    """What the scheduler child needs to send to the stand-in: it as the fallback robot, and the
    loopback exception of the outbound rule (for this child alone)."""
    return {"COLDCHAIN_WECOM_WEBHOOK_URL": robot.webhook, "COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK": "true"}


def first_gateway(url: str) -> str:
    """The demo fault's gateway: the first one with probes behind it."""
    with db.connect(url) as conn:
        row = conn.execute(
            """SELECT g.serial FROM gateways g
               WHERE EXISTS (SELECT 1 FROM probe_bindings_current b WHERE b.gateway_id = g.id)
               ORDER BY g.serial LIMIT 1"""
        ).fetchone()
    if row is None:
        raise SystemExit("演示省份中没有绑定了探头的网关")
    return str(row[0])
