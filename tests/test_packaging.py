"""The package metadata: pyproject.toml's dependencies are requirements.txt's runtime pins, and the entry point runs.

requirements.txt is what `make venv` and the Docker image install; pyproject.toml is what `pip install .` reads.
Two lists of pins drift apart silently unless a test compares them.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from tests.support import PYTHON, REPO_ROOT

TEST_TOOLS = {"pytest", "pytest-timeout", "playwright", "ruff", "aiosmtpd", "mypy"}


def _name(requirement: str) -> str:
    return requirement.split("[")[0].split("=")[0].strip().lower().replace("_", "-")


def _requirements() -> list[str]:
    lines = (Path(REPO_ROOT) / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_pyproject_pins_equal_requirements() -> None:
    project = tomllib.loads((Path(REPO_ROOT) / "pyproject.toml").read_text())["project"]
    pinned = _requirements()
    runtime = sorted(r for r in pinned if _name(r) not in TEST_TOOLS)
    tools = sorted(r for r in pinned if _name(r) in TEST_TOOLS)
    assert sorted(project["dependencies"]) == runtime
    assert sorted(project["optional-dependencies"]["test"]) == tools
    assert project["scripts"]["fleetdeck"] == "cli.main:main"


def test_cli_runs_as_a_module() -> None:
    """`python -m cli.main` (what the wrapper and the Docker image run) reaches the argument parser."""
    done = subprocess.run([PYTHON, "-m", "cli.main", "--help"], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert "usage: fleetdeck" in done.stdout
