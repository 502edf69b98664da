"""Markdown for the report's tables: a DataFrame of cell texts in, GitHub pipe-table lines out.

Every report table (``summary.md``, ``study.md``, ``gain_curve.md``) is first a :class:`pandas.DataFrame`
whose columns are the table's header and whose cells are already formatted text; :func:`markdown_table`
only lays it out. The layout is unpadded (``| a | b |`` and ``|---|---|``) so that a row copied into
README.md or docs/results.md stays one short line and a regenerated table diffs by row.
"""

from __future__ import annotations

import pandas as pd


def md_cell(text: str) -> str:
    """``text`` safe inside one table cell: pipes escaped, newlines folded to spaces."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> list[str]:
    """The lines of a pipe table: header (the column names), separator, one line per row; cells pass
    through :func:`md_cell`.

    >>> print("\\n".join(markdown_table(pd.DataFrame({"cell": ["a|b"], "Δ": ["+1.00"]}))))
    | cell | Δ |
    |---|---|
    | a\\|b | +1.00 |
    """
    header = [str(column) for column in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(md_cell(str(text)) for text in row) + " |" for row in frame.itertuples(index=False)]
    return lines


__all__ = ["markdown_table", "md_cell"]
