"""The FastAPI application behind ``coldchain api``: everything under ``/api/v1``.

Routes are plain (synchronous) functions over a pooled psycopg connection: FastAPI runs them in
its thread pool, and one request is one transaction. Later issues add their routers here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

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
from coldchain.core.settings import Settings
from dashboards import PAGES, web

API_PREFIX = "/api/v1"


def create_app(settings: Settings, database_url: str, *, pool_size: int = 10) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        require_current(database_url)
        pool = db.pool(database_url, application="coldchain-api", max_size=pool_size)
        pool.open(wait=True, timeout=30)
        app.state.pool = pool
        try:
            yield
        finally:
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
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)

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
