"""Adopting an existing PM2 ecosystem file (`services[].pm2_ecosystem`): the app's name, script, instances,
exec_mode, env (incl. `increment_var`: one port per instance) and cwd are read from the file, so fleet.yaml need
not restate them. Keys the service states in fleet.yaml win; the file fills only what is missing.

An `ecosystem.config.js` (or `.cjs`) is the user's own JavaScript: fleetdeck runs it with node exactly as `pm2
start` would (docs/security.md), through a tiny loader under a timeout that prints the apps as JSON, with its
output bounded. A `.json` file is read directly; `.yaml`/`.yml` with a safe YAML loader. Errors name the
configuration file, the service, the ecosystem file and the key.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

LOADER_TIMEOUT_S = 10.0
OUTPUT_LIMIT = 1 << 20  # the apps as JSON; an ecosystem file printing more is refused
FILE_LIMIT = 1 << 20
DEFAULT_MAX_REPLICAS = 8  # ServiceConfig's default: the port range derived from PORT must hold this many

# Runs in node with the ecosystem file as argv[1]: require() it like pm2 does, keep the apps, print them as JSON
# between two marker lines (anything the file itself prints to stdout is ignored).
_LOADER = r"""
const fs = require('node:fs');
const file = require('node:path').resolve(process.argv[1]);
let loaded;
try {
  loaded = require(file);
} catch (error) {
  const why = String((error && error.stack) || error).split('\n').slice(0, 2).join(' ');
  fs.writeSync(2, '\n@@fleetdeck-error@@ ' + why + '\n');
  process.exit(1);
}
if (loaded && loaded.__esModule && loaded.default) loaded = loaded.default;
const apps = Array.isArray(loaded) ? loaded : (loaded && loaded.apps) || loaded;
fs.writeSync(1, '\n@@fleetdeck-apps@@\n' + JSON.stringify(Array.isArray(apps) ? apps : [apps]) + '\n');
process.exit(0);
"""
_START, _NAME_OK = "@@fleetdeck-apps@@", re.compile(r"^[a-z][a-z0-9-]{0,40}$")


class EcosystemError(ValueError):
    """The ecosystem file cannot be read or does not describe an app fleetdeck can run; says which key."""


def load_apps(file: Path) -> list[dict[str, Any]]:
    """The `apps` of an ecosystem file (JavaScript through node, JSON, or YAML)."""
    if not file.is_file():
        raise EcosystemError(f"{file}: no such file")
    if file.stat().st_size > FILE_LIMIT:
        raise EcosystemError(f"{file}: larger than {FILE_LIMIT} bytes")
    if file.suffix in (".json", ".yaml", ".yml"):
        try:
            data: Any = yaml.safe_load(file.read_text())  # JSON is YAML
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
            raise EcosystemError(f"{file}: cannot be parsed: {error}") from None
        apps = data.get("apps", data) if isinstance(data, dict) else data
    else:
        apps = _run_loader(file)
    if isinstance(apps, dict):
        apps = [apps]
    if not isinstance(apps, list) or not all(isinstance(a, dict) for a in apps):
        raise EcosystemError(f"{file}: apps: expected a list of app objects")
    return apps


def _run_loader(file: Path) -> Any:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        raise EcosystemError(f"{file}: node is not installed (needed to read a JavaScript ecosystem file)")
    returncode, out, err = _run_bounded([node, "-e", _LOADER, str(file)], file.parent)
    if returncode != 0:
        text = err.decode(errors="replace")
        marked = text.rfind("@@fleetdeck-error@@ ")
        why = text[marked + 20:].strip() if marked >= 0 else " | ".join(text.strip().splitlines()[-3:])
        raise EcosystemError(f"{file}: node failed to evaluate it: {why[:500] or f'exit {returncode}'}")
    text = out.decode(errors="replace")
    start = text.rfind("\n" + _START + "\n")
    if start < 0:
        raise EcosystemError(f"{file}: the loader printed no apps")
    try:
        return json.loads(text[start + len(_START) + 2:])
    except ValueError as error:
        raise EcosystemError(f"{file}: the apps are not JSON-serialisable: {error}") from None


def _run_bounded(argv: list[str], cwd: Path) -> tuple[int, bytes, bytes]:
    """Run the loader in its own session under LOADER_TIMEOUT_S, keeping at most OUTPUT_LIMIT bytes of stdout
    (more is refused) and the last 4 KiB of stderr; the whole process group is killed when it overruns."""
    proc = subprocess.Popen(argv, cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + LOADER_TIMEOUT_S
    problem = ""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                problem = f"node did not finish evaluating it within {LOADER_TIMEOUT_S:g}s"
                break
            for key, _ in selector.select(min(left, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if key.data is err and len(err) > 4096:
                    del err[:-4096]
            if len(out) > OUTPUT_LIMIT:
                problem = f"it printed more than {OUTPUT_LIMIT} bytes"
                break
    if problem:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        returncode = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
    finally:
        proc.stdout.close()
        proc.stderr.close()
    if problem:
        raise EcosystemError(f"{argv[-1]}: {problem}")
    return returncode, bytes(out), bytes(err)


def pick_app(apps: list[dict[str, Any]], wanted: str | None, file: Path) -> tuple[int, dict[str, Any]]:
    """The app to adopt: the one named `wanted`, else the only one."""
    names = [str(a.get("name")) for a in apps]
    if wanted is not None:
        if wanted not in names:
            raise EcosystemError(f"{file}: no app named '{wanted}' (apps: {', '.join(names) or 'none'})")
        return names.index(wanted), apps[names.index(wanted)]
    if len(apps) != 1:
        raise EcosystemError(f"{file}: {len(apps)} apps ({', '.join(names)}): say which with pm2_app")
    return 0, apps[0]


def _braces(text: str) -> str:
    """A literal value from the file, escaped so fleetdeck's placeholders do not touch it."""
    return text.replace("{", "{{").replace("}", "}}")


