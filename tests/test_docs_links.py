"""The README and docs/*.md link only to what is there: every image and link path names a file of
the repository, and every #anchor names a heading of the page it points to (no browser, no server).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# [text](target) and ![alt](target), the target up to a space (a title) or the closing bracket.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# The shared design of the project sits beside the checkout, not in it (README's first paragraph).
OUTSIDE = {"../shared/DESIGN.md"}
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE):
        plain = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
        found.add(re.sub(r"[^\w\- ]", "", plain).replace(" ", "-"))
    return found


def test_the_pages_link_to_something() -> None:
    readme = _links(ROOT / "README.md")
    assert sum(t.endswith(".png") for t in readme) >= 30  # the tour is read, not skipped
    assert any("#" in t for p in PAGES for t in _links(p))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_image_of_the_page_exists(page: Path) -> None:
    dead: list[str] = []
    for target in _links(page):
        if target in OUTSIDE:
            continue
        path, _, anchor = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if (
            not where.is_relative_to(ROOT)
            or not where.exists()
            or (anchor and where.suffix == ".md" and anchor not in _anchors(where))
        ):
            dead.append(target)
    assert not dead, f"{page.relative_to(ROOT)} links to what is not there: {dead}"


def test_a_dead_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n![shot](missing.png) [ok](#title) [gone](#nowhere)\n```\n[x](in-code.md)\n```\n",
        encoding="utf-8",
    )
    assert _links(page) == ["missing.png", "#title", "#nowhere"]
    assert _anchors(page) == {"title"}
