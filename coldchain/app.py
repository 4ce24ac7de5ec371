"""The FastAPI application behind ``coldchain api``: everything under ``/api/v1``.

Routes are plain (synchronous) functions over a pooled psycopg connection: FastAPI runs them in
its thread pool, and one request is one transaction. Later issues add their routers here. With
``COLDCHAIN_READ_DATABASE_URL`` a second pool, on the streaming replica, serves the reads that
may be a few seconds old (:func:`open_read_pool`, :data:`api.deps.ReadConn`).

The interactive docs (``/api/v1/docs``) load Swagger UI from the app itself, from the files the
``fastapi-offline`` package ships (:func:`install_docs`): FastAPI's default page fetches them
from a CDN and is blank on an intranet, on a clinic's network, or with the CDN blocked.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from psycopg_pool import ConnectionPool

from api import errors
from api.readonly import refuse_read_only_writes
from api.routes import (
    alarm_settings,
    alarms,
    audit,
    auth,
    board,
    catalogue,
    equipment,
    forms,
    hardware,
    logins,
    lots,
    plans,
    readings,
    reports,
    series,
    stock,
    thermometer,
    trace,
    transfers,
    units,
    users,
)
from coldchain.core import db
from coldchain.core.migrate import require_current
from coldchain.core.outbound import mask_url
from coldchain.core.settings import Settings
from dashboards import PAGES, web

API_PREFIX = "/api/v1"
DOCS_URL = f"{API_PREFIX}/docs"
DOCS_STATIC = f"{API_PREFIX}/docs-static"
SWAGGER_UI_FILES = Path(fastapi_offline.__file__).parent / "static"

log = logging.getLogger("coldchain.api")


def install_docs(app: FastAPI) -> None:
    """Swagger UI at :data:`DOCS_URL` with its script, style sheet and icon from
    :data:`DOCS_STATIC` on this server. The validator badge is off: it would send the document's
    address to validator.swagger.io."""
    app.mount(DOCS_STATIC, StaticFiles(directory=SWAGGER_UI_FILES), name="docs-static")

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )


def open_read_pool(read_url: str, *, pool_size: int) -> ConnectionPool:
    """The pool of the streaming replica (``COLDCHAIN_READ_DATABASE_URL``), for reports and the
    devices' history (:data:`api.deps.ReadConn`).

    Unlike the primary's pool it is opened without waiting: the replica is an optimisation, and
    its being down must not keep the API — the live board, the alarms — from starting. Until it
    answers, those reads go to the primary (each after :data:`api.deps.READ_WAIT`); the pool
    keeps trying in the background. The one probe here only tells the operator, in the log,
    what the doctor would say: unreachable, or not a replica at all. The address is logged
    without user or password."""
    read_pool = db.pool(read_url, application="coldchain-api-read", max_size=pool_size)
    read_pool.open(wait=False)
    shown = mask_url(read_url)
    try:
        with psycopg.connect(read_url, connect_timeout=5, application_name="coldchain-api-read") as probe:
            row = probe.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.OperationalError:
        log.warning(
            "只读副本 %s 暂时无法连接：报告与历史曲线暂由主库提供，副本可连接后自动改回"
            "（运行 coldchain doctor 查看原因；相关设置：COLDCHAIN_READ_DATABASE_URL）",
            shown,
        )
        return read_pool
    if not (row and row[0]):
        log.warning(
            "COLDCHAIN_READ_DATABASE_URL %s 不是只读副本（pg_is_in_recovery() 为 false）：报告与历史曲线从该库读取，"
            "请确认它就是主库或其流复制副本（coldchain doctor）",
            shown,
        )
    return read_pool


def create_app(settings: Settings, database_url: str, *, pool_size: int = 10) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        require_current(database_url)
        pool = db.pool(database_url, application="coldchain-api", max_size=pool_size)
        pool.open(wait=True, timeout=30)
        app.state.pool = pool
        read_url = settings.read_database_url
        read_pool = open_read_pool(read_url, pool_size=pool_size) if read_url else None
        app.state.read_pool = read_pool
        try:
            yield
        finally:
            if read_pool is not None:
                read_pool.close()
            pool.close()

    app = FastAPI(
        title="冷链监测与疫苗追溯 API",
        version="1",
        description=(
            "陕西省疫苗追溯和冷链监测信息系统。错误统一为 "
            '`{"error": {"code": 稳定代码, "message": 中文说明, "details": …}}`。'
            "网页用会话 Cookie（写请求带 X-CSRF-Token 头），API 客户端用 Bearer 令牌。"
        ),
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # install_docs: the same page, without the CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    install_docs(app)

    @app.get(f"{API_PREFIX}/health", tags=["系统"], summary="存活检查")
    def health() -> dict[str, str]:
        with app.state.pool.connection() as conn:
            conn.execute("SELECT 1")
        return {"status": "ok"}

    for module in (
        auth,
        users,
        units,
        equipment,
        hardware,
        readings,
        forms,
        logins,
        audit,
        alarms,
        thermometer,
        alarm_settings,
        catalogue,
        lots,
        stock,
        transfers,
        plans,
        trace,
        board,
        series,
        reports,
    ):
        # Read-only roles never write: refused here, before any route runs (api/readonly.py).
        app.include_router(module.router, prefix=API_PREFIX, dependencies=[Depends(refuse_read_only_writes)])
    web.install(app, PAGES)
    return app
