"""Sanity checks on the static Shaanxi demo data (no database needed)."""

from __future__ import annotations

import re

from coldchain.seed.shaanxi import (
    CITIES,
    PERSON_GIVEN,
    PERSON_SURNAMES,
    SITE_SUFFIXES,
    TOWNSHIP_NAMES,
    County,
)

SIX_DIGITS = re.compile(r"\d{6}")
EXPECTED_DIRECT = {
    "610403": "杨陵区",
    "610581": "韩城市",
    "610822": "府谷县",
    "610881": "神木市",
}


def _all_counties() -> list[County]:
    return [county for city in CITIES for county in city.counties]


def test_ten_cities_with_real_codes() -> None:
    assert len(CITIES) == 10
    codes = [city.code for city in CITIES]
    assert codes == [f"61{n:02d}00" for n in range(1, 11)]
    assert len({city.name for city in CITIES}) == 10
    assert all(city.name.endswith("市") for city in CITIES)
    assert all(city.counties for city in CITIES)


def test_county_codes_are_six_digits_unique_and_under_their_city() -> None:
    seen: set[str] = set()
    for city in CITIES:
        for county in city.counties:
            assert SIX_DIGITS.fullmatch(county.code), county
            assert county.code.startswith(city.code[:4]), (city.name, county)
            assert not county.code.endswith("00"), county
            assert county.code not in seen, county
            seen.add(county.code)


def test_county_names_unique() -> None:
    names = [county.name for county in _all_counties()]
    assert len(names) == len(set(names))
    assert all(name[-1] in "区县市" for name in names)


def test_exactly_the_four_direct_units() -> None:
    direct = {county.code: county.name for county in _all_counties() if county.direct}
    assert direct == EXPECTED_DIRECT


def test_county_count() -> None:
    assert 100 <= len(_all_counties()) <= 115


def test_township_names_distinct_and_plausible() -> None:
    assert len(TOWNSHIP_NAMES) >= 150
    assert len(TOWNSHIP_NAMES) == len(set(TOWNSHIP_NAMES))
    for name in TOWNSHIP_NAMES:
        assert 2 <= len(name) <= 3, name
        assert not name.endswith("街道"), name


def test_name_pools() -> None:
    assert SITE_SUFFIXES
    assert len(SITE_SUFFIXES) == len(set(SITE_SUFFIXES))
    assert len(PERSON_SURNAMES) >= 40
    assert len(PERSON_SURNAMES) == len(set(PERSON_SURNAMES))
    assert len(PERSON_GIVEN) >= 80
    assert len(PERSON_GIVEN) == len(set(PERSON_GIVEN))
    assert all(1 <= len(name) <= 2 for name in PERSON_GIVEN)


def test_no_empty_strings() -> None:
    strings: list[str] = [*SITE_SUFFIXES, *PERSON_SURNAMES, *PERSON_GIVEN, *TOWNSHIP_NAMES]
    for city in CITIES:
        strings += [city.code, city.name]
        for county in city.counties:
            strings += [county.code, county.name]
    assert all(s and s.strip() == s for s in strings)
