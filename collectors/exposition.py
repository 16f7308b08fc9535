"""A bounded, selective reader of the Prometheus text exposition format (and OpenMetrics text).

The instance collector keeps a handful of series from a `/metrics` page (resident memory, CPU seconds, event-loop
lag, request counts). A general parser (``prometheus_client``'s walks every label string character by character)
spent ~1.5 ms per prom-client page on families we then threw away. This module looks up only the wanted sample
names: it searches the page for ``"\\n<name>"`` (a C-speed ``str.find``), checks that the match is a whole sample
name at the start of a line, and tokenises the labels of those lines only. Every other line — comments, ``# HELP``
text, other families, their label strings — is never tokenised.

Why searching is safe: in both formats a sample, ``# HELP`` and ``# TYPE`` line never contains a raw newline (label
values and help texts escape it as ``\\n``), so a line that starts with a wanted name is a sample of that name.

Format rules followed (docs/architecture.md, "Reading /metrics"):
- label values unescape ``\\\\``, ``\\"`` and ``\\n``; a ``}`` or ``,`` inside quotes is part of the value;
- the value is the first token after the name/labels: ``NaN``, ``+Inf``, ``-Inf``, prom-client's ``Nan`` and
  exponents parse; an optional timestamp after it is ignored, and so is an OpenMetrics exemplar (`` # {...} v``);
- OpenMetrics ``# EOF`` ends the page: nothing after it is read;
- a missing trailing newline is fine; ``\\r`` before a newline is tolerated.

Bounds (a hostile page must cost little and fail with a reason): the page size, the number of kept samples, the
labels per line and the bytes of a label block are capped, and a deadline is checked while kept lines are
tokenised. Breaking a bound raises :class:`ExpositionError` (a ``ValueError``) naming the bound.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import NamedTuple

MAX_PAGE_CHARS = 1 << 20  # a prom-client page is 5-50 KiB; 1 MiB leaves room for big label sets
MAX_KEPT_SAMPLES = 4096  # per page, over every wanted name (a request histogram rarely has 100 label sets)
MAX_LABELS_PER_LINE = 64
MAX_LABEL_BLOCK_CHARS = 16_384
_DEADLINE_CHECK_EVERY = 128  # kept lines between two clock reads

_ESCAPE = re.compile(r"\\(.)")
# The common label block, with no backslash in any value: matched whole by one regex (C speed). Anything else —
# escapes, quoted label names, odd spacing — goes through the careful scanner below.
_SIMPLE_BLOCK = re.compile(r'\{((?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*",?)*)\}')
_SIMPLE_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\]*)"')
_UNESCAPED = {"\\": "\\", '"': '"', "n": "\n"}
_NAME_END = frozenset("{ \t")


class ExpositionError(ValueError):
    """The page breaks the format or one of the bounds; the text says which."""


class ExpositionSample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


def _unescape(text: str) -> str:
    # unknown escapes keep the backslash, as the Go and Python reference parsers do
    return _ESCAPE.sub(lambda m: _UNESCAPED.get(m.group(1), m.group(0)), text)


def _parse_value(token: str, line_no_hint: int) -> float:
    if "_" in token:  # float() accepts "1_000"; the format does not
        raise ExpositionError(f"bad sample value {token[:40]!r} at offset {line_no_hint}")
    try:
        return float(token)
    except ValueError:
        raise ExpositionError(f"bad sample value {token[:40]!r} at offset {line_no_hint}") from None


def _parse_labels(text: str, start: int, stop: int) -> tuple[dict[str, str], int]:
    """Labels from just after ``{`` to the closing ``}``; returns them and the index after ``}``."""
    labels: dict[str, str] = {}
    at = start
    while True:
        while at < stop and text[at] in " \t,":
            at += 1
        if at >= stop:
            raise ExpositionError(f"unterminated label set at offset {start}")
        if text[at] == "}":
            return labels, at + 1
        equals = text.find("=", at, stop)
        if equals < 0:
            raise ExpositionError(f"label without '=' at offset {at}")
        name = text[at:equals].strip()
        quote = equals + 1
        while quote < stop and text[quote] in " \t":  # tolerated between '=' and the opening quote
            quote += 1
        if quote >= stop or text[quote] != '"':
            raise ExpositionError(f"label {name[:40]!r} value is not quoted at offset {equals}")
        end = quote + 1
        while True:
            end = text.find('"', end, stop)
            if end < 0:
                raise ExpositionError(f"unterminated label value at offset {quote}")
            backslashes = 0
            while text[end - 1 - backslashes] == "\\":
                backslashes += 1
            if backslashes % 2 == 0:
                break
            end += 1
        value = text[quote + 1 : end]
        if "\\" in value:
            value = _unescape(value)
        if name.startswith('"') and name.endswith('"') and len(name) >= 2:  # quoted (UTF-8) label names
            name = _unescape(name[1:-1])
        labels[name] = value
        if len(labels) > MAX_LABELS_PER_LINE:
            raise ExpositionError(f"more than {MAX_LABELS_PER_LINE} labels on one line at offset {start}")
        at = end + 1


def scan(
    text: str,
    names: Iterable[str],
    *,
    deadline: float | None = None,
    max_chars: int = MAX_PAGE_CHARS,
    max_samples: int = MAX_KEPT_SAMPLES,
) -> list[ExpositionSample]:
    """The samples whose name is one of ``names``, in page order per name.

    ``deadline`` is a ``time.monotonic()`` value; past it the scan stops with :class:`TimeoutError`.
    """
    if len(text) > max_chars:
        raise ExpositionError(f"page over {max_chars} characters")
    limit = len(text)
    eof = text.find("\n# EOF")
    if eof >= 0:
        limit = eof + 1
    elif text.startswith("# EOF"):
        return []
    out: list[ExpositionSample] = []
    for name in dict.fromkeys(names):
        needle = "\n" + name
        width = len(name)
        # a page may start with the sample itself (no HELP/TYPE before it): a virtual newline at -1
        position = -1 if text.startswith(name) else text.find(needle, 0, limit)
        if position == -1 and not text.startswith(name):
            continue
        while position < limit:
            start = position + 1
            after = start + width
            if after == limit or (after < limit and text[after] in _NAME_END):
                line_end = text.find("\n", after, limit)
                if line_end < 0:
                    line_end = limit
                out.append(_sample(text, name, after, line_end))
                if len(out) > max_samples:
                    raise ExpositionError(f"more than {max_samples} kept samples")
                if deadline is not None and len(out) % _DEADLINE_CHECK_EVERY == 0 and time.monotonic() > deadline:
                    raise TimeoutError("deadline passed while reading /metrics")
            position = text.find(needle, after, limit)
            if position < 0:
                break
    return out


def _sample(text: str, name: str, at: int, line_end: int) -> ExpositionSample:
    labels: dict[str, str] = {}
    if at < line_end and text[at] == "{":
        if line_end - at > MAX_LABEL_BLOCK_CHARS:
            raise ExpositionError(f"sample line of {name[:60]!r} over {MAX_LABEL_BLOCK_CHARS} characters")
        simple = _SIMPLE_BLOCK.match(text, at, line_end)
        if simple is not None:
            labels = dict(_SIMPLE_PAIR.findall(simple.group(1)))
            if len(labels) > MAX_LABELS_PER_LINE:
                raise ExpositionError(f"more than {MAX_LABELS_PER_LINE} labels on one line at offset {at}")
            at = simple.end()
        else:
            labels, at = _parse_labels(text, at + 1, line_end)
    rest = text[at:line_end]
    hash_at = rest.find("#")
    if hash_at >= 0:  # an OpenMetrics exemplar (or a trailing comment) follows the value
        rest = rest[:hash_at]
    tokens = rest.split()
    if not tokens:
        raise ExpositionError(f"sample {name[:60]!r} without a value at offset {at}")
    return ExpositionSample(name, labels, _parse_value(tokens[0], at))


__all__ = ["MAX_KEPT_SAMPLES", "MAX_PAGE_CHARS", "ExpositionError", "ExpositionSample", "scan"]
