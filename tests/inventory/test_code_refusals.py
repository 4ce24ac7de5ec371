"""Scanned package codes (issue #6) that are refused, each with a Chinese reason naming what is
wrong: empty or overlong scans, a symbology identifier alone, unsupported or duplicate application
identifiers, a missing or malformed GTIN, variable fields too long, characters outside GS1's set 82
and malformed structure."""

from __future__ import annotations

import pytest
from codehelp import CN20, GTIN, gs1, refusal

from inventory.codes import GS, MAX_INPUT_CHARS, parse_code

# --- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", " ", "\r\n", "\t \u3000"])
def test_empty_scan_is_refused(raw: str) -> None:
    assert refusal(raw) == "扫码内容为空"


@pytest.mark.parametrize("identifier", ["]d2", "]C1", "]Q3", "]e0", "]C0"])
def test_symbology_identifier_alone_is_refused(identifier: str) -> None:
    assert refusal(f" {identifier} ") == f"扫码内容为空：只有码制标识符 {identifier}"


def test_overlong_scan_is_refused_before_parsing() -> None:
    assert parse_code(" " * (MAX_INPUT_CHARS - 20) + CN20) == parse_code(CN20)
    message = refusal(" " * (MAX_INPUT_CHARS - 19) + CN20)
    assert message == f"扫码内容过长：最多 {MAX_INPUT_CHARS} 个字符，实际为 {MAX_INPUT_CHARS + 1} 个"
    assert refusal("9" * 10_000).startswith("扫码内容过长")


@pytest.mark.parametrize(
    ("raw", "ai"),
    [
        (f"]d201{GTIN}240ABC", "240"),
        (f"01{GTIN}240ABC", "240"),
        (f"(01){GTIN}(240)ABC", "240"),
        (f"]d200123456789012345675{GS}01{GTIN}", "00"),
        (f"]d201{GTIN}3103000189", "3103"),
        (f"]d201{GTIN}7003250115", "7003"),
        (f"(01){GTIN}(7003)2501151230", "7003"),
        (f"]d201{GTIN}15271231", "15"),
        (f"(15)271231(01){GTIN}", "15"),
        (f"]d201{GTIN}91XYZ", "91"),
        (f"]d201{GTIN}24", "24"),  # truncated three-digit AI: name what is there
    ],
)
def test_unsupported_ai_is_named(raw: str, ai: str) -> None:
    assert refusal(raw).startswith(f"不支持的应用标识符 (AI) {ai}：")


@pytest.mark.parametrize(
    ("raw", "ai"),
    [
        (f"]d201{GTIN}10A{GS}10B", "10"),
        (f"]d201{GTIN}10A{GS}10A", "10"),
        (f"]d201{GTIN}01{GTIN}", "01"),
        (f"]d201{GTIN}1727123117271231", "17"),
        (f"(01){GTIN}(21)X(21)Y", "21"),
        (f"(01){GTIN}(11)250115(11)250116", "11"),
    ],
)
def test_duplicate_ai_is_refused(raw: str, ai: str) -> None:
    assert refusal(raw) == f"应用标识符 (AI) {ai} 重复出现"


@pytest.mark.parametrize(
    "raw", ["]d217271231", f"]d217271231{GS}", "(17)271231(10)AB", "(21)X", f"]d2{GS}", f"{GS}10AB{GS}21X", GS]
)
def test_missing_gtin_is_refused(raw: str) -> None:
    assert refusal(raw) == "GS1 码缺少商品条码 GTIN (AI 01)"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("(01)0950600013435", "商品条码 GTIN (AI 01) 应为 14 位数字，实际为 '0950600013435'"),
        ("(01)095060001343521", "商品条码 GTIN (AI 01) 应为 14 位数字，实际为 '095060001343521'"),
        ("(01)", "商品条码 GTIN (AI 01) 应为 14 位数字，实际为空"),
        ("]d201", "商品条码 GTIN (AI 01) 应为 14 位数字，实际为空"),
        ("]d2010950600013435", "商品条码 GTIN (AI 01) 应为 14 位数字，实际为 '0950600013435'"),
        (f"]d2010950600013435{GS}17271231", "商品条码 GTIN (AI 01) 应为 14 位数字，实际为 '0950600013435\\x1d'"),
        ("(01)0950600013435A", "商品条码 GTIN (AI 01) 应为 14 位数字，实际为 '0950600013435A'"),
    ],
)
def test_malformed_gtin_is_refused(raw: str, message: str) -> None:
    assert refusal(raw) == message


