"""The plain-text forms of the notebook layer's views: what a terminal shows.

No HTML and no pygments here, so that the command line (`gpuad demo`) prints the same link
diff as `%%gpukernel` in a terminal IPython without the notebook extra installed.
"""
from __future__ import annotations

from gpuad.notebook.irdiff import LINK_REF, LINKED, MARKER, Collapsed, DiffLine, IRDiff
from gpuad.notebook.names import short_symbol


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    widths = [max(len(str(row[k])) for row in [header, *rows]) for k in range(len(header))]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header), line("-" * w for w in widths), *(line(row) for row in rows)])


# The diff's marks, as a note at the end of the line (the HTML colours them).
_MARK_NOTE = {MARKER: "<- deferred-codegen marker", LINKED: "<- linked function",
              LINK_REF: "<- refers to a linked function"}


def text_diff(diff: IRDiff, context: int = 3, *, only_markers: bool = False) -> str:
    """A unified diff, old and new line numbers in front, as `git diff` views show it.

    `only_markers`: only the hunks around a deferred-codegen marker (what the linker put there),
    each run of left-out lines one `⋯` line.
    """
    lines = [f"{diff.deleted} lines removed, {diff.inserted} added; functions linked: "
             + (", ".join(short_symbol(n).text for n in diff.linked_functions) or "none")]
    previous = ""
    items = diff.unified(context)
    for item in _around_markers(items) if only_markers else items:
        if item is LEFT_OUT:
            lines.append("   ⋯")
            previous = ""
            continue
        if isinstance(item, Collapsed):
            lines.append(f"   ⋯ {item.count} unchanged lines ⋯")
            previous = ""
            continue
        sign = {"equal": " ", "delete": "-", "insert": "+"}[item.tag]
        old, new = ("" if n is None else n for n in (item.old, item.new))
        # A linked function is noted on its first line only, not on every line of its body.
        noted = item.mark and not (item.mark == LINKED and previous == LINKED)
        note = f"   {_MARK_NOTE[item.mark]}" if noted else ""
        lines.append(f"{sign}{old:>6}{new:>6}  {item.text}{note}")
        previous = item.mark
    return "\n".join(lines)


# Where `only_markers` left lines out, changed ones included.
LEFT_OUT = None


def _around_markers(items: list[DiffLine | Collapsed]) -> list[DiffLine | None]:
    """The hunks (runs between folds) that hold a marker line, LEFT_OUT between and around them."""
    hunks: list[list[DiffLine]] = [[]]
    for item in items:
        if isinstance(item, Collapsed):
            hunks.append([])
        else:
            hunks[-1].append(item)
    kept: list[DiffLine | None] = []
    for hunk in hunks:
        if any(line.mark == MARKER for line in hunk):
            kept += [LEFT_OUT, *hunk]
    return [*kept, LEFT_OUT] if kept else kept
