"""Outside strings (queue names, error texts, versions, user names...) shown inside Markdown, made inert.

Streamlit renders most text elements (markdown, caption, info/warning/error, expander and metric labels) as
Markdown plus its own directives (`:red[...]`, `:material/icon:`, emoji shortcodes) and LaTeX (`$...$`). A queue
name like `![x](https://203.0.113.9/p.png)` would make every viewer's browser fetch that URL; a version could
fake a badge or a link. Every such string goes through `md()` (or `md_code()` inside backticks) before it is
interpolated. Plain module (no streamlit import) so it is tested directly.
"""

from __future__ import annotations

import re

# every ASCII punctuation character Markdown, GFM, Streamlit directives or KaTeX give a meaning to; CommonMark
# renders a backslash-escaped ASCII punctuation character as that character, so the text reads the same
_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~$:=&\"'^@%])")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")
MAX_SHOWN = 2000  # an outside string is bounded where it is shown too
MAX_INLINE = 300  # inside a heading or a one-line message (the Queues page)


def md(value: object, limit: int = MAX_SHOWN) -> str:
    """`value` as Markdown text that renders literally: no link, image, emphasis, directive, HTML or heading;
    line breaks flattened, other control characters shown as a space, the length bounded by `limit`."""
    text = _LINE_BREAKS.sub(" ", str(value))[: limit + 1]
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    if len(text) > limit:
        text = text[:limit] + "…"
    return _SPECIAL.sub(r"\\\1", text)


def md_code(value: object, limit: int = MAX_SHOWN) -> str:
    """`value` for use inside a single-backtick code span (where nothing is interpreted but a backtick ends it)."""
    text = _LINE_BREAKS.sub(" ", str(value)).replace("`", "'")
    return text[:limit] + ("…" if len(text) > limit else "")
