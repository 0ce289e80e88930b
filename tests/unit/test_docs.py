"""Documents the source points to are in the repository (issue 20)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("schemas", "libs", "services", "cli", "benchmarks", "scripts", "deploy")
# A path to a Markdown document: docs/DESIGN.md, README.md, ../shared/NOTES.md, ...
MARKDOWN_REFERENCE = re.compile(r"(?<![\w/.])((?:\.\./|[\w-]+/)*[\w-]+\.md)\b")


def referenced_documents() -> dict[str, list[str]]:
    """Every Markdown path named in the source, with where it is named."""
    found: dict[str, list[str]] = {}
    for top in SOURCES:
        for path in (ROOT / top).rglob("*"):
            if path.suffix not in {".py", ".sh", ".yaml", ".yml", ".tf"} or not path.is_file():
                continue
            for number, line in enumerate(path.read_text("utf-8", "replace").splitlines(), 1):
                for name in MARKDOWN_REFERENCE.findall(line):
                    found.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{number}")
    return found


def test_the_source_names_design_documents() -> None:
    """The check below has something to check (a broken regex would pass it vacuously)."""
    assert "docs/DESIGN.md" in referenced_documents()


def test_every_document_the_source_names_is_in_the_repository() -> None:
    missing = {
        name: where
        for name, where in referenced_documents().items()
        if not (ROOT / name).is_file() and not (ROOT / "docs" / name).is_file()
    }
    assert not missing, f"the source points to documents outside the repository: {missing}"
