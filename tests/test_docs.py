"""The documents the product cites exist: every ``*.md`` file named in user-facing text (the
README, ``docs/``, the code's messages and help) is in the repository, and every relative link
in the README and ``docs/`` points at a file that exists (and, with ``#anchor``, at a heading
of it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SOURCES = sorted((ROOT / "esctl").rglob("*.py"))

MD_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {
        _slug(line.lstrip("#"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }


def _exists(name: str, relative_to: Path) -> bool:
    return (relative_to / name).exists() or (ROOT / name).exists()


@pytest.mark.parametrize("path", DOCUMENTS + SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_document_exists(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    missing = sorted({name for name in MD_NAME.findall(text) if not _exists(name, path.parent)})
    assert not missing, f"{path.relative_to(ROOT)} names documents the repository lacks: {missing}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists() or (
            anchor and linked.suffix == ".md" and anchor not in _anchors(linked)
        ):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


def test_layout_document_has_the_sections_the_messages_cite() -> None:
    cited = set()
    for path in SOURCES:
        cited |= set(re.findall(r"docs/layout\.md §(\d+)", path.read_text(encoding="utf-8")))
    assert cited, "no message cites docs/layout.md: this test has nothing to check"
    headings = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    for number in cited:
        assert re.search(rf"^## {number}\. ", headings, re.M), f"docs/layout.md has no § {number}"
