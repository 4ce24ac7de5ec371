"""WeChat official-account web authorisation (网页授权): a one-time ``code`` from WeChat's browser
is exchanged, server to server, for the user's ``openid``.

The openid is never taken from the client: a client could claim anyone's. Only the exchange,
made with the account's secret, proves which WeChat user is at the phone. The API base is a
setting so that a test or a staging deployment can point it at its own server; the request goes
through :mod:`coldchain.core.outbound` (https to an allowed host, never an internal address), and no
error carries the URL, whose query holds the secret.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from coldchain.core import outbound
from coldchain.core.errors import Refused
from coldchain.core.settings import Settings


def openid_for_code(settings: Settings, code: str) -> str:
    if not settings.wechat_appid or not settings.wechat_secret:
        raise Refused(
            503,
            "wechat_not_configured",
            "未配置微信公众号（COLDCHAIN_WECHAT_APPID、COLDCHAIN_WECHAT_SECRET），暂不能使用微信登录或绑定",
        )
    query = urlencode(
        {
            "appid": settings.wechat_appid,
            "secret": settings.wechat_secret,
            "code": code,
            "grant_type": "authorization_code",
        }
    )
    url = f"{settings.wechat_api_base}/sns/oauth2/access_token?{query}"
    try:
        status, raw = outbound.request("GET", url, outbound.policy_of(settings), timeout=5)
        body = json.loads(raw) if status == 200 else None
    except outbound.OutboundRefused as exc:
        raise Refused(502, "wechat_unreachable", f"微信接口地址不可用：{exc}，请联系系统管理员") from None
    except (OSError, ValueError):
        raise Refused(502, "wechat_unreachable", "微信服务暂时无法访问，请稍后重试") from None
    if body is None:
        raise Refused(502, "wechat_unreachable", "微信服务暂时无法访问，请稍后重试")
    openid = body.get("openid") if isinstance(body, dict) else None
    if not isinstance(openid, str) or not openid:
        errcode = body.get("errcode") if isinstance(body, dict) else None
        raise Refused(
            401, "wechat_code_invalid", f"微信授权码无效、已使用或已过期（errcode {errcode}），请重新打开页面"
        )
    return openid
