"""A WeCom group robot (企业微信群机器人) webhook as the tests meet it, over real HTTP: it takes
``POST /cgi-bin/webhook/send?key=…`` with a JSON body and answers ``{"errcode": 0}``, or — when
told to be down — HTTP 500, or WeCom's own rate-limit answer (errcode 45009). It records every
request with the time it arrived, so tests can count messages per robot and per minute."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    key: str
    body: dict[str, Any]
    at: float  # time.time()
    headers: dict[str, str]

    @property
    def content(self) -> str:
        markdown = self.body.get("markdown")
        return str(markdown.get("content", "")) if isinstance(markdown, dict) else json.dumps(self.body)


class FakeWecom:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.mode = "up"  # up | down (HTTP 500) | limited (errcode 45009)
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                query = parse_qs(urlsplit(self.path).query)
                if fake.mode == "down":
                    self.send_response(500)
                    self.end_headers()
                    return
                answer = (
                    {"errcode": 45009, "errmsg": "api freq out of limit"}
                    if fake.mode == "limited"
                    else {"errcode": 0, "errmsg": "ok"}
                )
                if fake.mode == "up":
                    with fake.lock:
                        fake.received.append(
                            Received(
                                query.get("key", [""])[0], json.loads(raw), time.time(), dict(self.headers.items())
                            )
                        )
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, key: str = "robot-1") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/cgi-bin/webhook/send?key={key}"

    def messages(self, key: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.received if key is None or r.key == key]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
