"""Static HTML for each stage of a compilation record.

Every function here returns an HTML fragment that reads the same in
JupyterLab, Notebook 7, nbconvert's HTML and a plain browser, without a
kernel:

- Layout is in inline styles on our own scoped classes (`gpuad-…`), which
  front ends' CSS cannot override: explicit widths, `white-space: pre`,
  left alignment. Code and diffs are blocks of lines, not tables, so
  Jupyter's table rules (`table-layout: fixed`, right-aligned cells) never
  apply to them.
- Colours are JupyterLab's theme variables with light fallbacks
  (`palette`, the one module that names colours), so the view follows light and dark
  themes; diff and mark colours are translucent tints that read on either.
  A sanitizer that drops `var(…)` colours (untrusted notebooks) drops
  background and text colour together, leaving the theme's own.
- Highlighted code uses the short elements and the one stylesheet of
  `highlight` (a default compilation was 1.4 MB with a style per token).
- Mangled numba symbols are shown by their Python names, the symbol in an
  `<abbr title=…>` hover.

The widget (`views`) shows the same fragments in tabs.
"""
from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass

from gpuad.notebook import palette
from gpuad.notebook.highlight import (
    CODE_BACKGROUND,
    CODE_FONT,
    CODE_FOREGROUND,
    MUTED,
    STYLE_SHEET,
    code_block,
    highlight,
    highlight_lines,
)
from gpuad.notebook.irdiff import (
    LINK_REF,
    LINKED,
    MARKER,
    Collapsed,
    DiffLine,
    IRDiff,
    Row,
)
from gpuad.notebook.names import MANGLED, Short, readable_labels, readable_symbol, short_location
from gpuad.notebook.outline import outline
from gpuad.notebook.palette import BACKGROUND as PANEL_BACKGROUND
from gpuad.notebook.palette import FOREGROUND as PANEL_FOREGROUND
from gpuad.notebook.palette import HEADER_BACKGROUND, LINK, RULE
from gpuad.record import CompilationRecord, plural

__all__ = ["MUTED", "code_block", "highlight"]  # re-exported for views

TABLE_FONT = "font-family: var(--jp-ui-font-family, sans-serif); font-size: 12px"

# Translucent tints over the theme's background: readable in light and dark themes.
# Written compactly: they repeat on every changed line.
DIFF_BACKGROUND = {"equal": "", "delete": f"background-color:{palette.DELETED_LINE}",
                   "insert": f"background-color:{palette.INSERTED_LINE}"}
DIFF_SIGN = {"equal": " ", "delete": "-", "insert": "+"}
# An inset shadow, not a border, marks the line: it does not shift the code right.
MARK_STYLE = {
    MARKER: f"background-color:{palette.MARKER_TINT};box-shadow:inset 4px 0 {palette.MARKER_BAR};"
            "font-weight:bold",
    LINKED: f"background-color:{palette.LINKED_TINT};box-shadow:inset 4px 0 {palette.LINKED_BAR}",
    LINK_REF: f"background-color:{palette.LINK_REF_TINT};box-shadow:inset 4px 0 {palette.LINK_REF_BAR};"
              "font-weight:bold",
}
MARK_TITLE = {
    MARKER: "deferred-codegen marker: replaced by the job's function at link time",
    LINKED: "function added by the deferred-codegen linker",
    LINK_REF: "refers to a function added by the linker",
}
COLLAPSED_STYLE = f"background-color: {palette.COLLAPSED_LINES}; color: {MUTED}; font-style: italic"

# Line numbers of the diff: muted, and left out when code is selected and copied. Sections' look is
# here once, not on each section; what keeps a long title inside the panel stays inline (`section`).
VIEW_STYLE = STYLE_SHEET.replace(
    "</style>", f".gpuad-view g-ln{{color: {MUTED}; user-select: none}}"
                ".gpuad-view details{margin: 4px 0}"
                ".gpuad-view summary{cursor: pointer; font-weight: bold; padding: 2px 0}"
                ".gpuad-view details>div{margin: 4px 0 4px 12px}</style>")

# Modules longer than this start with their functions folded.
OPEN_MODULE_LINES = 300
# The static HTML shows at most this many lines of a module (and rows of a diff), then says how many
# it left out: a module of 20,000 lines would be megabytes of HTML in the saved notebook. The
# extension's viewer, which draws from the JSON, shows everything.
STATIC_LINES = 1000
LEFT_OUT_HINT = "open the notebook in JupyterLab with the gpuad extension to read them"
# Each function or diff is a box of at most this height with its own scrollbars.
MODULE_HEIGHT = "30em"
DIFF_HEIGHT = "40em"


def panel(body: str) -> str:
    """The outer box: the theme's background and text colour, never wider than the output."""
    return (
        f'<div class="gpuad-view" style="background-color: {PANEL_BACKGROUND}; color: {PANEL_FOREGROUND}; '
        f"border: 1px solid {RULE}; border-radius: 4px; padding: 8px; {TABLE_FONT}; text-align: left; "
        f'max-width: 100%; box-sizing: border-box; overflow: hidden">{VIEW_STYLE}{body}</div>'
    )


def section(title: str, body: str, *, opened: bool = False, css_class: str = "", hover: str = "") -> str:
    """A foldable `<details>` section; a long title ends in an ellipsis (`hover` shows in full)."""
    attrs = f' class="{css_class}"' if css_class else ""
    tooltip = f' title="{html.escape(hover)}"' if hover else ""
    return (
        f"<details{attrs}{' open' if opened else ''}>"
        f'<summary{tooltip} style="white-space: nowrap; overflow: hidden; text-overflow: ellipsis">'
        f"{html.escape(title)}</summary><div>{body}</div></details>"
    )


def note(text: str) -> str:
    return f'<p style="color: {MUTED}; font-style: italic; margin: 4px 0">{html.escape(text)}</p>'


@dataclass(frozen=True)
class Styled:
    """A table cell's text with a style of its own (a verdict's colour)."""

    text: str
    style: str


def table(header: list[str], rows: list[list[str | Short | Styled]], *,
          code_columns: frozenset[int] = frozenset()) -> str:
    """A plain table; cells are escaped, `code_columns` set in monospace and never wrapped.

    A `Short` cell shows its short text with the full text as a tooltip; a `Styled` cell adds its style.
    """
    cell = f"border: 1px solid {RULE}; padding: 3px 6px; text-align: left; vertical-align: top"
    head = "".join(
        f'<th style="{cell}; background-color: {HEADER_BACKGROUND}; color: {PANEL_FOREGROUND}">'
        f"{html.escape(h)}</th>" for h in header)

    def td(k: int, value: str | Short | Styled) -> str:
        font = "; font-family: monospace; white-space: nowrap" if k in code_columns else ""
        if isinstance(value, Styled):
            return f'<td style="{cell}{font}; {value.style}">{html.escape(value.text)}</td>'
        if isinstance(value, Short):
            title = f' title="{html.escape(value.full)}"' if value.shortened else ""
            return f'<td style="{cell}{font}"{title}>{html.escape(value.text)}</td>'
        return f'<td style="{cell}{font}">{html.escape(value)}</td>'

    body = "".join("<tr>" + "".join(td(k, v) for k, v in enumerate(row)) + "</tr>" for row in rows)
    # Unwrapped code columns may make the table wider than the output: scroll it, not the page.
    # table-layout: auto and width: auto undo front ends' fixed layouts.
    return (
        f'<div style="overflow-x: auto"><table class="gpuad-table" style="border-collapse: collapse; '
        f"table-layout: auto; width: auto; color: {PANEL_FOREGROUND}; background-color: {PANEL_BACKGROUND}; "
        f'{TABLE_FONT}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )


def readable_code(line_html: str, titled: set[str] | None = None) -> str:
    """Highlighted code with each mangled symbol shown by its Python name, the symbol on hover.

    With `titled` (the symbols of a block given their hover so far), a symbol has its hover on its
    first line only: a PTX parameter's 200-character symbol on each of its loads was a tenth of a
    compilation's HTML.
    """
    def one(match) -> str:
        symbol = match.group(0)
        name = readable_symbol(symbol)
        text = html.escape(name.text, quote=False)
        if titled is not None:
            base = PTX_PARAMETER.sub("", symbol)
            if base in titled:
                return text
            titled.add(base)
        return f'<abbr title="{name.full}">{text}</abbr>'

    return MANGLED.sub(one, line_html)


# A PTX parameter's symbol is its function's and `_param_N`: a block hovers the function's once.
PTX_PARAMETER = re.compile(r"_param_\d+$")


def readable_block(lines: list[str]) -> list[str]:
    """`readable_code` over the lines of one block, each symbol hovered once."""
    titled: set[str] = set()
    return [readable_code(line, titled) for line in lines]


def readable_highlight(text: str, language: str, *, max_height: str = MODULE_HEIGHT) -> str:
    """`highlight`, mangled symbols shown by their Python names (IR and PTX)."""
    if not text:
        return highlight(text, language, max_height=max_height)
    return code_block("\n".join(readable_block(highlight_lines(text, language))), max_height=max_height)


# ipywidgets gives every tab 144 px and cuts longer labels ("Derivative sour"): size tabs to their labels.
WIDGET_STYLE = ("<style>.gpuad-widget .lm-TabBar-tab, .gpuad-widget .p-TabBar-tab "
                "{flex: 0 0 auto !important; max-width: none !important}</style>")


def render_source(record: CompilationRecord) -> str:
    """The kernel, then each function it differentiates (open: they are what the derivatives come from)."""
    kernel = highlight(record.source, "python", max_height="none")
    seen, parts = set(), []
    for job in record.jobs:
        source = getattr(job, "source", "")
        if source and source not in seen:
            seen.add(source)
            parts.append(section(f"differentiated: {job.function} (job {job.id})",
                                 highlight(source, "python", max_height="none"), opened=True,
                                 css_class="gpuad-differentiated"))
    if not parts:
        return kernel
    return section(f"kernel {record.kernel_name}", kernel, opened=True) + "".join(parts)


def render_overlays(record: CompilationRecord) -> str:
    if not record.overlays:
        return note("No call was overlaid: every call resolved to its original function.")
    rows = [[short_location(o.call_site), o.original, o.replacement, o.function] for o in record.overlays]
    header = ["call site", "original", "replacement", "function"]
    return table(header, rows, code_columns=frozenset({0, 1, 2}))


def render_jobs(record: CompilationRecord) -> str:
    if not record.jobs:
        return note("No deferred jobs: the kernel makes no autodiff call.")
    rows = [
        [str(j.id), j.function, j.mode, ", ".join(j.activities), ", ".join(j.argument_types),
         readable_symbol(j.symbol)]
        for j in record.jobs
    ]
    header = ["id", "function", "mode", "activities", "types", "symbol"]
    return table(header, rows, code_columns=frozenset({5}))


def render_derivatives(record: CompilationRecord) -> str:
    """Each job's generated source in full: no inner scroll box hides the reverse sweep."""
    if not record.adjoint_sources:
        return note("No derivative source was generated.")
    jobs = {j.id: j for j in record.jobs}
    parts = []
    for job_id, source in sorted(record.adjoint_sources.items()):
        job = jobs.get(job_id)
        title = f"job {job_id}" + (f": {job.mode} of {job.function}" if job else "")
        parts.append(section(title, highlight(source, "python", max_height="none"), opened=True))
    return "".join(parts)


def render_module(text: str, language: str, *, limit: int = STATIC_LINES) -> str:
    """A module folded by function: one `<details>` per definition, each a bounded scroll box.

    Past `limit` lines the rest is not drawn: a note says how many lines and functions it left out.
    """
    if not text:
        return note("Not produced by this compilation.")
    source = text.splitlines()
    shape = outline(text, language)
    # Only what is drawn is highlighted: the time, too, stays bounded on a 20,000-line module.
    lines = highlight_lines("\n".join(source[:limit]), language)
    small = shape.line_count <= OPEN_MODULE_LINES
    labels = dict(zip(shape.names, readable_labels(shape.names), strict=True))
    parts = []
    for fn, start, end in shape.segments():
        if start >= limit:
            parts.append(_left_out(shape, start, len(source)))
            break
        shown = min(end, limit)
        block = code_block("\n".join(readable_block(lines[start:shown])), max_height=MODULE_HEIGHT)
        if shown < end:
            block += note(f"{plural(end - shown, 'more line')} of this section not shown; {LEFT_OUT_HINT}.")
        if fn is None:
            if any(line.strip() for line in source[start:end]):
                parts.append(section(f"lines {start + 1}–{end}: module-level", block, opened=small))
            continue
        parts.append(section(f"{labels[fn.name]}  ({fn.length} lines, from line {fn.start + 1})", block,
                             opened=small, css_class="gpuad-function", hover=fn.name))
    return "".join(parts)


def _left_out(shape, start: int, total: int) -> str:
    """The note in place of a module's sections from line `start` on."""
    functions = sum(1 for fn in shape.functions if fn.start >= start)
    return note(f"{plural(total - start, 'more line')} (lines {start + 1}–{total}, "
                f"{plural(functions, 'more function')}) not shown here; {LEFT_OUT_HINT}.")


def render_diff(diff: IRDiff, layout: str = "unified", context: int = 3, *, limit: int = STATIC_LINES) -> str:
    """The link diff as blocks of lines, marker and linked lines highlighted.

    Unified: old and new line numbers in front of each line, like `git diff`
    views. Side by side: two halves of the output's width that scroll
    vertically together (one scroll box) and horizontally each on its own.
    The summary above links to the first line of each linked function. Past `limit` rows the rest
    is not drawn: a note says how many rows it left out.
    """
    if layout not in ("unified", "side-by-side"):
        raise ValueError(f"diff layout must be 'unified' or 'side-by-side', not {layout!r}")
    items = diff.unified(context) if layout == "unified" else diff.side_by_side(context)
    shown = items[:limit]
    before_html, after_html = _highlighted_sides(diff, shown)
    anchors = {span.start + 1: linked_anchor(diff, span.name) for span in diff.linked_spans}
    width = len(str(max(len(diff.before), len(diff.after), 1)))
    box = (f"overflow: auto; max-height: {DIFF_HEIGHT}; background-color: {CODE_BACKGROUND}; "
           f"color: {CODE_FOREGROUND}; border: 1px solid {RULE}")
    if layout == "unified":
        lines, previous = [], ""
        for item in shown:
            if isinstance(item, Collapsed):
                lines.append(_collapsed_line(item, "both"))
                previous = ""
                continue
            highlighted = before_html if item.tag == "delete" else after_html
            lines.append(_diff_line(item, highlighted, [item.old, item.new], width, _row_id(item, anchors),
                                    titled=item.mark != previous))
            previous = item.mark
        body = f'<div class="gpuad-diff gpuad-diff-unified" style="{box}">{_lines_block(lines)}</div>'
    else:
        halves = [_side(shown, side, html_lines, anchors, width)
                  for side, html_lines in (("old", before_html), ("new", after_html))]
        body = (f'<div class="gpuad-diff gpuad-diff-side-by-side" style="{box}; overflow-x: hidden">'
                '<div style="display: flex; width: 100%; align-items: flex-start">'
                f'{"".join(halves)}</div></div>')
    if len(items) > limit:
        body += note(f"{plural(len(items) - limit, 'more row')} of the diff not shown; {LEFT_OUT_HINT}.")
    return _diff_legend(diff) + body


def _highlighted_sides(diff: IRDiff, shown: list) -> tuple[dict[int, str], dict[int, str]]:
    """The highlighted HTML of the lines `shown` draws, by side (before, after) and 1-based number.

    Only they are highlighted (lexing both modules was most of a large diff's time), together and in
    order, so the lexer sees them as it would in the module.
    """
    wanted: tuple[set[int], set[int]] = (set(), set())
    for item in shown:
        if isinstance(item, DiffLine):  # unified: a deleted line is the old module's, others the new's
            wanted[0 if item.tag == "delete" else 1].add(item.number)
        elif isinstance(item, Row):
            for side, line in enumerate((item.before, item.after)):
                if line is not None:
                    wanted[side].add(line.number)
    sides = []
    for numbers, text in zip(wanted, (diff.before, diff.after), strict=True):
        numbers = sorted(numbers)
        # The final newline keeps a last empty line a line of its own.
        highlighted = highlight_lines("".join(text[n - 1] + "\n" for n in numbers), "llvm")
        sides.append(dict(zip(numbers, map(readable_code, highlighted), strict=True)))
    return sides[0], sides[1]


@dataclass(frozen=True)
class _Line:
    """One line of a diff side: its classes, inline style, tooltip, id and content."""

    css: str
    content: str
    style: str = ""
    title: str = ""
    ident: str = ""

    def joins(self, previous: _Line) -> bool:
        """Whether this line can share `previous`'s element (same look, nothing of its own)."""
        return (self.css, self.style) == (previous.css, previous.style) and not (self.title or self.ident)


def _lines_block(lines: list[_Line]) -> str:
    """The lines, each run of alike lines one element (one `<div>` a line made diffs 5x their text).

    As wide as the longest line (so tints reach its end when scrolled), at least the box's width.
    """
    runs: list[list[_Line]] = []
    for line in lines:
        if runs and line.joins(runs[-1][0]):
            runs[-1].append(line)
        else:
            runs.append([line])
    parts = []
    for run in runs:
        first = run[0]
        attrs = (f'{first.ident} class="{first.css}"' + (f' style="{first.style}"' if first.style else "")
                 + (f' title="{html.escape(first.title)}"' if first.title else ""))
        parts.append(f"<div{attrs}>" + "\n".join(line.content for line in run) + "</div>")
    return (f'<div class="gpuad-diff-lines" style="display: inline-block; min-width: 100%; '
            f"vertical-align: top; white-space: pre; text-align: left; {CODE_FONT}; padding: 2px 0\">"
            f"{''.join(parts)}</div>")


def _side(rows: list, side: str, html_lines: dict[int, str], anchors: dict[int, str], width: int) -> str:
    lines, previous = [], ""
    for row in rows:
        line = None if isinstance(row, Collapsed) else row.before if side == "old" else row.after
        if isinstance(row, Collapsed):
            lines.append(_collapsed_line(row, side))
        elif line is None:
            lines.append(_Line("gpuad-diff-absent", " "))  # keeps the two sides' rows aligned
        else:
            ident = _row_id(row.after, anchors) if side == "new" else ""
            lines.append(_diff_line(line, html_lines, [line.number], width, ident,
                                    titled=line.mark != previous))
        previous = line.mark if line is not None else ""
    rule = f"; border-right: 1px solid {RULE}" if side == "old" else ""
    return (f'<div class="gpuad-diff-{side}-side" style="flex: 1 1 0; width: 50%; min-width: 0; '
            f'overflow-x: auto{rule}">{_lines_block(lines)}</div>')


def linked_anchor(diff: IRDiff, name: str) -> str:
    """The id of the line that starts linked function `name` (stable for the same module)."""
    digest = hashlib.sha1(name.encode(), usedforsecurity=False)
    digest.update("\n".join(diff.after).encode())
    return f"gpuad-linked-{digest.hexdigest()[:12]}"


def _diff_legend(diff: IRDiff) -> str:
    labels = ((MARKER, "marker"), (LINKED, "linked function"), (LINK_REF, "reference to linked function"))
    swatch = "".join(
        f'<span style="{MARK_STYLE[m]}; padding: 0 6px 0 10px; margin-right: 8px">{label}</span>'
        for m, label in labels
    )
    return (
        f'<p class="gpuad-diff-summary" style="margin: 4px 0">{plural(diff.deleted, "line")} removed, '
        f"{diff.inserted} added; functions linked: {_linked_links(diff)}</p>"
        f'<p style="margin: 4px 0">{swatch}</p>'
    )


def _linked_links(diff: IRDiff) -> str:
    """Each linked function's Python name, linking to its definition in the diff below."""
    if not diff.linked_functions:
        return "none"
    links = []
    labels = readable_labels(list(diff.linked_functions))
    for name, label in zip(diff.linked_functions, labels, strict=True):
        span = diff.linked_span(name)
        where = f"new lines {span.start + 1}–{span.end}" if span else ""
        title = html.escape(f"{name}\njump to its definition ({where})" if where else name)
        links.append(
            f'<a class="gpuad-linked-link" href="#{linked_anchor(diff, name)}" title="{title}" '
            f'style="color: {LINK}; text-decoration: none; white-space: nowrap">'
            f'↓ <span style="font-family: monospace">{html.escape(label)}</span></a>'
            + (f' <span style="color: {MUTED}">({where})</span>' if where else "")
        )
    return ", ".join(links)


def _numbers(numbers: list[int | None], width: int) -> str:
    text = " ".join("".rjust(width) if n is None else str(n).rjust(width) for n in numbers)
    return f"<g-ln>{text} </g-ln>"


def _diff_line(line: DiffLine, highlighted: dict[int, str], numbers: list[int | None], width: int,
               ident: str = "", *, titled: bool = True) -> _Line:
    """One line: its numbers, its sign and its code, tinted by change and mark.

    A mark's explanation is a tooltip on the first line of each marked run
    (a linked function's every line would repeat it).
    """
    css, style, title = f"gpuad-diff-{line.tag}", DIFF_BACKGROUND[line.tag], ""
    if line.mark:
        css += f" gpuad-mark-{line.mark}"
        style = MARK_STYLE[line.mark]
        title = MARK_TITLE[line.mark] if titled else ""
    code = f"{_numbers(numbers, width)}{DIFF_SIGN[line.tag]} {highlighted[line.number]}"
    return _Line(css, code, style, title, ident)


def _row_id(after: DiffLine | None, anchors: dict[int, str]) -> str:
    if after is not None and after.new in anchors:
        return f' id="{anchors[after.new]}"'
    return ""


def _collapsed_line(item: Collapsed, side: str) -> _Line:
    last = item.count - 1
    old = f"old {item.before_start}–{item.before_start + last}"
    new = f"new {item.after_start}–{item.after_start + last}"
    where = {"both": f"{old}, {new}", "old": old, "new": new}[side]
    return _Line("gpuad-diff-collapsed", f"  ⋯ {item.count} unchanged lines ({where}) ⋯", COLLAPSED_STYLE)


CACHE_HIT = "disk cache"  # the one timing of a kernel loaded from the on-disk cache (gpuad.kernel)


def timing_label(stage: str) -> str:
    return "cache hit (from disk)" if stage == CACHE_HIT else stage


def cache_hit_note(timings: dict[str, float]) -> str:
    """Said above the timings of a kernel that was not compiled; empty otherwise."""
    if CACHE_HIT not in timings:
        return ""
    return (f"Cache hit: loaded from the on-disk kernel cache in {format_seconds(timings[CACHE_HIT])}; "
            "nothing was compiled.")


def render_timings(timings: dict[str, float]) -> str:
    """One horizontal bar per stage, scaled to the slowest."""
    if not timings:
        return note("No timings recorded.")
    hit = note(cache_hit_note(timings)) if CACHE_HIT in timings else ""
    slowest = max(timings.values()) or 1.0
    cell = "padding: 1px 8px 1px 0; text-align: left; border: none; background-color: transparent"
    rows = []
    for stage, seconds in timings.items():
        width = max(0.5, 100.0 * seconds / slowest)
        rows.append(
            f'<tr><td style="{cell}; white-space: nowrap">{html.escape(timing_label(stage))}</td>'
            f'<td style="{cell}; width: 60%"><div class="gpuad-bar" style="background-color: {palette.BAR}; '
            f'width: {width:.1f}%; height: 0.9em"></div></td>'
            f'<td style="{cell}; text-align: right; font-family: monospace; white-space: nowrap">'
            f"{format_seconds(seconds)}</td></tr>"
        )
    total = (f'<tr><td style="{cell}; padding-top: 4px; font-weight: bold">total</td><td style="{cell}"></td>'
             f'<td style="{cell}; text-align: right; font-family: monospace; font-weight: bold">'
             f"{format_seconds(sum(timings.values()))}</td></tr>")
    return (hit + f'<table class="gpuad-table" style="border-collapse: collapse; table-layout: auto; '
            f'width: 100%; {TABLE_FONT}">{"".join(rows)}{total}</table>')


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def escape_pre(text: str) -> str:
    """Plain text in a code block (no highlighting)."""
    return code_block(html.escape(text, quote=False))
