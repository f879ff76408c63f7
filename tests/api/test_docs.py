"""The reference in docs/ and /openapi.json describe the same API; the README's links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
HEADING = re.compile(r"^### (GET|POST|PUT|PATCH|DELETE) (/\S*)\s*$", re.MULTILINE)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
STATUS_LINE = re.compile(r"^`[1-5]\d\d [A-Z][A-Za-z ]+`", re.MULTILINE)


def documented_sections() -> dict[tuple[str, str], str]:
    """(method, path) → the text under its heading, up to the next heading."""
    sections = {}
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text("utf-8")
        for chunk in re.split(r"^(?=#{1,3} )", text, flags=re.MULTILINE):
            if match := HEADING.match(chunk):
                key = (match[1].lower(), match[2])
                assert key not in sections, f"{match[1]} {match[2]} is documented twice"
                sections[key] = chunk[match.end():]
    return sections


def served_operations(client) -> set[tuple[str, str]]:
    spec = client.get("/openapi.json").json
    return {(method, path) for path, methods in spec["paths"].items() for method in methods
            if method != "parameters"}


def test_every_operation_in_openapi_is_in_the_reference_and_nothing_else(client):
    assert set(documented_sections()) == served_operations(client)


@pytest.mark.store_independent
def test_every_operation_in_the_reference_has_an_example_request_and_answer():
    for (method, path), section in documented_sections().items():
        assert "```bash\ncurl" in section, f"{method.upper()} {path}: no example request"
        assert STATUS_LINE.search(section), f"{method.upper()} {path}: no example answer"


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text("utf-8"), flags=re.DOTALL)  # code is not links
    return [target for target in LINK.findall(text)
            if not re.match(r"^(?:[a-z][a-z0-9+.-]*:|#)", target)]


@pytest.mark.store_independent
def test_the_readme_and_docs_link_only_to_files_in_the_repository():
    pages = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for target in relative_links(page):
            resolved = (page.parent / target.split("#")[0]).resolve()
            if not resolved.exists() or REPO not in (resolved, *resolved.parents):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert broken == []


@pytest.mark.store_independent
def test_the_readme_points_to_the_reference():
    assert "docs/api-reference.md" in relative_links(REPO / "README.md")


@pytest.mark.store_independent
def test_the_link_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](missing.md) [b](https://example.com) [c](#anchor)\n```\n[d](code.md)\n```\n")
    assert relative_links(page) == ["missing.md"]
