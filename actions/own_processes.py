"""fleetdeck's own background processes (the dashboard, the standalone collector): started, adopted, stopped and
probed by PID file. Used by `fleetdeck up/down/status` (actions/fleet.py); moved out of it unchanged to keep
both modules near the ~500-line aim.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from actions.backends.base import BackendError, FleetError
from core.config import REPO_ROOT, FleetConfig, config_path
from core.private_paths import TRAVERSE_ONLY, private_dir
from core.process import VENV_PYTHON, ProcessControlError, http_get, port_is_free, process_matches, tail, terminate

log = logging.getLogger(__name__)

# server.py: app.py plus the session-cookie routes (sessions survive a reload; dashboard/session_cookie.py)
DASHBOARD_APP = REPO_ROOT / "dashboard" / "server.py"
DASHBOARD_BOOT_TIMEOUT_S = 60.0
COLLECTOR_SETTLE_S = 1.5


class BackgroundProcess:
    """A long-running helper process of fleetdeck's own (dashboard, collector) with a PID file under the state
    directory; its pid is trusted only while /proc shows it is still that program (pids get recycled)."""

    name = "process"

    def __init__(self, config: FleetConfig, config_file: Path | None = None) -> None:
        self.config = config
        self.config_file = config_file or config_path()
        self.pid_path = config.state_path / f"{self.name}.pid"
        self.log_path = config.state_path / "logs" / f"{self.name}.log"
        self.spawned_at = 0.0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def identity(self) -> tuple[str, ...]:
        """Strings the process's command line must contain to be ours."""
        raise NotImplementedError

    def ready(self, process: subprocess.Popen[bytes]) -> bool:
        return True

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if process_matches(pid, *self.identity()) else None

    def start(self, timeout_s: float = DASHBOARD_BOOT_TIMEOUT_S) -> int:
        pid = self.pid()
        if pid:
            return pid
        env = {**os.environ, "FLEETDECK_CONFIG": str(self.config_file), "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        private_dir(self.config.state_path, TRAVERSE_ONLY)
        private_dir(self.log_path.parent)
        self.spawned_at = time.monotonic()
        with self.log_path.open("ab") as handle:
            process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=env,
                cwd=str(REPO_ROOT), start_new_session=True,
            )
        self.pid_path.write_text(f"{process.pid}\n")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_path.unlink(missing_ok=True)
                raise FleetError(f"the {self.name} exited with code {process.returncode}:\n{tail(self.log_path)}")
            if self.ready(process):
                log.info("%s pid %s is ready", self.name, process.pid)
                return process.pid
            time.sleep(0.25)
        self.stop()
        raise FleetError(f"the {self.name} did not become ready within {timeout_s:.0f}s:\n{tail(self.log_path)}")

    def stop(self) -> bool:
        pid = self.pid()
        if pid:
            try:
                terminate(pid, 10.0)
            except ProcessControlError as error:
                raise BackendError(str(error)) from None
        self.pid_path.unlink(missing_ok=True)
        return pid is not None

    def status(self) -> dict[str, Any]:
        pid = self.pid()
        return {"running": pid is not None, "pid": pid}


class Dashboard(BackgroundProcess):
    """The Streamlit dashboard; ready once it answers /_stcore/health."""

    name = "dashboard"

    def __init__(self, config: FleetConfig, app: Path | None = None, config_file: Path | None = None) -> None:
        super().__init__(config, config_file)
        self.app = app or DASHBOARD_APP
        self.url = f"http://{config.dashboard.host}:{config.dashboard.port}"

    def argv(self) -> list[str]:
        return [
            str(VENV_PYTHON), "-m", "streamlit", "run", str(self.app),
            "--server.port", str(self.config.dashboard.port),
            "--server.address", self.config.dashboard.host,
            "--server.headless", "true",
            "--browser.gatherUsageStats", "false",
        ]

    def identity(self) -> tuple[str, ...]:
        return ("streamlit", str(self.config.dashboard.port))

    def healthy(self) -> bool:
        status, _ = http_get(f"{self.url}/_stcore/health", 1.0)
        return status == 200

    def ready(self, process: subprocess.Popen[bytes]) -> bool:
        return self.healthy()

    def start(self, timeout_s: float = DASHBOARD_BOOT_TIMEOUT_S) -> int:
        if self.pid() is None and not port_is_free(self.config.dashboard.host, self.config.dashboard.port):
            raise FleetError(
                f"dashboard port {self.config.dashboard.host}:{self.config.dashboard.port} is in use by another"
                " program; stop it or change dashboard.port"
            )
        return super().start(timeout_s)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "url": self.url, "healthy": bool(self.pid()) and self.healthy()}


class StandaloneCollector(BackgroundProcess):
    """`fleetdeck collect` in the background: samples keep coming while no browser has the dashboard open.

    Started by `up` when dashboard.embedded_collector is false (then the dashboard runs no scheduler itself).
    """

    name = "collector"

    def argv(self) -> list[str]:
        return [
            str(VENV_PYTHON), "-c", "import sys; from cli.main import main; sys.exit(main())",
            "--config", str(self.config_file), "collect",
        ]

    def identity(self) -> tuple[str, ...]:
        return ("cli.main", "collect")

    def ready(self, process: subprocess.Popen[bytes]) -> bool:
        # ready once it survived its start-up (config, store, first jobs scheduled) without exiting
        return time.monotonic() - self.spawned_at >= COLLECTOR_SETTLE_S
