"""Scanned package codes (issue #6) that are read: the GTIN check digit, one GS1 content in every
form a scanner or a person may send it, the dates it carries, the 20-digit Chinese traceability
code, and a code's identity and serial."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest
from codehelp import CHARSET_82, CN20, GTIN, gs1, reference_check_digit, refusal
from hypothesis import given
from hypothesis import strategies as st

from inventory.codes import GS, CodeError, ParsedCode, gtin_check_digit, parse_code, require_serial

# --- GTIN check digit -------------------------------------------------------------------------------

KNOWN_VALID_GTINS = [
    "09506000134352",  # GS1 General Specifications example
    "00012345600012",  # GS1 US example
    "10614141000415",  # GS1 US example, indicator digit 1
    "06901234567892",  # GS1 China (中国物品编码中心) example EAN-13 6901234567892
    "04006381333931",  # EAN-13 4006381333931, the common textbook example
    "05901234123457",  # EAN-13 5901234123457
    "00036000291452",  # UPC-A 036000291452
]


@pytest.mark.parametrize("gtin", KNOWN_VALID_GTINS)
def test_check_digit_of_published_gtins(gtin: str) -> None:
    assert gtin_check_digit(gtin[:13]) == int(gtin[13])
    assert reference_check_digit(gtin[:13]) == int(gtin[13])
    assert parse_code(f"(01){gtin}") == gs1(gtin)


@given(st.text(alphabet="0123456789", min_size=13, max_size=13))
def test_check_digit_matches_reference(first13: str) -> None:
    assert gtin_check_digit(first13) == reference_check_digit(first13)


@pytest.mark.parametrize("bad", ["", "095060001343", "09506000134352", "095060001343A", "０９５０６０００１３４３５"])
def test_check_digit_needs_thirteen_ascii_digits(bad: str) -> None:
    with pytest.raises(CodeError, match="13 位数字"):
        gtin_check_digit(bad)


@pytest.mark.parametrize("gtin", KNOWN_VALID_GTINS)
@pytest.mark.parametrize("delta", range(1, 10))
def test_wrong_check_digit_names_the_expected_one(gtin: str, delta: int) -> None:
    expected = int(gtin[13])
    wrong = f"{gtin[:13]}{(expected + delta) % 10}"
    for raw in (f"(01){wrong}", f"]d201{wrong}", f"01{wrong}21X"):
        message = refusal(raw)
        assert f"校验位错误：应为 {expected}，实际为 {(expected + delta) % 10}" in message
        assert wrong in message


# --- one GS1 content, every way it can arrive ----------------------------------------------------------

FULL = gs1(serial="XYZ001", lot="AB12", expiry=date(2027, 12, 31), production=date(2025, 1, 15))


@pytest.mark.parametrize(
    "raw",
    [
        f"0109506000134352172712311125011510AB12{GS}21XYZ001",
        f"]d20109506000134352172712311125011510AB12{GS}21XYZ001",
        f"]C10109506000134352172712311125011510AB12{GS}21XYZ001",
        f"]Q30109506000134352172712311125011510AB12{GS}21XYZ001",
        f"]e00109506000134352172712311125011510AB12{GS}21XYZ001",
        f"{GS}0109506000134352172712311125011510AB12{GS}21XYZ001",
        f"]d2{GS}0109506000134352172712311125011510AB12{GS}21XYZ001",
        f"0109506000134352172712311125011510AB12{GS}21XYZ001{GS}",
        f"{GS}0109506000134352{GS}17271231{GS}11250115{GS}10AB12{GS}21XYZ001{GS}",  # GS after fixed fields too
        f"{GS}{GS}0109506000134352172712311125011510AB12{GS}{GS}21XYZ001",  # doubled GS
        f"21XYZ001{GS}10AB12{GS}11250115172712310109506000134352",  # any AI order
        f"  ]d20109506000134352172712311125011510AB12{GS}21XYZ001\r\n",
        "(01)09506000134352(17)271231(11)250115(10)AB12(21)XYZ001",
        "(21)XYZ001(10)AB12(11)250115(17)271231(01)09506000134352",
        "(01) 09506000134352 (17) 271231 (11) 250115 (10) AB12 (21) XYZ001",
        "\t(01)09506000134352(17)271231(11)250115(10)AB12(21)XYZ001\n",
    ],
)
def test_same_content_in_every_form_parses_equal(raw: str) -> None:
    assert parse_code(raw) == FULL


def test_raw_form_of_the_example_in_the_brief() -> None:
    hri = parse_code("(01)09506000134352(17)271231(10)AB12(21)XYZ001")
    assert hri == gs1(serial="XYZ001", lot="AB12", expiry=date(2027, 12, 31))
    assert parse_code(f"]d2010950600013435217271231{'10AB12'}{GS}21XYZ001") == hri
    assert hri.code == "010950600013435221XYZ001"


def test_fixed_length_fields_need_no_separator() -> None:
    assert parse_code("]d20109506000134352172712311125011521S1") == gs1(
        serial="S1", expiry=date(2027, 12, 31), production=date(2025, 1, 15)
    )


def test_variable_field_at_the_end_needs_no_separator() -> None:
    assert parse_code("]d201095060001343521712123110LOT-42/A") == gs1(lot="LOT-42/A", expiry=date(2012, 12, 31))
    assert parse_code("0109506000134352" + "21" + "S" * 20) == gs1(serial="S" * 20)


def test_variable_field_without_separator_runs_to_the_end() -> None:
    # Without FNC1 the lot cannot end before the end of the data: the serial is swallowed into the lot.
    parsed = parse_code("]d2010950600013435210AB1221XYZ001")
    assert parsed == gs1(lot="AB1221XYZ001")
    assert parsed.serial is None
    # … and so is a fixed-length field after it.
    assert parse_code("]d2010950600013435210AB1217271231") == gs1(lot="AB1217271231")


def test_variable_field_without_separator_usually_fails_on_length() -> None:
    message = refusal("]d2010950600013435210LOT2025031521SERIAL0000012345")
    assert message == "批号 (AI 10) 最长 20 个字符，实际为 29 个（是否缺少 FNC1/GS 分隔符？）"


def test_parenthesised_value_may_contain_a_closing_parenthesis() -> None:
    assert parse_code("(01)09506000134352(10)A)B(21)C") == gs1(lot="A)B", serial="C")


def test_raw_value_may_contain_any_parenthesis() -> None:
    assert parse_code(f"]d2010950600013435210A(B){GS}21(1)") == gs1(lot="A(B)", serial="(1)")


@pytest.mark.parametrize("char", list(CHARSET_82))
def test_every_character_of_set_82_is_accepted(char: str) -> None:
    assert len(CHARSET_82) == 82
    assert parse_code(f"]d2010950600013435210{char}{GS}21{char * 20}") == gs1(lot=char, serial=char * 20)


# --- dates ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yymmdd", "expected"),
    [
        ("271231", date(2027, 12, 31)),
        ("270101", date(2027, 1, 1)),
        ("271200", date(2027, 12, 31)),
        ("270400", date(2027, 4, 30)),
        ("270200", date(2027, 2, 28)),
        ("280200", date(2028, 2, 29)),
        ("280229", date(2028, 2, 29)),
        ("000229", date(2000, 2, 29)),  # 2000 is a leap year
        ("990101", date(2099, 1, 1)),  # YY is always 20YY
        ("000100", date(2000, 1, 31)),
    ],
)
def test_expiry(yymmdd: str, expected: date) -> None:
    assert parse_code(f"(01){GTIN}(17){yymmdd}").expiry == expected
    assert parse_code(f"]d201{GTIN}17{yymmdd}").expiry == expected


@pytest.mark.parametrize(
    ("yymmdd", "expected"),
    [
        ("250115", date(2025, 1, 15)),
        ("240229", date(2024, 2, 29)),
        ("250200", date(2025, 2, 1)),  # month only: the earliest day the product can have been made
    ],
)
def test_production_date(yymmdd: str, expected: date) -> None:
    parsed = parse_code(f"(01){GTIN}(11){yymmdd}")
    assert parsed.production_date == expected
    assert parsed.expiry is None


@pytest.mark.parametrize("ai", ["17", "11"])
@pytest.mark.parametrize(
    ("yymmdd", "reason"),
    [
        ("271301", "没有 13 月"),
        ("270001", "没有 0 月"),
        ("279901", "没有 99 月"),
        ("270229", "2027 年 2 月没有 29 日"),
        ("280230", "2028 年 2 月没有 30 日"),
        ("270431", "2027 年 4 月没有 31 日"),
        ("271232", "2027 年 12 月没有 32 日"),
    ],
)
def test_invalid_dates_are_refused(ai: str, yymmdd: str, reason: str) -> None:
    label = {"17": "有效期 (AI 17)", "11": "生产日期 (AI 11)"}[ai]
    for raw in (f"(01){GTIN}({ai}){yymmdd}", f"]d201{GTIN}{ai}{yymmdd}"):
        assert refusal(raw) == f"{label} {yymmdd} 不是有效日期：{reason}"


@pytest.mark.parametrize("value", ["2712", "27123", "2712311", "27-231", "", "２７１２３１"])
def test_date_must_be_six_digits(value: str) -> None:
    assert "有效期 (AI 17) 应为 6 位数字" in refusal(f"(01){GTIN}(17){value}")


# --- the 20-digit Chinese code -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [CN20, f" {CN20} ", f"\t{CN20}\r\n", f"\u3000{CN20}\u3000", f"]C0{CN20}", f"  ]C0{CN20}\n"],
)
def test_chinese_code_is_split_into_product_and_serial(raw: str) -> None:
    assert parse_code(raw) == ParsedCode(
        kind="cn20",
        code=CN20,
        product_key="8123456",
        serial="7890123456789",
        lot_no=None,
        expiry=None,
        production_date=None,
    )


@given(st.text(alphabet="0123456789", min_size=20, max_size=20))
def test_any_twenty_digits_is_a_chinese_code(digits: str) -> None:
    parsed = parse_code(digits)
    assert (parsed.kind, parsed.code, parsed.product_key, parsed.serial) == ("cn20", digits, digits[:7], digits[7:])
    assert require_serial(parsed) is parsed


def test_twenty_digits_that_are_also_gs1_are_read_as_the_chinese_code() -> None:
    # "01" + GTIN + "10" + "12" is a valid GS1 string of 20 digits; bare, it is the Chinese code.
    digits = f"01{GTIN}1012"
    assert len(digits) == 20
    assert parse_code(digits).kind == "cn20"
    # Any evidence of GS1 — symbology identifier, leading FNC1, parentheses — reads it as GS1.
    for raw in (f"]d2{digits}", f"]C1{digits}", f"{GS}{digits}", f"(01){GTIN}(10)12"):
        assert parse_code(raw) == gs1(lot="12")


def test_leading_gs_is_not_stripped_as_whitespace() -> None:
    assert "\x1d".isspace()  # why the module cannot use a bare str.strip()
    assert parse_code(f" {GS}01{GTIN}1012 ").kind == "gs1"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("8123456789012345678", "追溯码应为 20 位数字，实际为 19 位"),
        ("812345678901234567890", "追溯码应为 20 位数字，实际为 21 位"),
        ("8", "追溯码应为 20 位数字，实际为 1 位"),
        ("8123456789012345678A", "追溯码应为 20 位数字，实际为 20 个字符，其中第 20 位是 'A'"),
        ("A1234567890123456789", "追溯码应为 20 位数字，实际为 20 个字符，其中第 1 位是 'A'"),
        ("8123456789 012345678", "追溯码应为 20 位数字，实际为 20 个字符，其中第 11 位是 ' '"),
        ("８１２３４５６７８９０１２３４５６７８９", "追溯码应为 20 位数字，实际为 20 个字符，其中第 1 位是 '８'"),
        ("hello", "追溯码应为 20 位数字，实际为 5 个字符，其中第 1 位是 'h'"),
        (f"]C0{CN20[:19]}", "追溯码应为 20 位数字，实际为 19 位"),
        (f"]C001{GTIN}17271231", "追溯码应为 20 位数字，实际为 24 位"),
    ],
)
def test_malformed_chinese_code_is_refused(raw: str, message: str) -> None:
    assert refusal(raw) == message


# --- identity and require_serial ---------------------------------------------------------------------


def test_identity_ignores_lot_and_dates() -> None:
    a = parse_code(f"(01){GTIN}(21)S1(10)L1(17)271231")
    b = parse_code(f"]d201{GTIN}21S1")
    assert a.code == b.code == f"01{GTIN}21S1"
    assert a != b
    assert parse_code(f"(01){GTIN}(10)L1").code == f"01{GTIN}"


def test_require_serial() -> None:
    with_serial = parse_code(f"(01){GTIN}(21)S1")
    assert require_serial(with_serial) is with_serial
    cn20 = parse_code(CN20)
    assert require_serial(cn20) is cn20
    with pytest.raises(CodeError) as caught:
        require_serial(parse_code(f"(01){GTIN}(10)L1(17)271231"))
    assert str(caught.value) == "GS1 码缺少序列号 (21)，无法唯一标识一个包装"


def test_parsed_code_is_immutable_and_code_error_is_a_value_error() -> None:
    parsed = parse_code(CN20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.lot_no = "X"  # type: ignore[misc]
    assert issubclass(CodeError, ValueError)
