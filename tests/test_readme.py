"""The README stays true: its configuration table is the broker's Settings, field for field.

When a setting changes, `python -m tests.test_readme` prints the table to paste between the
README's `settings:begin` and `settings:end` markers.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, fields

from broker_service import config
from tests.helpers import REPO_ROOT

README = REPO_ROOT / "README.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def _default(value: object) -> str:
    if isinstance(value, str):
        return f'`"{value}"`' if value else "empty"
    return f"`{value}`"


def settings_table() -> str:
    """The configuration table, rendered from broker_service.config.Settings."""
    rows = ["| flag | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(config.Settings):
        assert f.default is not MISSING, f.name
        flag = "--" + f.name.replace("_", "-")
        env = "CONVEYOR_" + f.name.upper()
        meaning = config._HELP[f.name].replace("|", "\\|")
        rows.append(f"| `{flag}` | `{env}` | {_default(f.default)} | {meaning} |")
    return "\n".join(rows)


def test_readme_lists_every_broker_setting_as_it_is() -> None:
    text = README.read_text()
    found = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    assert found, f"README.md lacks the {BEGIN} ... {END} block"
    expected = settings_table()
    assert found.group(1).strip() == expected, (
        "README.md's configuration table is out of date; replace it with:\n" + expected
    )


def test_readme_quick_start_is_two_commands() -> None:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", section, re.S)
    lines = [line for block in commands for line in block.splitlines() if line.strip()]
    assert lines == ["make run", "make test"]


if __name__ == "__main__":
    print(settings_table())
