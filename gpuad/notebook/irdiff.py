"""The link diff: how the module before linking became the module after.

A line diff (`difflib.SequenceMatcher` opcodes) of the two LLVM modules,
with the lines that matter to deferred codegen marked: the
`@"gpuad.deferred_codegen"` markers, the functions the linker appended,
and the lines that now reference them. Unchanged runs far from any change
or mark are collapsed. This is a model only; `render` turns it into HTML.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from itertools import zip_longest

from gpuad.compiler import llvm_text
from gpuad.notebook.outline import FunctionSpan, llvm_outline

MARKER_SYMBOL = f'@"{llvm_text.MARKER_SYMBOL}"'

# Marks, strongest first: a line carries at most one.
MARKER = "marker"  # calls or declares the deferred-codegen marker
LINKED = "linked"  # inside a function the linker added
LINK_REF = "link-ref"  # refers to a function the linker added


@dataclass(frozen=True)
class DiffLine:
    """One line of one side; numbers are 1-based line numbers of that side.

    `old` and `new` are the line's numbers in the module before and after
    linking: a deleted line has only `old`, an inserted one only `new`, an
    unchanged one both (what a unified view shows in its two number columns).
    """

    tag: str  # "equal", "delete" (only before) or "insert" (only after)
    number: int
    text: str
    mark: str = ""
    old: int | None = None
    new: int | None = None


@dataclass(frozen=True)
class Collapsed:
    """A run of unchanged lines left out of the view."""

    before_start: int  # 1-based line number of the first omitted line, before side
    after_start: int
    count: int


@dataclass(frozen=True)
class Row:
    """A side-by-side row: either side may be absent."""

    before: DiffLine | None
    after: DiffLine | None

    @property
    def interesting(self) -> bool:
        return any(s is not None and (s.tag != "equal" or s.mark) for s in (self.before, self.after))


@dataclass
class IRDiff:
    """The diff of two module texts with its marked lines."""

    before: list[str]
    after: list[str]
    opcodes: list[tuple[str, int, int, int, int]]
    linked_functions: tuple[str, ...]
    before_marks: dict[int, str]  # 0-based line index -> mark
    after_marks: dict[int, str]
    linked_spans: tuple[FunctionSpan, ...] = ()  # where the linked functions are, after side

    def linked_span(self, name: str) -> FunctionSpan | None:
        return next((s for s in self.linked_spans if s.name == name), None)

    @property
    def inserted(self) -> int:
        return sum(j2 - j1 for tag, _, _, j1, j2 in self.opcodes if tag in ("insert", "replace"))

    @property
    def deleted(self) -> int:
        return sum(i2 - i1 for tag, i1, i2, _, _ in self.opcodes if tag in ("delete", "replace"))

    def side_by_side(self, context: int = 3) -> list[Row | Collapsed]:
        """Rows pairing before and after lines; replaced blocks pair line by line."""
        rows: list[Row] = []
        for tag, i1, i2, j1, j2 in self.opcodes:
            if tag == "equal":
                rows += [Row(self._line("equal", i, before=True, other=j),
                             self._line("equal", j, before=False, other=i))
                         for i, j in zip(range(i1, i2), range(j1, j2), strict=True)]
            else:
                olds = [self._line("delete", i, before=True) for i in range(i1, i2)]
                news = [self._line("insert", j, before=False) for j in range(j1, j2)]
                rows += [Row(o, n) for o, n in zip_longest(olds, news)]
        return _collapse(rows, [r.interesting for r in rows], context, _row_start)

    def unified(self, context: int = 3) -> list[DiffLine | Collapsed]:
        """One column of lines: deleted lines, then the lines inserted in their place.

        Unchanged lines carry both their old and new numbers.
        """
        lines: list[DiffLine] = []
        for tag, i1, i2, j1, j2 in self.opcodes:
            if tag == "equal":
                lines += [self._line("equal", j, before=False, other=i)
                          for i, j in zip(range(i1, i2), range(j1, j2), strict=True)]
            else:
                lines += [self._line("delete", i, before=True) for i in range(i1, i2)]
                lines += [self._line("insert", j, before=False) for j in range(j1, j2)]
        flags = [ln.tag != "equal" or bool(ln.mark) for ln in lines]
        return _collapse(lines, flags, context, _unified_start)

    def _line(self, tag: str, index: int, *, before: bool, other: int | None = None) -> DiffLine:
        """The line at 0-based `index` of one side; `other`: its index on the other side."""
        text, marks = (self.before, self.before_marks) if before else (self.after, self.after_marks)
        mine, theirs = index + 1, None if other is None else other + 1
        old, new = (mine, theirs) if before else (theirs, mine)
        return DiffLine(tag, mine, text[index], marks.get(index, ""), old, new)


def diff_ir(before: str, after: str) -> IRDiff:
    """Diff the module as lowered against the module as linked."""
    old, new = before.splitlines(), after.splitlines()
    before_outline, after_outline = llvm_outline(before), llvm_outline(after)
    opcodes = _aligned_opcodes(old, new, before_outline, after_outline)
    before_names = set(before_outline.names)
    linked = tuple(n for n in after_outline.names if n not in before_names)
    return IRDiff(old, new, opcodes, linked, _mark_before(old), _mark_after(new, after_outline, linked),
                  tuple(after_outline.function(n) for n in linked))


def _aligned_opcodes(old: list[str], new: list[str], before_outline, after_outline) -> list[tuple]:
    """difflib opcodes tiling both modules, each function diffed against its namesake.

    One SequenceMatcher over whole modules took time quadratic in their length (20,000 lines: 9 s
    of 40 s): functions defined on both sides anchor the alignment, and only the lines between two
    anchors, or inside one, are matched against each other.
    """
    after_spans = {f.name: f for f in after_outline.functions}
    anchors, last = [], -1
    for f in before_outline.functions:
        g = after_spans.get(f.name)
        if g is not None and g.start > last:  # kept in order on both sides
            anchors.append((f, g))
            last = g.start
    opcodes, i, j = [], 0, 0
    for f, g in anchors:
        opcodes += _chunk_opcodes(old, new, (i, f.start), (j, g.start))
        opcodes += _chunk_opcodes(old, new, (f.start, f.end), (g.start, g.end))
        i, j = f.end, g.end
    opcodes += _chunk_opcodes(old, new, (i, len(old)), (j, len(new)))
    merged: list[tuple] = []
    for op in opcodes:  # neighbouring equal runs from two chunks read as one
        if merged and op[0] == merged[-1][0] == "equal":
            merged[-1] = ("equal", merged[-1][1], op[2], merged[-1][3], op[4])
        else:
            merged.append(op)
    return merged


def _chunk_opcodes(old: list[str], new: list[str], olds: tuple[int, int], news: tuple[int, int]) -> list:
    (i1, i2), (j1, j2) = olds, news
    if i1 == i2 and j1 == j2:
        return []
    # autojunk would treat frequent lines such as "}" as junk and misalign functions.
    matcher = SequenceMatcher(None, old[i1:i2], new[j1:j2], autojunk=False)
    return [(tag, a + i1, b + i1, c + j1, d + j1) for tag, a, b, c, d in matcher.get_opcodes()]


def _mark_before(lines: list[str]) -> dict[int, str]:
    return {i: MARKER for i, line in enumerate(lines) if MARKER_SYMBOL in line}


def _mark_after(lines: list[str], outline, linked: tuple[str, ...]) -> dict[int, str]:
    marks: dict[int, str] = {}
    spans = [outline.function(name) for name in linked]
    for span in spans:
        marks.update({i: LINKED for i in range(span.start, span.end)})
    if linked:
        reference = re.compile("|".join(re.escape(f'@"{n}"') + "|" + re.escape(f"@{n}(") for n in linked))
        for i, line in enumerate(lines):
            if i not in marks and reference.search(line):
                marks[i] = LINK_REF
    for i, line in enumerate(lines):
        if MARKER_SYMBOL in line:  # a marker left after linking is a linker bug: show it loudly
            marks[i] = MARKER
    return marks


def _row_start(row: Row) -> tuple[int, int]:
    return (row.before.number if row.before else 0, row.after.number if row.after else 0)


def _unified_start(line: DiffLine) -> tuple[int, int]:
    # Only unchanged lines are folded, and they carry both numbers.
    return (line.old or line.number, line.new or line.number)


def _collapse(items: list, interesting: list[bool], context: int, start_of) -> list:
    """Keep items within `context` of an interesting one; fold the other runs."""
    keep = [False] * len(items)
    for i, flag in enumerate(interesting):
        if flag:
            for k in range(max(0, i - context), min(len(items), i + context + 1)):
                keep[k] = True
    out, i = [], 0
    while i < len(items):
        if keep[i]:
            out.append(items[i])
            i += 1
            continue
        j = i
        while j < len(items) and not keep[j]:
            j += 1
        if j - i == 1:  # folding one line saves nothing
            out.append(items[i])
        else:
            before_start, after_start = start_of(items[i])
            out.append(Collapsed(before_start, after_start, j - i))
        i = j
    return out
