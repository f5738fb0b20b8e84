"""The repository's documentation stands on its own.

- Every relative link in every Markdown file resolves to a file (or folder) of the repository: no link
  leaves the repository or points at a file a checkout does not have.
- No file names the external design brief (its upper-case file name, built below from two pieces so
  that this file does not name it either): the design is docs/design.md, in the repository.
- Every citation "docs/design.md invariant N" / "section N" names an invariant or a section that
  docs/design.md has, so the numbers code comments rely on cannot drift.

"Files of the repository" are what a commit would carry: tracked files plus untracked ones git does
not ignore (so a new document is checked before it is added), never .venv or caches.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
DESIGN = REPO / "docs" / "design.md"
EXTERNAL_BRIEF_NAME = "DESIGN" + ".md"  # case-sensitive: docs/design.md never matches

# Used only where git cannot list the files (e.g. an unpacked source archive).
_NOT_REPOSITORY_DIRS = frozenset({
    ".git", ".venv", ".venv-deploy", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
    ".hypothesis", ".apptsync", "build", "dist", "bench-results", "node_modules",
})

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# [text](target "title") and ![alt](target); the target may be wrapped in <...>.
_INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
# [label]: target
_REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
_HTML_ATTRIBUTE = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

_CITATION = re.compile(r"docs/design\.md,?\s+(invariants?|sections?)\s+(\d+(?:(?:\s*,\s*|\s+and\s+|-)\d+)*)")


def repository_files() -> list[Path]:
    """The repository's files, relative to REPO, as a commit of the working tree would hold them."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, check=True, capture_output=True,
        ).stdout.decode("utf-8", "surrogateescape")
    except (OSError, subprocess.CalledProcessError):
        found = []
        for root, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in _NOT_REPOSITORY_DIRS and not d.endswith(".egg-info")]
            found += [Path(root, name).relative_to(REPO) for name in files]
        return sorted(found)
    # Deleted but not yet staged files are still listed as tracked: a checkout would not have them.
    return sorted({Path(name) for name in listed.split("\0") if name and (REPO / name).is_file()})


def markdown_prose(text: str) -> str:
    """The text of a Markdown document without fenced code blocks, code spans and HTML comments:
    what looks like a link there is not one."""
    kept, fence = [], ""
    for line in text.splitlines():
        opening = _FENCE.match(line)
        if fence:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = ""
            continue
        if opening:
            fence = opening.group(1)
            continue
        kept.append(_CODE_SPAN.sub("", line))
    return _HTML_COMMENT.sub("", "\n".join(kept))


def link_targets(text: str) -> list[str]:
    """Every link target of a Markdown document, in order (inline, reference definitions, HTML)."""
    prose = markdown_prose(text)
    targets = [m.group(1) for pattern in (_INLINE_LINK, _REFERENCE_DEFINITION, _HTML_ATTRIBUTE)
               for m in pattern.finditer(prose)]
    return [target[1:-1] if target.startswith("<") and target.endswith(">") else target for target in targets]


def relative_path(target: str) -> str | None:
    """The file part of a relative link; None for external links (a scheme) and in-page anchors."""
    if _SCHEME.match(target) or target.startswith("#"):
        return None
    return unquote(re.split(r"[?#]", target, maxsplit=1)[0])


def broken_links(document: Path, files: set[Path]) -> list[str]:
    """The links of `document` (relative to REPO) that do not resolve to a file or folder in `files`."""
    folders = {parent for path in files for parent in path.parents}
    root = REPO.resolve()
    broken = []
    for target in link_targets((REPO / document).read_text("utf-8")):
        path = relative_path(target)
        if path is None:
            continue
        if path.startswith("/"):
            broken.append(f"{document}: {target} (absolute path: link relative to the document)")
            continue
        resolved = (REPO / document).parent.joinpath(path).resolve()
        if not resolved.is_relative_to(root):
            broken.append(f"{document}: {target} (outside the repository)")
        elif (inside := resolved.relative_to(root)) not in files and inside not in folders:
            broken.append(f"{document}: {target} (no such file in the repository)")
    return broken


def numbers(text: str) -> list[int]:
    """ "1 and 3" -> [1, 3]; "4-6" -> [4, 5, 6]."""
    found: list[int] = []
    for part in re.split(r"\s*,\s*|\s+and\s+", text):
        low, _, high = part.partition("-")
        found += range(int(low), int(high or low) + 1)
    return found


def test_the_link_reader_sees_links_and_ignores_code() -> None:
    text = (
        "See [the design](docs/design.md#3-invariants), ![logo](img/logo.png 'Logo') and <https://x.org>.\n"
        "[ref]: ./deploy/README.md\n"
        "An anchor [up](#top), a site [x](https://example.com/a.md), code `[not](a.md)`.\n"
        "```sh\n[not a link](nowhere.md)\n```\n"
        '<a href="../outside.md">out</a>\n'
    )
    assert link_targets(text) == [
        "docs/design.md#3-invariants", "img/logo.png", "#top", "https://example.com/a.md", "./deploy/README.md",
        "../outside.md",
    ]
    assert [relative_path(t) for t in link_targets(text)] == [
        "docs/design.md", "img/logo.png", None, None, "./deploy/README.md", "../outside.md",
    ]
    assert numbers("1 and 3") == [1, 3]
    assert numbers("4-6") == [4, 5, 6]


def test_every_relative_markdown_link_resolves_inside_the_repository() -> None:
    files = set(repository_files())
    documents = sorted(path for path in files if path.suffix.lower() in {".md", ".markdown"})
    # Not vacuous: the documents this test exists for are among those checked.
    assert {Path("README.md"), Path("docs/design.md"), Path("deploy/RUNBOOK.md")} <= set(documents)
    broken = [link for document in documents for link in broken_links(document, files)]
    assert not broken, "links that do not resolve to a file of the repository:\n" + "\n".join(broken)


def test_no_file_names_the_external_design_brief() -> None:
    mentions = []
    for path in repository_files():
        data = (REPO / path).read_bytes()
        if b"\0" in data:
            continue  # binary
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # not text
        mentions += [
            f"{path}:{number}: {line.strip()}"
            for number, line in enumerate(text.splitlines(), start=1)
            if EXTERNAL_BRIEF_NAME in line
        ]
    assert not mentions, "cite docs/design.md (same invariant and section numbers) instead:\n" + "\n".join(mentions)


def test_citations_of_docs_design_name_invariants_and_sections_it_has() -> None:
    design = DESIGN.read_text("utf-8")
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", design, re.MULTILINE)}
    invariants_part = design.split("\n## 3. ", 1)[1].split("\n## ", 1)[0]
    invariants = {int(n) for n in re.findall(r"^(\d+)\. \*\*", invariants_part, re.MULTILINE)}
    assert invariants == set(range(1, 14)), "docs/design.md numbers its invariants 1 to 13"
    unknown = []
    for path in repository_files():
        try:
            text = (REPO / path).read_text("utf-8")
        except (UnicodeDecodeError, ValueError):
            continue
        for match in _CITATION.finditer(" ".join(text.split())):  # citations may wrap across lines
            known = invariants if match.group(1).startswith("invariant") else sections
            missing = [n for n in numbers(match.group(2)) if n not in known]
            if missing:
                unknown.append(f"{path}: {match.group(0)!r} (no {match.group(1)} {missing} in docs/design.md)")
    assert not unknown, "\n".join(unknown)
