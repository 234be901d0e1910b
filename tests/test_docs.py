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


COMMAND = re.compile(r"^\s+(?:\$ )?(?:\S*python -m job|\S*digit-job|\S*accelerate launch .*?-m job)\s+"
                     r"(train|sample|evaluate|transform|data)(?=\s|$)(.*)$")


def shown_commands():
    """(page, command, args, the error line shown under it or None) for every job command in an
    indented block of README or docs/; `[optional]` brackets are dropped, their keys kept, and
    of a synopsis's alternatives (format=a|b|c) the first is taken."""
    for page in [README, *DOCS]:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            m = COMMAND.match(line)
            if not m or "<" in m.group(2):
                continue  # a template (<preset|file.yaml>), not a command
            synopsis = re.sub(r"\[([^]|]*?) \| [^]]*\]", r"\1", m.group(2).split(" #")[0])  # [a | b]: a
            args = synopsis.replace("[", " ").replace("]", " ").split()
            args = [a.split("|")[0] for a in args]  # a synopsis's key=a|b|c: its first choice
            shown = lines[i + 1].strip() if i + 1 < len(lines) and lines[i + 1].strip().startswith("error:") else None
            yield page.name, m.group(1), args, shown


def test_every_job_command_shown_in_readme_and_docs_is_one_the_job_accepts(capsys):
    """Each command's keys and values are checked by the job's own parser (--print-config: the
    config is resolved, nothing runs); a command shown with its error line gives that line."""
    from job.cli import main

    seen = 0
    for page, command, args, shown in shown_commands():
        code = main([command, *args, "--print-config"])
        err = capsys.readouterr().err.strip()
        if shown is None:
            assert code == 0, (page, command, args, err)
        else:
            assert code == 2 and err == shown, (page, command, args, err)
        seen += 1
    assert seen >= 20
