"""Bounded request fields the routes share: ids, paging, names, serials, temperatures
and versions, each with the limits that make an out-of-range value a 422 and never a 500."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from fastapi import Query
from pydantic import Field, StringConstraints

Id = Annotated[int, Field(ge=1, le=2**62)]
QId = Annotated[int | None, Query(ge=1, le=2**62)]
Limit = Annotated[int, Query(ge=1, le=5000)]
Offset = Annotated[int, Query(ge=0, le=10**7)]
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Serial = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z_-]{1,32}$")]
Temperature = Annotated[Decimal, Field(ge=-90, le=60, max_digits=4, decimal_places=1)]
Mode = Literal["refrigerated", "frozen"]
