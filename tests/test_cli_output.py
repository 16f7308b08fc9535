"""CLI nits of issue 13, run as the user runs the script: `undrain --yes` is accepted, a refusal is printed
once, and `status` into a pipe whose reader has gone away exits quietly (no BrokenPipe traceback)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support import REPO_ROOT, free_port_block

FLEETDECK = os.path.join(REPO_ROOT, "fleetdeck")


def config_file(tmp_path: Path) -> Path:
    start = free_port_block(8)
    path = tmp_path / "fleet.yaml"
    path.write_text(f"""
state_dir: {tmp_path / "run"}
services:
  - name: web
    command: "true {{port}} {{instance_id}}"
    ports: {{start: {start}, end: {start + 7}}}
store: {{url: "sqlite:///{tmp_path / "fd.db"}"}}
""")
    return path


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLEETDECK, "--config", str(config), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_undrain_accepts_yes_and_a_refusal_is_printed_once(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    for verb in ("undrain", "drain"):
        result = run(config, verb, "web-9", "--yes")
        output = result.stdout + result.stderr
        assert "unrecognized arguments" not in output, output
        assert result.returncode == 3, output  # refused (unknown instance or role), never a usage error
        assert output.count("refused:") == 1, output


def test_status_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (e.g. `head` after its lines) is gone before we write
    try:
        result = subprocess.run([FLEETDECK, "--config", str(config), "status", "--json"], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == 141
