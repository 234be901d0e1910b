"""README and docs/: a front door that fits on a screen or two, every page reachable from it,
links that lead somewhere, and words a reader can place (machines and dates, not the
project's working history)."""

from __future__ import annotations

import re

from conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
# Words that only make sense to whoever wrote them down, at the time.
HISTORY = re.compile(r"this session|session's|this round|the seed project|\bissue \d+|issue that asked", re.I)


def test_the_readme_stays_a_front_door_of_at_most_about_350_lines():
    assert len(README.read_text().splitlines()) <= 350


def test_every_docs_page_is_linked_from_the_readme():
    text = README.read_text()
    assert DOCS and all(f"docs/{page.name}" in text for page in DOCS), [p.name for p in DOCS]


def test_relative_links_lead_to_files_that_exist():
    for page in [README, *DOCS, REPO / "k8s" / "README.md", REPO / "docker" / "README.md"]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to missing {target}"


def test_readme_and_docs_speak_of_machines_and_dates_not_of_sessions_rounds_or_issue_numbers():
    for page in [README, *DOCS]:
        found = [line for line in page.read_text().splitlines() if HISTORY.search(line)]
        assert not found, (page.name, found[:3])
