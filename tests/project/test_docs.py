"""The repository carries every document it refers to: its links resolve inside it, and nothing
points at files outside it or at tracker numbers a reader of the code does not have."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import ROOT

# [text](target) and ![alt](target), without the fragment; absolute URLs are not ours to check.
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s#]+)(?:#[^)]*)?\)")
OUTSIDE = re.compile(r"\.\./shared/|\b[Ii]ssues? #?\d+\b")


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in listed.splitlines() if (ROOT / name).is_file()]


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_of_the_documents_resolves_to_a_file_in_the_repository():
    broken = []
    for document in documents():
        for target in MARKDOWN_LINK.findall(document.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (document.parent / target).resolve()
            if not resolved.exists() or ROOT not in resolved.parents:
                broken.append(f"{document.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_documents_the_code_names_are_in_docs():
    for name in ("reverse-delivery.md", "operations.md", "architecture.md", "benchmarks.md"):
        assert (ROOT / "docs" / name).is_file(), name


def test_no_file_points_outside_the_repository_or_at_issue_numbers():
    found = []
    for path in tracked_files():
        if path.suffix in {".png", ".sqlite3"}:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line) and "://" not in line:
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []
