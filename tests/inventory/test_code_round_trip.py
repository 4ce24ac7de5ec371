"""Scanned package codes (issue #6) generated at random (Hypothesis): any package rendered in
every form parses back to itself, and anything else a scanner might send is either parsed or refused
with a Chinese reason — never an unexpected error."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from codehelp import CHARSET_82, CJK, GTIN, gs1, reference_check_digit
from hypothesis import given, settings
from hypothesis import strategies as st

from inventory.codes import GS, CodeError, ParsedCode, parse_code


def last_day_of_month(year: int, month: int) -> date:
    first_of_next = date(year + month // 12, month % 12 + 1, 1)
    return first_of_next - timedelta(days=1)


# --- round trip ----------------------------------------------------------------------------------------

# "(" cannot appear in a value in the parenthesised form, which is delimited by parentheses.
HRI_SAFE = CHARSET_82.replace("(", "")
FIXED_AIS = frozenset({"01", "11", "17"})


@dataclass(frozen=True)
class Package:
    elements: tuple[tuple[str, str], ...]  # (AI, value) in the order printed
    expected: ParsedCode


@st.composite
def packages(draw: st.DrawFn, alphabet: str = HRI_SAFE) -> Package:
    first13 = draw(st.text(alphabet="0123456789", min_size=13, max_size=13))
    gtin = f"{first13}{reference_check_digit(first13)}"
    values = st.text(alphabet=alphabet, min_size=1, max_size=20)
    lot = draw(st.none() | values)
    serial = draw(st.none() | values)
    days = st.dates(date(2000, 1, 1), date(2099, 12, 31))
    expiry = draw(st.none() | days)
    expiry_month_only = draw(st.booleans())
    production = draw(st.none() | days)

    elements = [("01", gtin)]
    if lot is not None:
        elements.append(("10", lot))
    if serial is not None:
        elements.append(("21", serial))
    if production is not None:
        elements.append(("11", production.strftime("%y%m%d")))
    if expiry is not None:
        if expiry_month_only:
            elements.append(("17", expiry.strftime("%y%m00")))
            expiry = last_day_of_month(expiry.year, expiry.month)
        else:
            elements.append(("17", expiry.strftime("%y%m%d")))
    order = draw(st.permutations(elements))
    return Package(tuple(order), gs1(gtin, serial=serial, lot=lot, expiry=expiry, production=production))


def render_raw(elements: tuple[tuple[str, str], ...], *, gs_everywhere: bool = False) -> str:
    parts = []
    for index, (ai, value) in enumerate(elements):
        last = index == len(elements) - 1
        separator = GS if not last and (gs_everywhere or ai not in FIXED_AIS) else ""
        parts.append(f"{ai}{value}{separator}")
    return "".join(parts)


def render_hri(elements: tuple[tuple[str, str], ...]) -> str:
    return "".join(f"({ai}){value}" for ai, value in elements)


@settings(max_examples=300)
@given(packages())
def test_round_trip_in_every_form(package: Package) -> None:
    raw = render_raw(package.elements)
    forms = [
        f"]d2{raw}",
        f"]C1{raw}",
        f"]Q3{raw}",
        f"]e0{raw}",
        f"{GS}{raw}",
        f"{GS}{raw}{GS}",
        f"]d2{GS}{render_raw(package.elements, gs_everywhere=True)}",
        render_hri(package.elements),
        " ".join(f"({ai}) {value}" for ai, value in package.elements),
    ]
    for form in forms:
        assert parse_code(form) == package.expected, form
    # Bare, with neither identifier nor leading FNC1: GS1 if it starts with AI 01, unless exactly 20 digits.
    if raw.startswith("01"):
        expected_kind = "cn20" if len(raw) == 20 and raw.isdigit() else "gs1"
        bare = parse_code(raw)
        assert bare.kind == expected_kind
        if expected_kind == "gs1":
            assert bare == package.expected


@settings(max_examples=200)
@given(packages(alphabet=CHARSET_82))
def test_round_trip_raw_with_the_whole_of_set_82(package: Package) -> None:
    assert parse_code(f"]d2{render_raw(package.elements)}") == package.expected


FRAGMENTS = ["]d2", "]C0", "(", ")", "01", "10", "17", "21", GS, "9", "A", " ", GTIN]


@settings(max_examples=500)
@given(st.one_of(st.text(max_size=60), st.builds("".join, st.lists(st.sampled_from(FRAGMENTS), max_size=12))))
def test_anything_else_is_parsed_or_refused_in_chinese(raw: str) -> None:
    try:
        parsed = parse_code(raw)
    except CodeError as exc:
        assert CJK.search(str(exc))
    else:
        assert parsed.kind in ("cn20", "gs1")
