"""Writing an evaluation report: grid.png, report.md and report.json side by side."""

from __future__ import annotations

import json

from job import storage
from job.core import console


def write_report(out: str, report: dict, markdown: str, grid_png: bytes) -> None:
    """grid.png, report.md and report.json into `out`; the markdown is printed too."""
    storage.write_bytes(storage.join(out, "grid.png"), grid_png)
    storage.write_bytes(storage.join(out, "report.md"), markdown.encode())
    storage.write_bytes(storage.join(out, "report.json"), json.dumps(report, indent=1).encode())
    print(markdown, flush=True)
    console.say(f"wrote {storage.join(out, 'report.json')}, report.md and grid.png")
