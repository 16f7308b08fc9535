"""Values that reach a rendered nginx config are validated: injection strings fail at load time, naming the key;
addresses and labels coming from backends are checked again when the upstream block is rendered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actions.backends.base import UP, UpstreamServer
from actions.backends.nginx import render_nginx_conf, render_upstream
from core.config import ConfigError, parse_config

BAD_HOSTS = [
    "127.0.0.1\n    server 10.6.6.6:80",  # an extra upstream server
    "127.0.0.1;server 10.6.6.6:80",
    "127.0.0.1 backup",
    "evil}",
    "$host",
    "",
    "[not-ipv6]",
]
BAD_LISTENS = [
    "127.0.0.1:8080;\n        location /x { return 200 pwned; }\n        listen 127.0.0.1:9999",
    "127.0.0.1:8080 ssl",
    "127.0.0.1:99999",
    "127.0.0.1:",
    "127.0.0.1:80{",
    "a b:80",
]
BAD_STATE_DIRS = ["run;\nload_module /tmp/evil.so", "run dir", "run/${x}", "run#"]


def fleet(**changes: Any) -> dict[str, Any]:
    service = {"name": "web", "command": "x {port} {instance_id}", "ports": {"start": 20000, "end": 20010}}
    service.update(changes.pop("service", {}))
    data: dict[str, Any] = {"services": [service], "load_balancer": {"service": "web", **changes.pop("lb", {})}}
    data.update(changes)
    return data


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_service_host_injection_is_rejected(host: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"services\.0\.host"):
        parse_config(fleet(service={"host": host}), "test", tmp_path)


@pytest.mark.parametrize("listen", BAD_LISTENS)
def test_listen_injection_is_rejected(listen: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"load_balancer\.listen"):
        parse_config(fleet(lb={"listen": listen}), "test", tmp_path)


@pytest.mark.parametrize("state_dir", BAD_STATE_DIRS)
def test_state_dir_injection_is_rejected(state_dir: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="state_dir"):
        parse_config(fleet(state_dir=state_dir), "test", tmp_path)


def test_other_rendered_or_fetched_values_are_checked(tmp_path: Path) -> None:
    for data, key in [
        (fleet(dashboard={"host": "0.0.0.0\n"}), "dashboard.host"),
        (fleet(service={"health": {"path": "/health\r\nX-Evil: 1"}}), "services.0.health.path"),
        (fleet(service={"compose_service": "web;rm"}), "services.0.compose_service"),
        (fleet(lb={"stub_status_url": "http://127.0.0.1/ x"}), "load_balancer.stub_status_url"),
        (fleet(static_targets=[{"name": "s", "url": "file:///etc/passwd"}]), "static_targets.0.url"),
        (fleet(lb={"mode": "external", "include_path": "/etc/nginx/x.conf;", "reload_command": "true"}),
         "load_balancer.include_path"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config(data, "test", tmp_path)


def test_good_values_still_load(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "app-1.internal", "[::1]", "sampleapp"):
        parse_config(fleet(service={"host": host}), "test", tmp_path)
    for listen in ("127.0.0.1:8080", "0.0.0.0:80", "[::]:8080", "*:80", "8080", "lb.internal:8080"):
        parse_config(fleet(lb={"listen": listen}), "test", tmp_path)


def test_rendering_rechecks_backend_supplied_addresses_and_labels(tmp_path: Path) -> None:
    lb = parse_config(fleet(), "test", tmp_path).load_balancer
    assert lb is not None
    with pytest.raises(Exception, match="refusing to render"):
        render_upstream(lb, [UpstreamServer("127.0.0.1:9101;\n    server 10.6.6.6:80", UP, "web-1")])
    rendered = render_upstream(lb, [UpstreamServer("127.0.0.1:9101", UP, "web-1\n    server 10.6.6.6:80;")])
    # the label stays inside its comment: one server line, and no line that starts a directive with the address
    assert [line.split("#")[0].strip() for line in rendered.splitlines() if "10.6.6.6" in line] == [
        "server 127.0.0.1:9101 max_fails=3 fail_timeout=10s;"]
    assert sum(line.strip().startswith("server ") for line in rendered.splitlines()) == 1
    conf = render_nginx_conf(lb, tmp_path)
    directives = [line.strip().split()[0] for line in conf.splitlines() if line.strip() and line.strip()[0] != "#"]
    assert directives.count("location") == 5 and directives.count("listen") == 1
