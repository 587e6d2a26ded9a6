"""Static HTML for each stage of a compilation record.

Every function here returns a self-contained HTML fragment with inline
styles and colours we set ourselves, so it reads the same in light and dark
themes, survives JupyterLab's sanitizer, and needs no kernel. The widget
(`views`) shows the same fragments in tabs.
"""
from __future__ import annotations

import hashlib
import html

from gpuad.notebook.highlight import (
    CODE_BACKGROUND,
    CODE_FONT,
    CODE_FOREGROUND,
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
from gpuad.notebook.names import Short, short_location, short_symbol
from gpuad.notebook.outline import outline
from gpuad.record import CompilationRecord

PANEL_BACKGROUND = "#ffffff"
PANEL_FOREGROUND = "#1f2328"
MUTED = "#57606a"
RULE = "#d0d7de"
LINK = "#0969da"
TABLE_FONT = "font-family: sans-serif; font-size: 12px"

DIFF_BACKGROUND = {"equal": CODE_BACKGROUND, "delete": "#ffebe9", "insert": "#e6ffec"}
DIFF_SIGN = {"equal": " ", "delete": "-", "insert": "+"}
MARK_STYLE = {
    MARKER: "background-color: #fff1b8; border-left: 4px solid #bf8700; font-weight: bold",
    LINKED: "background-color: #f0ebff; border-left: 4px solid #8250df",
    LINK_REF: "background-color: #ddf4ff; border-left: 4px solid #0969da; font-weight: bold",
}
MARK_TITLE = {
    MARKER: "deferred-codegen marker: replaced by the job's function at link time",
    LINKED: "function added by the deferred-codegen linker",
    LINK_REF: "refers to a function added by the linker",
}

# Modules longer than this start with their functions folded.
OPEN_MODULE_LINES = 300


def panel(body: str) -> str:
    """The outer box: our own background and text colour, whatever the theme."""
    return (
        f'<div class="gpuad-view" style="background-color: {PANEL_BACKGROUND}; color: {PANEL_FOREGROUND}; '
        f'border: 1px solid {RULE}; border-radius: 4px; padding: 8px; {TABLE_FONT}">{body}</div>'
    )


def section(title: str, body: str, *, opened: bool = False, css_class: str = "") -> str:
    """A foldable `<details>` section."""
    attrs = f' class="{css_class}"' if css_class else ""
    return (
        f"<details{attrs}{' open' if opened else ''} style=\"margin: 4px 0\">"
        f'<summary style="cursor: pointer; font-weight: bold; padding: 2px 0">{html.escape(title)}</summary>'
        f'<div style="margin: 4px 0 4px 12px">{body}</div></details>'
    )


def note(text: str) -> str:
    return f'<p style="color: {MUTED}; font-style: italic; margin: 4px 0">{html.escape(text)}</p>'


def table(header: list[str], rows: list[list[str | Short]], *,
          code_columns: frozenset[int] = frozenset()) -> str:
    """A plain table; cells are escaped, `code_columns` set in monospace and never wrapped.

    A `Short` cell shows its short text with the full text as a tooltip.
    """
    cell = f"border: 1px solid {RULE}; padding: 3px 6px; text-align: left; vertical-align: top"
    head = "".join(f'<th style="{cell}; background-color: #eaeef2">{html.escape(h)}</th>' for h in header)

    def td(k: int, value: str | Short) -> str:
        font = "; font-family: monospace; white-space: nowrap" if k in code_columns else ""
        if isinstance(value, Short):
            title = f' title="{html.escape(value.full)}"' if value.shortened else ""
            return f'<td style="{cell}{font}"{title}>{html.escape(value.text)}</td>'
        return f'<td style="{cell}{font}">{html.escape(value)}</td>'

    body = "".join("<tr>" + "".join(td(k, v) for k, v in enumerate(row)) + "</tr>" for row in rows)
    # Unwrapped code columns may make the table wider than the output: scroll it, not the page.
    return (
        f'<div style="overflow-x: auto"><table style="border-collapse: collapse; color: {PANEL_FOREGROUND}; '
        f'background-color: {PANEL_BACKGROUND}; {TABLE_FONT}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def render_source(record: CompilationRecord) -> str:
    return highlight(record.source, "python")


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
         short_symbol(j.symbol)]
        for j in record.jobs
    ]
    header = ["id", "function", "mode", "activities", "types", "symbol"]
    return table(header, rows, code_columns=frozenset({5}))


