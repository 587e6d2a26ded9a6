"""Static HTML for each stage of a compilation record.

Every function here returns a self-contained HTML fragment with inline
styles and colours we set ourselves, so it reads the same in light and dark
themes, survives JupyterLab's sanitizer, and needs no kernel. The widget
(`views`) shows the same fragments in tabs.
"""
from __future__ import annotations

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
from gpuad.notebook.outline import outline
from gpuad.record import CompilationRecord

PANEL_BACKGROUND = "#ffffff"
PANEL_FOREGROUND = "#1f2328"
MUTED = "#57606a"
RULE = "#d0d7de"
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


def table(header: list[str], rows: list[list[str]], *, code_columns: frozenset[int] = frozenset()) -> str:
    """A plain table; cells are escaped, `code_columns` set in monospace."""
    cell = f"border: 1px solid {RULE}; padding: 3px 6px; text-align: left; vertical-align: top"
    head = "".join(f'<th style="{cell}; background-color: #eaeef2">{html.escape(h)}</th>' for h in header)

    def td(k: int, value: str) -> str:
        font = "; font-family: monospace; word-break: break-all" if k in code_columns else ""
        return f'<td style="{cell}{font}">{html.escape(value)}</td>'

    body = "".join("<tr>" + "".join(td(k, v) for k, v in enumerate(row)) + "</tr>" for row in rows)
    return (
        f'<table style="border-collapse: collapse; color: {PANEL_FOREGROUND}; '
        f'background-color: {PANEL_BACKGROUND}; {TABLE_FONT}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def render_source(record: CompilationRecord) -> str:
    return highlight(record.source, "python")


def render_overlays(record: CompilationRecord) -> str:
    if not record.overlays:
        return note("No call was overlaid: every call resolved to its original function.")
    rows = [[o.call_site, o.original, o.replacement, o.function] for o in record.overlays]
    header = ["call site", "original", "replacement", "function"]
    return table(header, rows, code_columns=frozenset({0, 1, 2}))


def render_jobs(record: CompilationRecord) -> str:
    if not record.jobs:
        return note("No deferred jobs: the kernel makes no autodiff call.")
    rows = [
        [str(j.id), j.function, j.mode, ", ".join(j.activities), ", ".join(j.argument_types), j.symbol]
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
    """The link diff as a table, marker and linked lines highlighted."""
    if layout not in ("unified", "side-by-side"):
        raise ValueError(f"diff layout must be 'unified' or 'side-by-side', not {layout!r}")
    before_html = highlight_lines("\n".join(diff.before), "llvm")
    after_html = highlight_lines("\n".join(diff.after), "llvm")
    rows = []
    if layout == "unified":
        for item in diff.unified(context):
            rows.append(_collapsed_row(item, columns=2) if isinstance(item, Collapsed)
                        else _unified_row(item, before_html if item.tag == "delete" else after_html))
    else:
        for item in diff.side_by_side(context):
            rows.append(_collapsed_row(item, columns=4) if isinstance(item, Collapsed)
                        else _side_by_side_row(item, before_html, after_html))
    legend = _diff_legend(diff)
    return (
        f"{legend}<div style=\"overflow: auto; max-height: 40em\">"
        f'<table class="gpuad-diff" style="border-collapse: collapse; width: 100%; '
        f'background-color: {CODE_BACKGROUND}; color: {CODE_FOREGROUND}; {CODE_FONT}">'
        f"{''.join(rows)}</table></div>"
    )


def _diff_legend(diff: IRDiff) -> str:
    linked = ", ".join(diff.linked_functions) or "none"
    labels = ((MARKER, "marker"), (LINKED, "linked function"), (LINK_REF, "reference to linked function"))
    swatch = "".join(
        f'<span style="{MARK_STYLE[m]}; padding: 0 6px; margin-right: 8px">{label}</span>'
        for m, label in labels
    )
    return (
        f'<p style="margin: 4px 0">{diff.deleted} lines removed, {diff.inserted} added; '
        f"functions linked: <code>{html.escape(linked)}</code></p>"
        f'<p style="margin: 4px 0">{swatch}</p>'
    )


def _line_cells(line: DiffLine | None, highlighted: list[str]) -> str:
    """Number, sign and code cells of one side of a row."""
    if line is None:
        blank = f"background-color: {CODE_BACKGROUND}"
        return f'<td style="{blank}"></td><td style="{blank}"></td>'
    style = f"background-color: {DIFF_BACKGROUND[line.tag]}; white-space: pre; padding: 0 6px"
    css, title = f"gpuad-diff-{line.tag}", ""
    if line.mark:
        style += "; " + MARK_STYLE[line.mark]
        css += f" gpuad-mark-{line.mark}"
        title = f' title="{html.escape(MARK_TITLE[line.mark])}"'
    number = (f'<td style="color: {MUTED}; text-align: right; padding: 0 4px; white-space: pre">'
              f"{line.number}</td>")
    code = f"{DIFF_SIGN[line.tag]} {highlighted[line.number - 1]}"
    return f'{number}<td class="{css}" style="{style}"{title}>{code}</td>'


def _unified_row(line: DiffLine, highlighted: list[str]) -> str:
    return f"<tr>{_line_cells(line, highlighted)}</tr>"


def _side_by_side_row(row: Row, before_html: list[str], after_html: list[str]) -> str:
    return f"<tr>{_line_cells(row.before, before_html)}{_line_cells(row.after, after_html)}</tr>"


def _collapsed_row(item: Collapsed, *, columns: int) -> str:
    return (
        f'<tr><td colspan="{columns}" class="gpuad-diff-collapsed" style="background-color: #eaeef2; '
        f'color: {MUTED}; font-style: italic; padding: 1px 8px">⋯ {item.count} unchanged lines '
        f"(before {item.before_start}–{item.before_start + item.count - 1}) ⋯</td></tr>"
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
            f"{_format_seconds(seconds)}</td></tr>"
        )
    total = (f'<tr><td style="padding-top: 4px; font-weight: bold">total</td><td></td>'
             f'<td style="text-align: right; font-family: monospace; font-weight: bold">'
             f"{_format_seconds(sum(timings.values()))}</td></tr>")
    return (f'<table style="border-collapse: collapse; width: 100%; {TABLE_FONT}">'
            f'{"".join(rows)}{total}</table>')


def _format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def escape_pre(text: str) -> str:
    """Plain text in a code block (no highlighting)."""
    return code_block(html.escape(text, quote=False))

