"""One spelling for each choice (issue #25): the values the docs give an option are spelled as
`--help` shows them. The CLI reads '_' as '-', so `--dataset fashion_mnist` works too, but a reader
comparing the docs with `--help` should not meet two names for one thing."""
from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from ofexp.cli import cli

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _choices() -> dict[str, set[str]]:
    """{--option: the choices `--help` shows} over every command."""
    found: dict[str, set[str]] = {}
    for name in cli.list_commands(None):  # commands load lazily: ask the group for each
        for param in cli.get_command(None, name).params:
            if isinstance(param.type, click.Choice):
                for opt in param.opts:
                    found.setdefault(opt, set()).update(c.replace("_", "-") for c in param.type.choices)
    return found


def _uses(text: str, option: str) -> list[str]:
    """The values given to `option` in `text`: `--opt value` and `[--opt a|b]` alike."""
    values = []
    for match in re.finditer(rf"{re.escape(option)}[ =]([A-Za-z0-9_|.-]+)", text):
        values += [v for v in match.group(1).split("|") if v and v[0].isalpha() and v.upper() != v]
    return values


def test_the_docs_spell_each_choice_as_help_shows_it():
    choices = _choices()
    assert "fashion-mnist" in choices["--dataset"]
    wrong = []
    for page in PAGES:
        text = page.read_text()
        for option, allowed in choices.items():
            wrong += [f"{page.relative_to(REPO)}: {option} {v}" for v in _uses(text, option)
                      if v not in allowed and v.replace("_", "-") in allowed]
    assert not wrong, "spelled otherwise than in --help:\n" + "\n".join(wrong)


@pytest.mark.parametrize("page", ["docs/commands.md", "docs/fashion_mnist.md"])
def test_the_dataset_list_names_fashion_mnist_as_the_cli_does(page):
    assert "`fashion_mnist`" not in (REPO / page).read_text()