def adopt(service: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The service mapping from fleet.yaml with the keys it does not state filled from its ecosystem file."""
    file = Path(str(service["pm2_ecosystem"]))
    file = file if file.is_absolute() else base_dir / file
    index, app = pick_app(load_apps(file), service.get("pm2_app"), file)
    key = f"{file}: apps[{index}]"
    filled = dict(service)

    name = app.get("name")
    if "name" not in service:
        if not isinstance(name, str) or not _NAME_OK.match(name):
            raise EcosystemError(f"{key}.name: {name!r} cannot be a service name (lowercase letters, digits, '-';"
                                 " or set services[].name)")
        filled["name"] = name

    cwd_value = app.get("cwd")
    cwd = Path(str(cwd_value)) if cwd_value else file.parent
    cwd = cwd if cwd.is_absolute() else file.parent / cwd
    if "pm2_cwd" not in service:
        filled["pm2_cwd"] = str(cwd)

    if "command" not in service:
        script = app.get("script")
        if not isinstance(script, str) or not script:
            raise EcosystemError(f"{key}.script: required (the file to run)")
        script_path = Path(script) if Path(script).is_absolute() else cwd / script
        args = app.get("args", [])
        arg_list = _words(args, f"{key}.args")
        interpreter = str(app.get("interpreter") or "node")
        node_key = "node_args" if app.get("node_args") else "interpreter_args"
        node_list = _words(app.get(node_key) or [], f"{key}.{node_key}")
        if interpreter == "none":
            argv = [str(script_path), *arg_list]
        else:
            argv = [interpreter, *node_list, str(script_path), *arg_list]
        filled["command"] = _braces(shlex.join(argv))

    exec_mode = str(app.get("exec_mode", "fork")).removesuffix("_mode")
    if exec_mode not in ("fork", "cluster"):
        raise EcosystemError(f"{key}.exec_mode: expected fork or cluster, got {app.get('exec_mode')!r}")
    if "pm2_exec_mode" not in service:
        filled["pm2_exec_mode"] = exec_mode

    instances = app.get("instances", 1)
    if instances in ("max", 0, -1, "0", "-1"):
        instances = os.cpu_count() or 1
    elif isinstance(instances, str) and instances.lstrip("-").isdigit():
        instances = int(instances)
        instances = max(1, (os.cpu_count() or 1) + instances) if instances < 0 else instances
    if not isinstance(instances, int) or isinstance(instances, bool) or instances < 1:
        raise EcosystemError(f"{key}.instances: expected a positive number or 'max', got {app.get('instances')!r}")
    if "replicas" not in service:
        filled["replicas"] = instances
        if "max_replicas" not in service and instances > DEFAULT_MAX_REPLICAS:
            filled["max_replicas"] = instances

    file_env = app.get("env") or {}
    if not isinstance(file_env, dict):
        raise EcosystemError(f"{key}.env: expected a mapping, got {type(file_env).__name__}")
    env = {str(k): _braces(_env_text(v, f"{key}.env.{k}")) for k, v in file_env.items()}
    increment_var = app.get("increment_var")
    if increment_var is not None and (not isinstance(increment_var, str) or not increment_var):
        raise EcosystemError(f"{key}.increment_var: expected a variable name, got {increment_var!r}")
    if increment_var and exec_mode == "fork":
        base = file_env.get(increment_var)
        if not str(base).isdigit():  # pm2 increments it per instance
            raise EcosystemError(f"{key}.env.{increment_var}: increment_var needs a numeric base value, got {base!r}")
        if "ports" not in service:
            count = max(int(filled.get("max_replicas", DEFAULT_MAX_REPLICAS)), int(filled["replicas"]))
            filled["ports"] = {"start": int(str(base)), "end": int(str(base)) + count - 1}
        env[increment_var] = "{port}"  # one port per instance, as PM2's increment_var gives
    elif str(file_env.get("PORT", "")).isdigit():
        if "ports" not in service:
            base = int(str(file_env["PORT"]))
            count = max(int(filled.get("max_replicas", DEFAULT_MAX_REPLICAS)), int(filled["replicas"]))
            filled["ports"] = {"start": base, "end": base + count - 1}
        if exec_mode == "fork":
            env["PORT"] = "{port}"  # fleetdeck's fork mode gives every replica its own port
    env.update({str(k): v for k, v in (service.get("env") or {}).items()})  # fleet.yaml's values win
    filled["env"] = env
    return filled


def _words(value: Any, key: str) -> list[str]:
    """`args`/`node_args`: a command-line string or a list, as pm2 takes them."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as error:
            raise EcosystemError(f"{key}: {error}") from None
    if isinstance(value, list):
        return [str(item) for item in value]
    raise EcosystemError(f"{key}: expected a string or a list, got {type(value).__name__}")


def _env_text(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise EcosystemError(f"{key}: expected a string or number, got {type(value).__name__}")
