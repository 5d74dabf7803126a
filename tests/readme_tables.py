"""README tables that tests hold the code to (the README is the one place their facts are written)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def table_rows(heading: str) -> list[list[str]]:
    """The cells of every table line in README's section `## {heading}` (up to the next `## `)."""
    text = README.read_text()
    section = text[text.index(f"## {heading}"):]
    section = section[:section.index("\n## ", 1)]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.lstrip().startswith("|")]
