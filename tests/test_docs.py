"""docs/ is what the code cites: every `docs/<file>.md#<anchor>` citation must resolve.

Anchors are GitHub heading slugs (docs/README.md#citing-a-rule). The checker below is tested on
bad examples too, so a passing run means the citations resolve, not that nothing was checked.
Bad examples are assembled at run time, so the repository scan never sees them in this file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SOURCE_SUFFIXES = frozenset({".py", ".html", ".js", ".css", ".md"})
# Third-party and generated trees: not ours to cite from.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".venv",
        "node_modules",
        "vendor",
        "var",
        "staticfiles",
        "test-artifacts",
        "__pycache__",
        ".hypothesis",
        ".pytest_cache",
        ".ruff_cache",
    }
)

# docs/<file>.md, optionally #<anchor>, not preceded by a path character (so "mydocs/x.md" is not one).
CITATION = re.compile(r"(?<![\w.-])docs/([\w.-]+\.md)(?:#([\w-]+))?")
# Inside docs/: relative Markdown links, [text](file.md#anchor), [text](file.md) or [text](#anchor).
RELATIVE_LINK = re.compile(r"\]\((?!https?:|/)([\w.-]+\.md)?(?:#([\w-]+))?\)")
# Citations of the retired rules file. Escaped so this file does not match itself.
RETIRED = re.compile(r"SPEC\s*\u00a7|SPEC\.md|\u00a7\s*\d")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Citation:
    source: str  # where it was found, "path:line"
    file: str  # the docs file name, e.g. "windows.md"
    anchor: str | None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(markdown: str) -> list[str]:
    """The text of every Markdown heading, in order, skipping fenced code blocks."""
    result = []
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match:
            result.append(match.group(2))
    return result


def anchors(markdown: str) -> list[str]:
    """Every heading anchor of a page, in order, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    result = []
    for heading in headings(markdown):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.append(base if count == 0 else f"{base}-{count}")
    return result


