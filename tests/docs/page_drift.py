"""What the docs tests of a page backed by a table script share: run the script as a reader would and
list where the page and its output differ."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def printed(root: Path, script: Path) -> tuple[list[str], list[str]]:
    """`script` (relative to `root`) run from the tree at `root`: its Markdown tables, and its other
    lines of text (sentences and quoted figures), as printed in blocks split by blank lines."""
    done = subprocess.run([sys.executable, str(root / script)], capture_output=True, text=True, cwd=root, timeout=60)
    assert done.returncode == 0, done.stderr
    blocks = done.stdout.strip().split("\n\n")
    tables = [b for b in blocks if b.startswith("|")]
    texts = [line for b in blocks if not b.startswith("|") for line in b.splitlines()]
    return tables, texts


def drift(root: Path, script: Path, page: Path, source: str) -> list[str]:
    """Every computed row or text the page lacks, and every row of the page's tables that the data
    (`source`, named in the message) does not give: a stale or invented row is drift too."""
    text = (root / page).read_text(encoding="utf-8")
    page_lines = text.splitlines()
    tables, texts = printed(root, script)
    problems = []
    for table in tables:
        rows = table.splitlines()
        problems += [f"{page} lacks the computed row {row!r}" for row in rows if row not in page_lines]
        start = page_lines.index(rows[0]) if rows[0] in page_lines else len(page_lines)
        for line in page_lines[start + 2:]:
            if not line.startswith("|"):
                break
            if line not in rows:
                problems.append(f"{page} has the row {line!r} that {source} does not give")
    words = " ".join(text.split())  # the prose wraps lines anywhere
    problems += [f"{page} lacks the computed text {t!r}" for t in texts if " ".join(t.split()) not in words]
    return problems
