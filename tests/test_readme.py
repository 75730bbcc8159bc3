"""The README is the landing page: its headline table is the one drawn from docs/results/, and
every page it links to exists."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.headline import table

ROOT = Path(__file__).resolve().parents[1]


def test_readme_headline_table_equals_the_results_files() -> None:
    readme = (ROOT / "README.md").read_text()
    assert table() in readme, "README headline table is stale: run python -m benchmarks.headline"


def test_readme_and_docs_links_resolve() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert any(line.startswith("make demo") for line in lines[:12])
    assert any(line.startswith("make test") for line in lines[:12])
