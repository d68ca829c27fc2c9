"""How the project writes scales and tables as text, in one place for the pipeline and ``hms report``.

No torch and no other library module: ``hms report`` imports it where torch is not installed.
"""
from __future__ import annotations

from typing import Iterable, Sequence


def scale_name(s: float) -> str:
    """``1`` -> ``1.0``, ``0.25`` -> ``0.25``: a scale in row, file and stage names."""
    return f"{float(s):.1f}" if float(s) * 10 == int(float(s) * 10) else f"{float(s):g}"


def chain_name(scales: Sequence[float]) -> str:
    """``[1.0, 0.5]`` -> ``"0.5-1.0"``: the scales of a row, ascending."""
    return "-".join(scale_name(s) for s in sorted(float(s) for s in scales))


def table_lines(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table: the line of ``head``, its rule, a line per row of cells."""
    line = lambda cells: "| " + " | ".join(cells) + " |"
    return [line(head), "|" + "---|" * len(head), *map(line, rows)]
