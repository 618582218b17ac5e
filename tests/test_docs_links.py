"""The documentation stands on its own: every relative link in README.md and docs/*.md names a
file inside the repository (a clone with nothing beside it must have everything it links to).

Links with a scheme (https:, mailto:) and bare anchors (#section) are not files and are skipped;
a link's own anchor or query (docs/protocol.md#close-codes) is ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

# Fenced code blocks and inline code hold examples, not links.
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
# [text](target "title") and ![alt](target); the target may be wrapped in <...>.
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[^)]*)?\)")
# [label]: target  (reference definitions)
_REFERENCE = re.compile(r"^[ ]{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
# <a href="..."> and <img src="..."> in raw HTML.
_HTML = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def links(text: str) -> list[str]:
    """Every link target in a Markdown text, outside code."""
    prose = _CODE.sub("", _FENCE.sub("", text))
    found = [*_INLINE.findall(prose), *_REFERENCE.findall(prose), *_HTML.findall(prose)]
    return [target.strip("<>") for target in found]


def local_path(target: str) -> str | None:
    """The file path a link names, or None for a URL with a scheme, a host or only an anchor."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path:
        return None
    return unquote(parts.path)


def broken_links(document: Path, root: Path = ROOT) -> list[str]:
    """The relative links of document that leave root or name nothing that exists."""
    base = root.resolve()
    broken = []
    for target in links(document.read_text(encoding="utf-8")):
        path = local_path(target)
        if path is None:
            continue
        start = base if path.startswith("/") else document.resolve().parent
        resolved = (start / path.lstrip("/")).resolve()
        if not resolved.is_relative_to(base):
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (no such file)")
    return broken


def test_the_documents_are_there() -> None:
    assert ROOT / "README.md" in DOCUMENTS
    assert ROOT / "docs" / "protocol.md" in DOCUMENTS


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(document: Path) -> None:
    assert broken_links(document) == []


def test_the_checker_finds_what_it_must(tmp_path: Path) -> None:
    """The checker itself: what it follows, what it skips, what it reports."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("x")
    (tmp_path / "beside").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/here.md) [anchored](docs/here.md#part) [anchor](#top) [abs](/docs/here.md)\n"
        "[web](https://example.org/x.md) [mail](mailto:a@b.c) ![img](<docs/here.md>)\n"
        "[gone](docs/missing.md) [up](../elsewhere/PROTOCOL.md) [sneaky](docs/../../x.md)\n"
        '[ref]: docs/nowhere.md\n<a href="../out.md">x</a>\n'
        "`[code](../in-code.md)`\n```\n[fenced](../in-fence.md)\n```\n"
    )
    assert broken_links(readme, tmp_path) == [
        "docs/missing.md (no such file)",
        "../elsewhere/PROTOCOL.md (outside the repository)",
        "docs/../../x.md (outside the repository)",
        "docs/nowhere.md (no such file)",
        "../out.md (outside the repository)",
    ]
