"""A figure quoted in a page's prose, and the check that the page holds it as the data gives it
(shared by quoted_figures.py and page_figures.py)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Figure:
    doc: str  # path from the repository root
    sentence: str  # as in the doc, each computed number as {}
    values: Callable[[], tuple[str, ...]]

    def text(self) -> str:
        return self.sentence.format(*self.values())


def _words(text: str) -> str:
    return " ".join(text.split())  # a sentence may wrap anywhere in the doc


def missing(figures: tuple[Figure, ...], root: Path) -> list[str]:
    """The computed sentences a page under `root` does not hold (empty: every figure matches)."""
    return [f"{f.doc}: {f.text()!r}" for f in figures
            if _words(f.text()) not in _words((root / f.doc).read_text(encoding="utf-8"))]


def report(figures: tuple[Figure, ...], root: Path) -> None:
    """Print each figure as ok or MISSING; exit 1 if one is missing."""
    absent = set(missing(figures, root))
    for figure in figures:
        line = f"{figure.doc}: {figure.text()!r}"
        print(("MISSING " if line in absent else "ok      ") + line)
    sys.exit(1 if absent else 0)
