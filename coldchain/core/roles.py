"""The database roles the system runs as: the owner, which migrates, and the runtime role, which
the ingester, the scheduler and the API use.

Why two: a service that can run DDL, TRUNCATE a table, disable a trigger or switch
``session_replication_role`` off can lose or rewrite the records a regulator relies on, whatever
the code intends. The runtime role is a login member of the group role ``coldchain_runtime``
(created and granted by migration 0012): it owns nothing and holds only the grants its work
needs, append-only where records must never change. :func:`privilege_problems` says, in Chinese,
everything a connection's role can do beyond that, so that each service can warn at start-up when
it was given the owner's URL.
"""

from __future__ import annotations

import contextlib
import logging
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from coldchain.core.db import connect

log = logging.getLogger("coldchain.core.roles")

RUNTIME_GROUP = "coldchain_runtime"
# The login role the run command and the test harness create for the services.
DEFAULT_RUNTIME_LOGIN = "coldchain_app"

# Records no role the system runs as may change or remove (issue #15, GSP).
APPEND_ONLY_TABLES = (
    "probe_readings",
    "gateway_status",
    "thermometer_readings",
    "audit_log",
    "login_events",
    "form_steps",
    "alarm_events",
    "stock_movements",
    "movement_codes",
    "vaccinations",
    "lot_revisions",
    "monthly_reports",
)
# Tables that change only through the owner's SECURITY DEFINER functions (0012).
GUARDED_TABLES = ("stock_balances", "stock_movements", "audit_log", "unit_tree", "lot_revisions")

_ROLE_ATTRIBUTES = """
SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls
FROM pg_roles WHERE rolname = current_user
"""
# Objects of this database owned by the current role or any role it is a member of.
_OWNED = """
SELECT kind, name FROM (
    SELECT 'table' AS kind, c.oid::regclass::text AS name, c.relowner AS owner
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'
    UNION ALL
    SELECT 'function', p.oid::regprocedure::text, p.proowner
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL
    SELECT 'schema', n.nspname::text, n.nspowner FROM pg_namespace n
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg\\_temp%%'
      AND n.nspname NOT LIKE 'pg\\_toast\\_temp%%'
    UNION ALL
    SELECT 'database', d.datname::text, d.datdba FROM pg_database d WHERE d.datname = current_database()
) o
WHERE pg_has_role(current_user, o.owner, 'MEMBER')
ORDER BY kind, name
LIMIT 5
"""
_WRITES = """
SELECT t AS name, p AS privilege
FROM unnest(%(tables)s::text[]) AS t, unnest(%(privileges)s::text[]) AS p
WHERE to_regclass(t) IS NOT NULL AND has_table_privilege(t, p)
ORDER BY 1, 2
"""
_CREATE = """
SELECT has_database_privilege(current_database(), 'CREATE') AS on_database,
       has_schema_privilege('public', 'CREATE') AS on_public
"""


def privilege_problems(conn: psycopg.Connection) -> list[str]:
    """What the connection's role may do beyond the runtime role's work, in Chinese; empty when
    it is exactly a runtime role."""
    problems: list[str] = []
    attrs = conn.execute(_ROLE_ATTRIBUTES).fetchone()
    if attrs is None:  # cannot happen for a connected role; be explicit rather than silent
        return ["无法读取当前数据库角色的属性"]
    for flag, words in zip(attrs, ("超级用户", "可创建角色", "可创建数据库", "可复制", "可绕过行级安全"), strict=True):
        if flag:
            problems.append(f"角色具有「{words}」属性")
    owned = conn.execute(_OWNED).fetchall()
    if owned:
        names = "、".join(f"{kind} {name}" for kind, name in owned)
        problems.append(f"角色拥有数据库对象（{names} 等），可修改表结构、停用触发器")
    writes = conn.execute(
        _WRITES,
        {
            "tables": sorted({*APPEND_ONLY_TABLES, *GUARDED_TABLES}),
            "privileges": ["UPDATE", "DELETE", "TRUNCATE"],
        },
    ).fetchall()
    if writes:
        listed = "、".join(f"{table}（{privilege}）" for table, privilege in writes[:6])
        problems.append(f"角色可修改或删除只可追加的记录：{listed}")
    create = conn.execute(_CREATE).fetchone()
    if create and (create[0] or create[1]):
        problems.append("角色可在数据库中创建对象（CREATE 权限）")
    return problems


def warn_if_overprivileged(url: str, service: str) -> list[str]:
    """Logged once at a service's start: running as the owner works, but nothing then stops a
    bug or an intruder from rewriting history."""
    with connect(url, autocommit=True, application=f"coldchain-{service}") as conn:
        problems = privilege_problems(conn)
        user = conn.info.user
    if problems:
        log.warning(
            "%s 以数据库角色 %s 运行，权限超出运行角色的需要：%s。请用 coldchain db runtime-login 创建运行角色，"
            "把它设为 COLDCHAIN_DATABASE_URL，迁移所用的属主连接设为 COLDCHAIN_OWNER_DATABASE_URL",
            service,
            user,
            "；".join(problems),
        )
    return problems


def ensure_runtime_login(owner_url: str, login: str = DEFAULT_RUNTIME_LOGIN, password: str | None = None) -> None:
    """Create (or update) a login role that is a member of ``coldchain_runtime`` and nothing else.

    Run as the owner after the migrations (0012 creates the group). Roles are cluster-wide, so a
    second database on the same server reuses the login; a concurrent creator is tolerated."""
    with connect(owner_url, autocommit=True, application="coldchain-roles") as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login,)).fetchone()
        if exists is None:
            # Tolerated: created meanwhile by another migrator of the same cluster.
            with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT").format(
                        sql.Identifier(login)
                    )
                )
        if password is not None:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(login), sql.Literal(password)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(RUNTIME_GROUP), sql.Identifier(login)))


def with_role(url: str, login: str, password: str | None = None) -> str:
    """The same server and database as ``url`` (a URL or a conninfo string, answered in the same
    form), connecting as ``login``."""
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        user = quote(login, safe="")
        if password is not None:
            user += ":" + quote(password, safe="")
        return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))
    params = conninfo_to_dict(url)
    params["user"] = login
    params.pop("password", None)
    if password is not None:
        params["password"] = password
    return make_conninfo(**params)  # type: ignore[arg-type]
