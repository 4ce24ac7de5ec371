"""Reading a scanned vaccine package code into product, lot and package identity (issue #6).

A clinic's scanner hands us whatever the symbol on the box carries, and two families are in use:

* the 20-digit Chinese drug traceability code (药品追溯码, formerly 电子监管码): 7-digit product
  identifier (药品标识码) + 13-digit serial (单品序列号), with no lot and no expiry in it — those come
  from the 码上放心 / manufacturer data, not from the symbol;
* GS1 element strings (GS1 DataMatrix, GS1-128, GS1 QR, GS1 DataBar), from which we take AI 01
  (GTIN), 10 (lot), 11 (production date), 17 (expiry) and 21 (serial).

Every refusal is a :class:`CodeError` whose message is shown to the person holding the scanner, so it
is in Chinese and says what was expected and what was seen. Nothing here does I/O: the caller looks the
result up in the ledger.

Telling the families apart, in this order:

1. ``]d2``, ``]C1``, ``]Q3`` or ``]e0`` (an AIM symbology identifier, sent when the scanner is set to
   transmit them) means a GS1 symbol; ``]C0`` is a plain Code 128 symbol, which is how the 20-digit
   code is printed, so only the 20-digit code is accepted after it.
2. A leading ``(`` means the human-readable GS1 form, ``(01)09506000134352(17)271231(10)AB12``.
3. A GS character (ASCII 29, how scanners transmit FNC1) anywhere means a GS1 element string.
4. Exactly 20 ASCII digits is the Chinese code — *always*, even though a GS1 string can also be 20
   digits (``01`` + GTIN-14 + ``10`` + a 2-character lot is 20 characters). A scanner that sends GS1
   without a symbology identifier and without a leading FNC1 gives no other evidence, the Chinese code
   is by far the commoner 20-digit scan on a vaccine box, and guessing per-string would make the same
   box read differently depending on its lot. Sites whose GS1 symbols can be that short must turn on
   AIM identifiers on their scanners.
5. Anything else beginning with ``01`` is read as a GS1 element string: GS1 healthcare labels put the
   GTIN first, and the Chinese code is never anything but 20 digits.
6. The rest is refused, measured against the 20-digit code, which is what a bare string most likely
   was meant to be.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

__all__ = [
    "GS",
    "MAX_INPUT_CHARS",
    "CodeError",
    "ParsedCode",
    "gtin_check_digit",
    "parse_code",
    "require_serial",
]

GS = "\x1d"
"""How scanners transmit FNC1, the separator that ends a variable-length GS1 field."""

MAX_INPUT_CHARS = 200
"""The longest scan we look at; a real GS1 DataMatrix on a vaccine box is under 80 characters, and the
limit keeps a pasted log file or a stuck key from reaching the parser."""

CN20_LENGTH = 20
CN20_PRODUCT_DIGITS = 7
GTIN_LENGTH = 14
VARIABLE_MAX = 20

# Only the ASCII separators a scanner or a paste can wrap around a code. str.strip() with no argument
# would also eat GS (Python counts ASCII 28–31 as whitespace), and a leading GS is the FNC1 that marks a
# GS1 string, so it must survive. U+3000 is the ideographic space a Chinese input method types.
_SCANNER_WHITESPACE = " \t\r\n\x0b\x0c\u3000"

_GS1_SYMBOLOGIES = frozenset({"]d2", "]C1", "]Q3", "]e0"})
_CODE128_PLAIN = "]C0"

# GS1 AI encodable character set 82 (GS1 General Specifications, figure 7.11-1).
_CHARSET_82 = frozenset("!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")

# How many digits an AI has, by its first two (GS1 General Specifications §3.2); two unless listed. We
# support only two-digit AIs, so this serves one purpose: naming an unsupported AI in full ("240",
# not "24") when it arrives without parentheses.
_AI_DIGITS_BY_PREFIX: dict[str, int] = {
    **dict.fromkeys(("23", "24", "25", "40", "41", "42", "71"), 3),
    **dict.fromkeys(("31", "32", "33", "34", "35", "36", "39", "43", "70", "72", "80", "81", "82"), 4),
}

_HRI_ELEMENT = re.compile(r" *\(([^()]*)\) *([^(]*)")


class CodeError(ValueError):
    """Raised with a Chinese message for any malformed code."""


@dataclass(frozen=True, slots=True)
class ParsedCode:
    """One scanned package, reduced to what the ledger keys on.

    ``code`` is the package's identity: the same box must give the same ``code`` however it was scanned
    (with or without symbology identifier, FNC1 or parentheses, in any AI order), so only the fields that
    identify the package go into it — not lot or dates, which describe it.
    """

    kind: Literal["cn20", "gs1"]
    code: str
    product_key: str
    serial: str | None
    lot_no: str | None
    expiry: date | None
    production_date: date | None


@dataclass(frozen=True, slots=True)
class _Spec:
    label: str
    length: int | None  # fixed digit count, or None for a variable field of 1–20 characters of set 82


_SPECS: dict[str, _Spec] = {
    "01": _Spec("商品条码 GTIN (AI 01)", GTIN_LENGTH),
    "10": _Spec("批号 (AI 10)", None),
    "11": _Spec("生产日期 (AI 11)", 6),
    "17": _Spec("有效期 (AI 17)", 6),
    "21": _Spec("序列号 (AI 21)", None),
}


def parse_code(raw: str) -> ParsedCode:
    """The single entry point for scans, so every screen accepts and refuses the same codes in the same words.

    See the module docstring for how the two code families are told apart.
    """
    if len(raw) > MAX_INPUT_CHARS:
        raise CodeError(f"扫码内容过长：最多 {MAX_INPUT_CHARS} 个字符，实际为 {len(raw)} 个")
    text = raw.strip(_SCANNER_WHITESPACE)
    if not text:
        raise CodeError("扫码内容为空")
    if text.startswith("]"):
        identifier, body = text[:3], text[3:]
        if not body and len(identifier) == 3:
            raise CodeError(f"扫码内容为空：只有码制标识符 {identifier}")
        if identifier in _GS1_SYMBOLOGIES:
            return _from_elements(_split_raw(body), raw_form=True)
        if identifier == _CODE128_PLAIN:
            return _parse_cn20(body)
        raise CodeError(f"不支持的码制标识符 {identifier!r}：GS1 码应为 ]d2、]C1、]Q3 或 ]e0，20 位药品追溯码应为 ]C0")
    if text.startswith("("):
        return _from_elements(_split_hri(text), raw_form=False)
    if GS in text:
        return _from_elements(_split_raw(text), raw_form=True)
    if len(text) == CN20_LENGTH and _is_digits(text):
        return _parse_cn20(text)
    if text.startswith("01"):
        return _from_elements(_split_raw(text), raw_form=True)
    return _parse_cn20(text)


def gtin_check_digit(first13: str) -> int:
    """The GS1 mod-10 check digit, so a mistyped or misread GTIN is caught before it reaches the ledger."""
    if len(first13) != GTIN_LENGTH - 1 or not _is_digits(first13):
        raise CodeError(f"计算 GTIN 校验位需要 13 位数字，实际为 {first13!r}")
    # Weights alternate 3, 1, … starting from the digit next to the check digit, i.e. from the right.
    total = sum(int(digit) * (3 if index % 2 == 0 else 1) for index, digit in enumerate(reversed(first13)))
    return (10 - total % 10) % 10


def require_serial(parsed: ParsedCode) -> ParsedCode:
    """Refuse a code that names a product but not a package, where one package must be told from another.

    A GS1 code without AI 21 is the same for every box of the lot, so recording it as received,
    administered or destroyed would conflate boxes; the Chinese code always carries its serial.
    """
    if parsed.serial is None:
        raise CodeError("GS1 码缺少序列号 (21)，无法唯一标识一个包装")
    return parsed


def _is_digits(text: str) -> bool:
    # str.isdigit() alone accepts full-width and other Unicode digits, which no code family allows.
    return text.isascii() and text.isdigit()


def _parse_cn20(text: str) -> ParsedCode:
    bad = next(((i, c) for i, c in enumerate(text) if not ("0" <= c <= "9")), None)
    if bad is not None:
        index, char = bad
        raise CodeError(f"追溯码应为 {CN20_LENGTH} 位数字，实际为 {len(text)} 个字符，其中第 {index + 1} 位是 {char!r}")
    if len(text) != CN20_LENGTH:
        raise CodeError(f"追溯码应为 {CN20_LENGTH} 位数字，实际为 {len(text)} 位")
    return ParsedCode(
        kind="cn20",
        code=text,
        product_key=text[:CN20_PRODUCT_DIGITS],
        serial=text[CN20_PRODUCT_DIGITS:],
        lot_no=None,
        expiry=None,
        production_date=None,
    )


def _unsupported(ai: str) -> CodeError:
    return CodeError(f"不支持的应用标识符 (AI) {ai}：只接受 01、10、11、17、21")


def _split_raw(body: str) -> list[tuple[str, str]]:
    """Cut an element string into (AI, value) pairs.

    A variable-length field runs to the next GS or to the end: GS1 requires FNC1 after a variable field
    unless it is last, so without one there is no way to know where a lot ends, and reading on to the end
    is the only reading the standard allows. A lot followed by ``21…`` without GS therefore swallows the
    serial (and usually then fails on length or character set). GS anywhere between fields — leading,
    trailing, doubled, or after a fixed field, which some printers add — is ignored.
    """
    elements: list[tuple[str, str]] = []
    pos = 0
    while pos < len(body):
        if body[pos] == GS:
            pos += 1
            continue
        prefix = body[pos : pos + 2]
        if len(prefix) < 2 or not _is_digits(prefix):
            raise CodeError(f"GS1 码第 {pos + 1} 个字符处应为应用标识符（数字），实际为 {prefix!r}")
        spec = _SPECS.get(prefix)
        if spec is None:
            full = body[pos : pos + _AI_DIGITS_BY_PREFIX.get(prefix, 2)]
            raise _unsupported(full if _is_digits(full) else prefix)
        pos += 2
        if spec.length is not None:
            end = pos + spec.length
        else:
            end = body.find(GS, pos)
            if end == -1:
                end = len(body)
        elements.append((prefix, body[pos:end]))
        pos = end
    return elements


def _split_hri(text: str) -> list[tuple[str, str]]:
    """Cut the parenthesised form into (AI, value) pairs.

    Here the parentheses, not the AI table, delimit the fields, so a value cannot contain ``(`` (set 82
    allows it; such a lot must be scanned, not typed). Spaces around the parentheses, as printed under
    many barcodes, are allowed: set 82 has no space, so they cannot be part of a value.
    """
    elements: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _HRI_ELEMENT.match(text, pos)
        if match is None:
            raise CodeError(f"GS1 括号格式错误：第 {pos + 1} 个字符处应为“(应用标识符)”，实际为 {text[pos:]!r}")
        ai, value = match.group(1), match.group(2).rstrip(" ")
        if not (2 <= len(ai) <= 4 and _is_digits(ai)):
            raise CodeError(f"括号内应为 2–4 位数字的应用标识符，实际为 {ai!r}")
        if ai not in _SPECS:
            raise _unsupported(ai)
        elements.append((ai, value))
        pos = match.end()
    return elements


def _from_elements(elements: Sequence[tuple[str, str]], *, raw_form: bool) -> ParsedCode:
    values: dict[str, str] = {}
    for ai, value in elements:
        if ai in values:
            raise CodeError(f"应用标识符 (AI) {ai} 重复出现")
        spec = _SPECS[ai]
        if spec.length is not None:
            _check_fixed(spec, value)
        else:
            _check_variable(spec, value, raw_form=raw_form)
        values[ai] = value
    gtin = values.get("01")
    if gtin is None:
        raise CodeError("GS1 码缺少商品条码 GTIN (AI 01)")
    expected = gtin_check_digit(gtin[:-1])
    if int(gtin[-1]) != expected:
        raise CodeError(f"GTIN {gtin} 校验位错误：应为 {expected}，实际为 {gtin[-1]}")
    serial = values.get("21")
    return ParsedCode(
        kind="gs1",
        code=f"01{gtin}" if serial is None else f"01{gtin}21{serial}",
        product_key=gtin,
        serial=serial,
        lot_no=values.get("10"),
        expiry=_yymmdd(_SPECS["17"], values["17"], day_zero_is_last=True) if "17" in values else None,
        production_date=_yymmdd(_SPECS["11"], values["11"], day_zero_is_last=False) if "11" in values else None,
    )


def _check_fixed(spec: _Spec, value: str) -> None:
    if len(value) != spec.length or not _is_digits(value):
        seen = "空" if not value else f" {value!r}"
        raise CodeError(f"{spec.label} 应为 {spec.length} 位数字，实际为{seen}")


def _check_variable(spec: _Spec, value: str, *, raw_form: bool) -> None:
    if not value:
        raise CodeError(f"{spec.label} 不能为空")
    if len(value) > VARIABLE_MAX:
        hint = "（是否缺少 FNC1/GS 分隔符？）" if raw_form else ""
        raise CodeError(f"{spec.label} 最长 {VARIABLE_MAX} 个字符，实际为 {len(value)} 个{hint}")
    for index, char in enumerate(value):
        if char not in _CHARSET_82:
            raise CodeError(f"{spec.label} 含有 GS1 不允许的字符 {char!r}（第 {index + 1} 位）")


def _yymmdd(spec: _Spec, value: str, *, day_zero_is_last: bool) -> date:
    """YYMMDD to a date, with DD = 00 meaning "only the month is given".

    The year is 2000 + YY rather than GS1's sliding window around today: that window needs the clock,
    which would make the same scan parse differently over time, and no vaccine in circulation was made or
    expires before 2000 or after 2099.

    For expiry GS1 defines DD = 00 as the last day of the month. For the production date it only means
    the day is unknown; we take the first day, the earliest the product can have been made.
    """
    year, month, day = 2000 + int(value[:2]), int(value[2:4]), int(value[4:])
    if not 1 <= month <= 12:
        raise CodeError(f"{spec.label} {value} 不是有效日期：没有 {month} 月")
    last_day = calendar.monthrange(year, month)[1]
    if day == 0:
        return date(year, month, last_day if day_zero_is_last else 1)
    if day > last_day:
        raise CodeError(f"{spec.label} {value} 不是有效日期：{year} 年 {month} 月没有 {day} 日")
    return date(year, month, day)
