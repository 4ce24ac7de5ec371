"""One error shape for every refusal: ``{"error": {"code", "message", "details"}}``.

``code`` is stable and machine-readable (clients and tests branch on it); ``message`` is Chinese
and says what was wrong, so a site's staff can act on it without calling the county.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import errors as pg_errors
from starlette.exceptions import HTTPException as StarletteHTTPException

from coldchain.core.errors import Refused

log = logging.getLogger("coldchain.api")


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


# Pydantic's error types, in words a user reads.
_VALIDATION_WORDS = {
    "missing": "缺少必填项",
    "extra_forbidden": "不允许的字段",
    "string_type": "应为文本",
    "string_too_short": "太短",
    "string_too_long": "太长",
    "string_pattern_mismatch": "格式不正确",
    "int_type": "应为整数",
    "int_parsing": "应为整数",
    "int_from_float": "应为整数",
    "float_type": "应为数字",
    "float_parsing": "应为数字",
    "decimal_parsing": "应为数字",
    "decimal_type": "应为数字",
    "greater_than": "太小",
    "greater_than_equal": "太小",
    "less_than": "太大",
    "less_than_equal": "太大",
    "bool_type": "应为 true 或 false",
    "bool_parsing": "应为 true 或 false",
    "literal_error": "取值不在允许范围内",
    "enum": "取值不在允许范围内",
    "date_type": "应为日期（YYYY-MM-DD）",
    "date_parsing": "应为日期（YYYY-MM-DD）",
    "date_from_datetime_parsing": "应为日期（YYYY-MM-DD）",
    "datetime_type": "应为时间（ISO 8601）",
    "datetime_parsing": "应为时间（ISO 8601）",
    "datetime_from_date_parsing": "应为时间（ISO 8601）",
    "list_type": "应为列表",
    "dict_type": "应为对象",
    "model_type": "应为对象",
    "model_attributes_type": "应为对象",
    "json_invalid": "不是有效的 JSON",
    "too_short": "项数太少",
    "too_long": "项数太多",
    "value_error": "取值无效",
    "union_tag_invalid": "类型标记无效",
    "union_tag_not_found": "缺少类型标记",
    "finite_number": "应为有限数字",
    "form_type": "表单类型 form_type 应为 1–5",
    "timezone_aware": "应为带时区的时间（如 2026-11-24T10:00:00+08:00）",
}


def describe_validation(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    details: list[dict[str, Any]] = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        kind = str(err.get("type", ""))
        words = _VALIDATION_WORDS.get(kind, "取值无效")
        if kind == "value_error" and err.get("ctx", {}).get("error"):
            words = str(err["ctx"]["error"])
        details.append({"field": ".".join(loc), "problem": words, "type": kind})
    head = "；".join(f"{d['field'] or '请求体'}：{d['problem']}" for d in details[:5])
    more = f"（另有 {len(details) - 5} 处）" if len(details) > 5 else ""
    return f"请求内容不符合要求：{head}{more}", details


def _database_error(exc: psycopg.Error) -> tuple[int, str, str]:
    """Constraint violations are the schema refusing bad data: say so, not 500.

    Our own triggers raise Chinese messages, which are passed on; the rest get a generic one."""
    primary = exc.diag.message_primary or ""
    ours = any("\u4e00" <= ch <= "\u9fff" for ch in primary)
    if exc.sqlstate == "CC001":  # cc_post_movement / cc_reserve: not enough stock (migration 0006)
        return 409, "insufficient_stock", primary
    if isinstance(exc, pg_errors.UniqueViolation):
        return (
            409,
            "duplicate",
            "已存在相同编号或名称的记录" + (f"（{exc.diag.constraint_name}）" if exc.diag.constraint_name else ""),
        )
    if isinstance(exc, pg_errors.ExclusionViolation):
        return 409, "overlap", "与现有记录的有效期重叠（同一探头同一时刻只能绑定一个温区）"
    if isinstance(exc, pg_errors.RestrictViolation):
        return 409, "history_kept", primary if ours else "历史记录不可删除或修改"
    if isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected | pg_errors.LockNotAvailable):
        return 409, "busy", "记录正被他人修改，请稍后重试"
    if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, pg_errors.QueryCanceled):
        # Lost connection, server shutting down, pool exhausted: the transaction did not commit
        # (a commit whose answer was lost is the one unknowable case, hence "please check").
        return 503, "database_unavailable", "数据库连接中断，本次操作未能确认保存，请刷新查看后重试"
    if isinstance(exc, pg_errors.IntegrityError | pg_errors.DataError):
        return 422, "invalid", primary if ours else f"数据不符合要求：{primary}"
    return 500, "internal_error", "服务器内部错误，已记录，请稍后重试"


def install(app: FastAPI) -> None:
    @app.exception_handler(Refused)
    async def _api_error(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = describe_validation(exc.errors())
        return JSONResponse(error_body("invalid_request", message, details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: ("not_found", "没有这个地址"), 405: ("method_not_allowed", "此地址不支持该请求方法")}
        code, message = codes.get(exc.status_code, ("http_error", str(exc.detail)))
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(psycopg.Error)
    async def _database(request: Request, exc: psycopg.Error) -> JSONResponse:
        status, code, message = _database_error(exc)
        if status == 503:
            log.warning("数据库不可用：%s %s（%s）", request.method, request.url.path, type(exc).__name__)
        if status >= 500 and status != 503:
            log.exception("数据库错误：%s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body(code, message), status_code=status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("未处理的错误：%s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal_error", "服务器内部错误，已记录，请稍后重试"), status_code=500)