def render_derivatives(record: CompilationRecord) -> str:
    if not record.adjoint_sources:
        return note("No derivative source was generated.")
    jobs = {j.id: j for j in record.jobs}
    parts = []
    for job_id, source in sorted(record.adjoint_sources.items()):
        job = jobs.get(job_id)
        title = f"job {job_id}" + (f": {job.mode} of {job.function}" if job else "")
        parts.append(section(title, highlight(source, "python"), opened=True))
    return "".join(parts)


def render_module(text: str, language: str) -> str:
    """A module folded by function: one `<details>` per definition."""
    if not text:
        return note("Not produced by this compilation.")
    lines = highlight_lines(text, language)
    shape = outline(text, language)
    small = shape.line_count <= OPEN_MODULE_LINES
    parts = []
    for fn, start, end in shape.segments():
        block = code_block("\n".join(lines[start:end]), max_height="none")
        if fn is None:
            if any(line.strip() for line in text.splitlines()[start:end]):
                parts.append(section(f"lines {start + 1}–{end}: module-level", block, opened=small))
            continue
        parts.append(section(f"{fn.name}  ({fn.length} lines, from line {fn.start + 1})", block,
                             opened=small, css_class="gpuad-function"))
    return "".join(parts)


def render_diff(diff: IRDiff, layout: str = "unified", context: int = 3) -> str:
    """The link diff as a table, marker and linked lines highlighted.

    The unified layout has two number columns (old, new), like `git diff`
    views; side by side, each side has its own. The summary above the table
    links to the first line of each linked function.
    """
    if layout not in ("unified", "side-by-side"):
        raise ValueError(f"diff layout must be 'unified' or 'side-by-side', not {layout!r}")
    before_html = highlight_lines("\n".join(diff.before), "llvm")
    after_html = highlight_lines("\n".join(diff.after), "llvm")
    anchors = {span.start + 1: linked_anchor(diff, span.name) for span in diff.linked_spans}
    rows = []
    if layout == "unified":
        for item in diff.unified(context):
            rows.append(_collapsed_row(item, columns=3) if isinstance(item, Collapsed)
                        else _unified_row(item, before_html if item.tag == "delete" else after_html, anchors))
    else:
        for item in diff.side_by_side(context):
            rows.append(_collapsed_row(item, columns=4) if isinstance(item, Collapsed)
                        else _side_by_side_row(item, before_html, after_html, anchors))
    legend = _diff_legend(diff)
    return (
        f"{legend}<div style=\"overflow: auto; max-height: 40em\">"
        f'<table class="gpuad-diff" style="border-collapse: collapse; width: 100%; '
        f'background-color: {CODE_BACKGROUND}; color: {CODE_FOREGROUND}; {CODE_FONT}">'
        f"{''.join(rows)}</table></div>"
    )


def linked_anchor(diff: IRDiff, name: str) -> str:
    """The id of the row that starts linked function `name` (stable for the same module)."""
    digest = hashlib.sha1(name.encode(), usedforsecurity=False)
    digest.update("\n".join(diff.after).encode())
    return f"gpuad-linked-{digest.hexdigest()[:12]}"


def _diff_legend(diff: IRDiff) -> str:
    labels = ((MARKER, "marker"), (LINKED, "linked function"), (LINK_REF, "reference to linked function"))
    swatch = "".join(
        f'<span style="{MARK_STYLE[m]}; padding: 0 6px; margin-right: 8px">{label}</span>'
        for m, label in labels
    )
    return (
        f'<p style="margin: 4px 0">{diff.deleted} lines removed, {diff.inserted} added; '
        f"functions linked: {_linked_links(diff)}</p>"
        f'<p style="margin: 4px 0">{swatch}</p>'
    )


def _linked_links(diff: IRDiff) -> str:
    """Each linked function's short name, linking to its definition in the table below."""
    if not diff.linked_functions:
        return "none"
    links = []
    for name in diff.linked_functions:
        short, span = short_symbol(name), diff.linked_span(name)
        where = f"new lines {span.start + 1}–{span.end}" if span else ""
        title = html.escape(f"{name}\njump to its definition ({where})" if where else name)
        links.append(
            f'<a class="gpuad-linked-link" href="#{linked_anchor(diff, name)}" title="{title}" '
            f'style="color: {LINK}; text-decoration: none; white-space: nowrap">'
            f'↓ <span style="font-family: monospace">{html.escape(short.text)}</span></a>'
            + (f' <span style="color: {MUTED}">({where})</span>' if where else "")
        )
    return ", ".join(links)


