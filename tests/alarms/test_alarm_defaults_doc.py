"""The table of alarm defaults in docs/alarms.md is the code's: ``alarms.rules.defaults_table_markdown()``
renders it from ``DEFAULTS``, and this test fails when its copy there differs, so a default
changed in code cannot leave the documentation behind. No servers.

To refresh docs/alarms.md after changing a default or its source, replace the table under "The
defaults and where they come from" with the function's output.
"""

from __future__ import annotations

from pathlib import Path

from alarms.rules import DEFAULTS, defaults_table_markdown
from alarms.rules.params import OVERRIDABLE

README = Path(__file__).resolve().parents[2] / "docs" / "alarms.md"
HEADER = "| parameter | default | source |\n"


def _readme_table() -> str:
    text = README.read_text(encoding="utf-8")
    assert text.count(HEADER) == 1, "docs/alarms.md 中应恰好有一张报警默认值表"
    start = text.index(HEADER)
    end = text.find("\n\n", start)
    return text[start : end + 1] if end >= 0 else text[start:]


def test_the_readme_table_is_the_generated_one() -> None:
    assert _readme_table() == defaults_table_markdown(), (
        "docs/alarms.md 的报警默认值表与代码不一致：请用 alarms.rules.defaults_table_markdown() 的输出替换该表"
    )


def test_the_table_has_one_row_per_default_in_order() -> None:
    rows = defaults_table_markdown().splitlines()[2:]
    assert [row.split(" | ")[0].removeprefix("| `").removesuffix("`") for row in rows] == list(DEFAULTS)


def test_only_overridable_parameters_are_said_to_be_overridable() -> None:
    for row in DEFAULTS.values():
        if "overridable per compartment" in row.source_en:
            assert row.name.split(".")[0] in OVERRIDABLE, row.name
            assert "可按温区覆盖" in row.source_zh, row.name
