"""WeChat's API server as the tests meet it: ``/sns/oauth2/access_token`` behaving as the real
one does — a code is good once and yields one openid; an unknown or used code, or a wrong
appid/secret, gets errcode 40029 — plus ``/cgi-bin/token`` and the template-message endpoint.
WeChat is outside this system (and this machine has no internet); everything on our side of the
call stays real."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

APPID, SECRET = "wx0123456789abcdef", "account-secret-for-tests"
ACCESS_TOKEN = "access-token-for-tests"


class FakeWechat:
    def __init__(self) -> None:
        self.codes: dict[str, str] = {}
        self.requests: list[dict[str, list[str]]] = []
        self.templates: list[dict[str, object]] = []  # template messages received
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                """``/cgi-bin/message/template/send?access_token=…`` — only with the token issued below."""
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if parts.path == "/cgi-bin/message/template/send" and query.get("access_token") == [ACCESS_TOKEN]:
                    fake.templates.append(json.loads(raw))
                    self._answer({"errcode": 0, "errmsg": "ok", "msgid": len(fake.templates)})
                else:
                    self._answer({"errcode": 40001, "errmsg": "invalid credential"})

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                fake.requests.append(query)
                if parts.path == "/cgi-bin/token":
                    good = query.get("appid") == [APPID] and query.get("secret") == [SECRET]
                    self._answer({"access_token": ACCESS_TOKEN, "expires_in": 7200} if good else {"errcode": 40013})
                    return
                ok = (
                    parts.path == "/sns/oauth2/access_token"
                    and query.get("appid") == [APPID]
                    and query.get("secret") == [SECRET]
                    and query.get("grant_type") == ["authorization_code"]
                )
                openid = fake.codes.pop(query.get("code", [""])[0], None) if ok else None
                body = (
                    {"access_token": "AT", "expires_in": 7200, "openid": openid, "scope": "snsapi_base"}
                    if openid
                    else {"errcode": 40029, "errmsg": "invalid code"}
                )
                self._answer(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def env(self) -> dict[str, str]:
        """The COLDCHAIN_* settings that point the API at this server (plain http on loopback,
        which only the tests' explicit escape hatch lets through)."""
        return {
            "COLDCHAIN_WECHAT_APPID": APPID,
            "COLDCHAIN_WECHAT_SECRET": SECRET,
            "COLDCHAIN_WECHAT_API_BASE": self.base,
            "COLDCHAIN_OUTBOUND_ALLOW_INSECURE_LOOPBACK": "true",
        }

    def issue(self, code: str, openid: str) -> str:
        self.codes[code] = openid
        return code

    def code_for(self, openid: str) -> dict[str, str]:
        """A request body carrying a fresh code, as for a WeChat user who just opened the page."""
        return {"code": self.issue(f"code-{secrets.token_hex(8)}", openid)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