def citations_in(text: str, *, source: str, docs_page: str | None = None) -> list[Citation]:
    """The docs citations in `text`. For a page inside docs/ (`docs_page`), also its relative links."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        found += [Citation(where, m.group(1), m.group(2)) for m in CITATION.finditer(line)]
        if docs_page is not None:
            for m in RELATIVE_LINK.finditer(line):
                if m.group(1) or m.group(2):
                    found.append(Citation(where, m.group(1) or docs_page, m.group(2)))
    return found


def broken(citations: list[Citation], docs: Path = DOCS) -> list[str]:
    """One message per citation whose file or anchor does not exist."""
    pages: dict[str, set[str] | None] = {}
    problems = []
    for citation in citations:
        if citation.file not in pages:
            path = docs / citation.file
            pages[citation.file] = set(anchors(path.read_text())) if path.is_file() else None
        known = pages[citation.file]
        if known is None:
            problems.append(f"{citation.source}: docs/{citation.file} does not exist")
        elif citation.anchor is not None and citation.anchor not in known:
            problems.append(
                f"{citation.source}: docs/{citation.file} has no heading with anchor #{citation.anchor}"
            )
    return problems


def retired_citations(text: str, *, source: str) -> list[str]:
    return [
        f"{source}:{number}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), start=1)
        if RETIRED.search(line)
    ]


def source_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*")):
        relative = path.relative_to(ROOT)
        if any(part in SKIPPED_DIRS for part in relative.parts):
            continue
        if path.is_file() and path.suffix in SOURCE_SUFFIXES:
            yield path


def repository_citations() -> list[Citation]:
    found = []
    for path in source_files():
        relative = path.relative_to(ROOT)
        page = relative.name if relative.parts[0] == "docs" and len(relative.parts) == 2 else None
        found += citations_in(path.read_text(), source=str(relative), docs_page=page)
    return found


# --- the repository -------------------------------------------------------------------------------


def test_every_docs_citation_in_the_repository_resolves():
    problems = broken(repository_citations())
    assert not problems, "Broken docs citations:\n" + "\n".join(problems)


def test_the_scan_sees_the_code_citing_the_docs():
    # Guards the test above against passing because it found nothing to check.
    citations = repository_citations()
    from_code = {c.source.split(":")[0] for c in citations if c.source.split(":")[0].endswith(".py")}
    assert {"accounts/windows.py", "billing/cost.py", "billing/services.py"} <= from_code
    assert sum(1 for c in citations if c.anchor) > 40


def test_no_citation_of_the_retired_rules_file_remains():
    problems = []
    for path in source_files():
        problems += retired_citations(path.read_text(), source=str(path.relative_to(ROOT)))
    assert not problems, "Cite docs/<file>.md#<anchor> instead:\n" + "\n".join(problems)


def test_every_docs_page_is_listed_in_the_index_and_its_anchors_are_unique():
    index = (DOCS / "README.md").read_text()
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not list {page.name}"
        # Two headings with one slug would leave the second with a meaningless "-1" anchor.
        slugs = [slug(heading) for heading in headings(page.read_text())]
        repeated = sorted({s for s in slugs if slugs.count(s) > 1})
        assert not repeated, f"{page.name} has several headings with the anchor(s) {repeated}"


# --- the checker itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Key windows", "key-windows"),
        ("What 0 means", "what-0-means"),
        ("Checks, in order", "checks-in-order"),
        ("`usage_record` and rollups", "usage_record-and-rollups"),
        ("Prices in $/MTok", "prices-in-mtok"),
        ("[Price lookup](pricing.md#price-lookup)", "price-lookup"),
    ],
)
def test_a_heading_slug_is_githubs(heading, expected):
    assert slug(heading) == expected


def test_repeated_headings_and_fenced_lines_follow_github():
    page = "# Title\n## Usage\n```\n## not a heading\n```\n## Usage\n"
    assert anchors(page) == ["title", "usage", "usage-1"]


def test_the_checker_catches_a_typo_in_an_anchor(tmp_path):
    (tmp_path / "windows.md").write_text("# Windows\n## Key windows\n")
    good = "docs/" + "windows.md#key-windows"
    typo = "docs/" + "windows.md#key-windowz"
    text = f"# see {good}\n# and {typo}\n"
    problems = broken(citations_in(text, source="example.py"), docs=tmp_path)
    assert problems == ["example.py:2: docs/windows.md has no heading with anchor #key-windowz"]


def test_the_checker_catches_a_missing_file_and_accepts_a_bare_file(tmp_path):
    (tmp_path / "windows.md").write_text("# Windows\n")
    missing = "docs/" + "window.md"
    text = f"{missing}#key-windows, docs/" + "windows.md and mydocs/" + "other.md#x"
    problems = broken(citations_in(text, source="example.html"), docs=tmp_path)
    assert problems == [f"example.html:1: {missing} does not exist"]


def test_the_checker_follows_relative_links_inside_docs(tmp_path):
    (tmp_path / "windows.md").write_text("# Windows\n## Key windows\n")
    (tmp_path / "pricing.md").write_text("# Pricing\n## Components\n")
    text = (
        "[ok](windows.md#key-windows) [self](#components) [bad](windows.md#key-window) "
        "[gone](#nothing) [web](https://example.com/a.md#x)"
    )
    problems = broken(citations_in(text, source="docs/pricing.md", docs_page="pricing.md"), docs=tmp_path)
    assert problems == [
        "docs/pricing.md:1: docs/windows.md has no heading with anchor #key-window",
        "docs/pricing.md:1: docs/pricing.md has no heading with anchor #nothing",
    ]


def test_the_checker_catches_a_retired_citation():
    section = "\u00a7"
    spec_file = "SPEC" + ".md"
    text = f"ok line\n# (SPEC {section}2.1) lazy reset\nsee {spec_file}\nrules of {section}3\n"
    assert retired_citations(text, source="x.py") == [
        f"x.py:2: # (SPEC {section}2.1) lazy reset",
        f"x.py:3: see {spec_file}",
        f"x.py:4: rules of {section}3",
    ]
