"""What the scanned-code tests share (tests/inventory/test_codes.py, test_code_refusals.py,
test_code_round_trip.py): GS1's own example GTIN and a 20-digit Chinese traceability code, the 82
characters GS1 allows in a value (built from the ASCII table, not copied from the module), a check
digit counted another way than the module's, the parse expected of a GS1 code, and a refusal that
must give a Chinese reason.
"""

from __future__ import annotations

import re
from datetime import date

import pytest

from inventory.codes import CodeError, ParsedCode, parse_code

GTIN = "09506000134352"  # GS1's own example GTIN
CJK = re.compile(r"[\u4e00-\u9fff]")

# Built from the ASCII table rather than copied from the module: 0x21–0x7A without # $ @ [ \ ] ^ `.
CHARSET_82 = "".join(chr(c) for c in range(0x21, 0x7B) if chr(c) not in "#$@[\\]^`")


def reference_check_digit(first13: str) -> int:
    """Counted from the left (weights 3, 1, 3, … for a 13-digit body), unlike the module, which counts
    from the right, so that one mistake cannot hide in both."""
    weighted = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(first13))
    return -weighted % 10


def gs1(
    gtin: str = GTIN,
    *,
    serial: str | None = None,
    lot: str | None = None,
    expiry: date | None = None,
    production: date | None = None,
) -> ParsedCode:
    return ParsedCode(
        kind="gs1",
        code=f"01{gtin}" + ("" if serial is None else f"21{serial}"),
        product_key=gtin,
        serial=serial,
        lot_no=lot,
        expiry=expiry,
        production_date=production,
    )


def refusal(raw: str) -> str:
    with pytest.raises(CodeError) as caught:
        parse_code(raw)
    message = str(caught.value)
    assert CJK.search(message), f"refusal without a Chinese reason: {message!r}"
    return message


CN20 = "81234567890123456789"
