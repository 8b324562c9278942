"""The repository stands alone: every relative link in README.md and docs/ resolves inside it,
anchors included, and every setting the services read is in the README's configuration table."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from pydantic_settings import BaseSettings

from core import settings as settings_module

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and [text]: target — images included; code spans are removed first.
_INLINE_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(path: Path) -> str:
    return _CODE_SPAN.sub("", _FENCE.sub("", path.read_text()))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _FENCE.sub("", path.read_text()).splitlines():
        if match := re.match(r"^#{1,6}\s+(.*)$", line):
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    prose = _prose(path)
    return _INLINE_LINK.findall(prose) + _REFERENCE_LINK.findall(prose)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(document: Path) -> None:
    broken = []
    for target in _links(document):
        parts = urlsplit(target)
        if parts.scheme in ("http", "https", "mailto"):
            continue
        if parts.scheme or parts.netloc:
            broken.append(f"{target}: only http(s) links may leave the repository")
            continue
        resolved = (document.parent / unquote(parts.path)).resolve() if parts.path else document
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target}: points outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: {resolved.relative_to(ROOT)} does not exist")
        elif parts.fragment and resolved.suffix == ".md" and parts.fragment not in _anchors(resolved):
            broken.append(f"{target}: no heading #{parts.fragment} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{document.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_sees_links() -> None:
    readme_links = _links(ROOT / "README.md")
    assert "docs/reference.md" in readme_links
    assert _slug("Triggers and actions (tables you write)") == "triggers-and-actions-tables-you-write"


def _settings_classes() -> list[type[BaseSettings]]:
    return [value for value in vars(settings_module).values()
            if isinstance(value, type) and issubclass(value, BaseSettings)
            and value is not BaseSettings]


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names = {name.upper() for cls in _settings_classes() for name in cls.model_fields}
    missing = sorted(name for name in names if f"`{name}`" not in section)
    assert names and not missing, f"README's configuration table lacks {missing}"
