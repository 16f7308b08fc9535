"""Checks for config values that end up inside rendered files (nginx.conf, the upstream include) or URLs.

A value such as `services[].host` or `load_balancer.listen` is pasted into nginx's configuration, where a
newline, `;`, `{` or `}` would start a directive of its own (an extra `server` line, a whole `location` block).
So these values are not escaped but validated: only the characters their grammar allows get through.
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_LISTEN = re.compile(r"^(?:(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):)?(?P<port>[0-9]{1,5})$")
# a path rendered unquoted into nginx.conf: no whitespace, quotes, `;`, braces, `$` (nginx variables) or `#`
_NGINX_UNSAFE = re.compile(r"[\s;{}'\"$#\\]|[\x00-\x1f\x7f]")
_URL_PATH = re.compile(r"^/[A-Za-z0-9._~!&'()*+,;=:@%/?-]*$")


def check_host(value: str) -> str:
    """A hostname, an IPv4 address or a bracketed IPv6 address: nothing else can appear in `server host:port`."""
    if len(value) > 253:
        raise ValueError("host is longer than 253 characters")
    if value.startswith("[") and value.endswith("]"):
        try:
            ipaddress.IPv6Address(value[1:-1])
        except ValueError:
            raise ValueError(f"{value!r} is not a bracketed IPv6 address") from None
        return value
    if not _HOSTNAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a hostname or IP address (letters, digits, '-' and '.' only;"
                         " IPv6 in brackets)")
    return value


def check_listen(value: str) -> str:
    """`[host:]port` as nginx's listen takes it, host being a hostname, IPv4, `*` or `[IPv6]`."""
    match = _LISTEN.fullmatch(value)
    if not match:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8080)")
    port = int(match.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    host = match.group("host")
    if host is not None and host != "*":
        check_host(host)
    return value


def check_nginx_safe_path(value: str) -> str:
    """A file system path that is written unquoted into nginx.conf (the state directory, the include path)."""
    bad = _NGINX_UNSAFE.search(value)
    if bad:
        raise ValueError(f"{value!r} contains {bad.group()!r}: whitespace, quotes, ';', '{{', '}}', '$', '#',"
                         " backslashes and control characters are not allowed in this path")
    return value


def check_url_path(value: str) -> str:
    """An HTTP path (health endpoints): starts with '/', URL characters only."""
    if not _URL_PATH.fullmatch(value) or len(value) > 512:
        raise ValueError(f"{value!r} is not a URL path (must start with '/', no spaces or control characters)")
    return value


def check_http_url(value: str) -> str:
    """An http(s) URL without whitespace or control characters."""
    if not re.fullmatch(r"https?://[^\s\x00-\x1f\x7f]+", value) or len(value) > 2048:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value
