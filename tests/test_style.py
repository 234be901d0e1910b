"""The code follows one style: ruff with the configuration in pyproject.toml ([tool.ruff])."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_the_package_scripts_and_tests_pass_ruff_with_the_projects_configuration():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "job", "scripts", "tests"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