@pytest.mark.parametrize(("ai", "label"), [("10", "批号 (AI 10)"), ("21", "序列号 (AI 21)")])
def test_variable_field_length(ai: str, label: str) -> None:
    twenty = "A" * 20
    expected = gs1(lot=twenty) if ai == "10" else gs1(serial=twenty)
    assert parse_code(f"(01){GTIN}({ai}){twenty}") == expected
    assert refusal(f"(01){GTIN}({ai}){'A' * 21}") == f"{label} 最长 20 个字符，实际为 21 个"
    assert refusal(f"]d201{GTIN}{ai}{'A' * 21}") == f"{label} 最长 20 个字符，实际为 21 个（是否缺少 FNC1/GS 分隔符？）"
    assert refusal(f"(01){GTIN}({ai})") == f"{label} 不能为空"
    assert refusal(f"]d201{GTIN}{ai}{GS}") == f"{label} 不能为空"


@pytest.mark.parametrize(
    "char", ["#", "$", "@", "[", "\\", "]", "^", "`", "{", "|", "}", "~", "\x7f", "中", "é", "\x00", "\u3000"]
)
def test_characters_outside_set_82_are_refused(char: str) -> None:
    message = refusal(f"]d201{GTIN}10AB{char}CD{GS}21X")
    assert message == f"批号 (AI 10) 含有 GS1 不允许的字符 {char!r}（第 3 位）"
    assert refusal(f"(01){GTIN}(21)X{char}Y") == f"序列号 (AI 21) 含有 GS1 不允许的字符 {char!r}（第 2 位）"


def test_space_inside_a_value_is_refused() -> None:
    assert refusal(f"(01){GTIN}(10)AB CD") == "批号 (AI 10) 含有 GS1 不允许的字符 ' '（第 3 位）"


@pytest.mark.parametrize(
    ("raw", "start"),
    [
        ("(AB)123", "括号内应为 2–4 位数字的应用标识符，实际为 'AB'"),
        ("(1)2", "括号内应为 2–4 位数字的应用标识符，实际为 '1'"),
        ("(12345)6", "括号内应为 2–4 位数字的应用标识符，实际为 '12345'"),
        (f"(01){GTIN}(10)A(B", "GS1 括号格式错误：第 24 个字符处应为“(应用标识符)”"),
        (f"(01{GTIN}", "GS1 括号格式错误：第 1 个字符处"),
        ("]d2AB", "GS1 码第 1 个字符处应为应用标识符（数字），实际为 'AB'"),
        (f"]d201{GTIN}1", "GS1 码第 17 个字符处应为应用标识符（数字），实际为 '1'"),
        (f"]d2(01){GTIN}", "GS1 码第 1 个字符处应为应用标识符（数字），实际为 '(0'"),
        (f"01{GTIN}{GS}X", "GS1 码第 18 个字符处应为应用标识符（数字），实际为 'X'"),
        ("]d1" + CN20, "不支持的码制标识符 ']d1'"),
        ("]Q1" + CN20, "不支持的码制标识符 ']Q1'"),
        ("]", "不支持的码制标识符 ']'"),
        ("]d", "不支持的码制标识符 ']d'"),
        ("()", "括号内应为 2–4 位数字的应用标识符，实际为 ''"),
        ("(", "GS1 括号格式错误：第 1 个字符处"),
    ],
)
def test_malformed_structure_is_refused(raw: str, start: str) -> None:
    assert refusal(raw).startswith(start)
