"""The two SQL idioms every domain's queries share, written once.

- The jurisdiction: a user sees their own unit and every unit below it (UM1, RS1), which the
  closure table ``unit_tree`` answers as one indexed subquery.
- Optional filters: a list endpoint filters only on what the client gave. :class:`Filters`
  collects the conditions for the given values only, so the planner never sees
  ``(%(x)s IS NULL OR col = %(x)s)`` for absent filters (which can cost it the index).

Column names come from the calling module's constants, never from a request; values are always
bound parameters.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

# Units in the jurisdiction of unit %(scope)s, itself included.
SCOPE_UNITS = "SELECT descendant_id FROM unit_tree WHERE ancestor_id = %(scope)s"


def in_scope(column: str) -> str:
    """``column IN (units of %(scope)s)``; the query binds ``scope``."""
    return f"{column} IN ({SCOPE_UNITS})"


class Filters:
    """``WHERE`` conditions for the filters a request actually carries.

    >>> f = Filters({"scope": 1}).eq("a.state", "state", "active").eq("a.kind", "kind", None)
    >>> f.params
    {'scope': 1, 'state': 'active'}
    """

    def __init__(self, params: dict[str, Any] | None = None, *always: str) -> None:
        self.params: dict[str, Any] = dict(params or {})
        self._parts: list[sql.Composable] = [sql.SQL(c) for c in always]

    def _add(self, condition: str, name: str, value: Any) -> Filters:
        if value is not None:
            self._parts.append(sql.SQL(condition))
            self.params[name] = value
        return self

    def eq(self, column: str, name: str, value: Any) -> Filters:
        return self._add(f"{column} = %({name})s", name, value)

    def at_least(self, column: str, name: str, value: Any) -> Filters:
        return self._add(f"{column} >= %({name})s", name, value)

    def before(self, column: str, name: str, value: Any) -> Filters:
        return self._add(f"{column} < %({name})s", name, value)

    def in_subtree(self, column: str, name: str, unit: int | None) -> Filters:
        """``column`` is ``unit`` or a unit below it."""
        return self._add(
            f"{column} IN (SELECT descendant_id FROM unit_tree WHERE ancestor_id = %({name})s)",  # noqa: S608 — constant column
            name,
            unit,
        )

    def where(self) -> sql.Composable:
        """``cond AND cond …`` (``true`` when there is none), to put after ``WHERE``."""
        return sql.SQL(" AND ").join(self._parts) if self._parts else sql.SQL("true")

    def query(self, template: str) -> sql.Composed:
        """``template`` with ``{where}`` replaced by the conditions (the template is a constant)."""
        return sql.SQL(template).format(where=self.where())