def _number_cell(number: int | None, side: str) -> str:
    # width: 1% keeps number columns as narrow as their digits (tables share
    # spare width out otherwise); the background is ours so dark themes don't
    # repaint the gutter.
    return (f'<td class="gpuad-diff-{side}-number" style="color: {MUTED}; text-align: right; '
            f'padding: 0 4px; white-space: pre; width: 1%; background-color: {CODE_BACKGROUND}">'
            f'{"" if number is None else number}</td>')


def _code_cell(line: DiffLine, highlighted: list[str]) -> str:
    style = f"background-color: {DIFF_BACKGROUND[line.tag]}; white-space: pre; padding: 0 6px"
    css, title = f"gpuad-diff-{line.tag}", ""
    if line.mark:
        style += "; " + MARK_STYLE[line.mark]
        css += f" gpuad-mark-{line.mark}"
        title = f' title="{html.escape(MARK_TITLE[line.mark])}"'
    code = f"{DIFF_SIGN[line.tag]} {highlighted[line.number - 1]}"
    return f'<td class="{css}" style="{style}"{title}>{code}</td>'


def _row_id(after: DiffLine | None, anchors: dict[int, str]) -> str:
    if after is not None and after.new in anchors:
        return f' id="{anchors[after.new]}"'
    return ""


def _unified_row(line: DiffLine, highlighted: list[str], anchors: dict[int, str]) -> str:
    return (f"<tr{_row_id(line, anchors)}>{_number_cell(line.old, 'old')}{_number_cell(line.new, 'new')}"
            f"{_code_cell(line, highlighted)}</tr>")


def _side_by_side_row(row: Row, before_html: list[str], after_html: list[str],
                      anchors: dict[int, str]) -> str:
    cells = []
    for line, highlighted, side in ((row.before, before_html, "old"), (row.after, after_html, "new")):
        if line is None:
            blank = f"background-color: {CODE_BACKGROUND}"
            cells.append(f'<td style="{blank}"></td><td style="{blank}"></td>')
        else:
            cells.append(_number_cell(line.number, side) + _code_cell(line, highlighted))
    return f"<tr{_row_id(row.after, anchors)}>{''.join(cells)}</tr>"


def _collapsed_row(item: Collapsed, *, columns: int) -> str:
    last = item.count - 1
    return (
        f'<tr><td colspan="{columns}" class="gpuad-diff-collapsed" style="background-color: #eaeef2; '
        f'color: {MUTED}; font-style: italic; padding: 1px 8px">⋯ {item.count} unchanged lines '
        f"(old {item.before_start}–{item.before_start + last}, "
        f"new {item.after_start}–{item.after_start + last}) ⋯</td></tr>"
    )


def render_timings(timings: dict[str, float]) -> str:
    """One horizontal bar per stage, scaled to the slowest."""
    if not timings:
        return note("No timings recorded.")
    slowest = max(timings.values()) or 1.0
    rows = []
    for stage, seconds in timings.items():
        width = max(0.5, 100.0 * seconds / slowest)
        rows.append(
            f'<tr><td style="padding: 1px 8px 1px 0">{html.escape(stage)}</td>'
            f'<td style="width: 60%"><div class="gpuad-bar" style="background-color: #4c8bf5; '
            f'width: {width:.1f}%; height: 0.9em"></div></td>'
            f'<td style="padding: 1px 0 1px 8px; text-align: right; font-family: monospace">'
            f"{format_seconds(seconds)}</td></tr>"
        )
    total = (f'<tr><td style="padding-top: 4px; font-weight: bold">total</td><td></td>'
             f'<td style="text-align: right; font-family: monospace; font-weight: bold">'
             f"{format_seconds(sum(timings.values()))}</td></tr>")
    return (f'<table style="border-collapse: collapse; width: 100%; {TABLE_FONT}">'
            f'{"".join(rows)}{total}</table>')


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def escape_pre(text: str) -> str:
    """Plain text in a code block (no highlighting)."""
    return code_block(html.escape(text, quote=False))

