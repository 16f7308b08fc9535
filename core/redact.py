"""Secrets out of every message: passwords in URLs/DSNs are replaced before a text is shown or logged.

Store URLs, Postgres DSNs and Redis URLs may carry a password (`postgresql://fleet:secret@db/fleet`,
`host=db password=secret`); libraries echo them in their errors (a URL that does not parse, a bad DSN option).
Whatever reaches a page, a log line or the CLI's output goes through `redact()` first.
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@host  (the password may contain anything but '@', '/' and whitespace)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@/\s]+)(?=@)")
# key=value DSN parts and query parameters: password=..., passwd=..., pwd=...
_KEY_PASSWORD = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|sslpassword)\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|[^\s&;]+)", re.IGNORECASE
)


def redact(text: object, secrets: tuple[str, ...] = ()) -> str:
    """`text` with URL passwords, `password=` values and any of `secrets` (when longer than 3 chars) masked."""
    result = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, str(text))
    result = _KEY_PASSWORD.sub(lambda m: m.group("head") + MASK, result)
    for secret in secrets:
        if secret and len(secret) > 3:
            result = result.replace(secret, MASK)
    return result


def url_password(url: str) -> str | None:
    """The password of a URL, to mask it also where a library prints it alone (unquoted, in a message)."""
    match = _URL_PASSWORD.search(url)
    return match.group("secret") if match else None
