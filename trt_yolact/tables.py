"""Plain-text and markdown tables, and human-readable sizes, for reports."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str], first_column_left: bool = False) -> str:
    """Columns padded to their widest cell, numbers right-aligned; a dashed rule under the header."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if first_column_left and i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        )

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *(line(r) for r in cells[1:])])


def format_markdown_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """The same rows as a markdown table (results files)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in cells) + " |" for cells in rows])


def human_size(size: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
