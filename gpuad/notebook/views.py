"""The display of a compilation: a tabbed widget and its static HTML twin.

`CompilationView(record)` is what `%%gpukernel` displays. Its MIME bundle
carries `text/plain` (a deterministic one-line summary, for nbval),
`text/html` (every stage as a foldable section, readable without a kernel)
and, when a kernel with ipywidgets is attached, the widget view.
`to_text()` is the text form a terminal IPython shows: the summary and the
chosen stages as plain text.
"""
from __future__ import annotations

import base64
import gzip
import html
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from gpuad.notebook import palette, render
from gpuad.notebook.irdiff import IRDiff, diff_ir
from gpuad.notebook.names import readable_labels, short_location, short_symbol
from gpuad.notebook.outline import outline
from gpuad.notebook.text import text_diff, text_table
from gpuad.record import CompilationRecord, plural

WIDGET_MIMETYPE = "application/vnd.jupyter.widget-view+json"
# The record as JSON (`CompilationView.viewer_data`), drawn by the JupyterLab extension in extension/.
COMPILATION_MIMETYPE = "application/vnd.gpuad.compilation+json"


@dataclass(frozen=True)
class Stage:
    key: str
    title: str
    aliases: tuple[str, ...] = ()


STAGES = (
    Stage("source", "Source", ("python",)),
    Stage("overlays", "Overlays"),
    Stage("jobs", "Deferred jobs", ("deferred",)),
    Stage("derivatives", "Derivative source", ("adjoint", "adjoints", "derivative")),
    Stage("ir-before", "IR before link", ("before", "ir_before_link")),
    Stage("ir-after", "IR after link", ("after", "ir_after_link", "ir")),
    Stage("diff", "Link diff", ("link-diff", "link")),
    Stage("ptx", "PTX"),
    Stage("timings", "Timings", ("time", "times")),
)
STAGE_KEYS = tuple(s.key for s in STAGES)
_TITLES = {s.key: s.title for s in STAGES}
_BY_NAME = {name: s.key for s in STAGES for name in (s.key, *s.aliases)}
# What a terminal prints when --show is not given: the stages that fit on a
# screen. The modules and the diff run to hundreds of lines; the text form
# names them with their sizes so the user can ask for them.
TEXT_DEFAULT_STAGES = ("overlays", "jobs", "derivatives", "timings")
_MODULE_STAGES = ("ir-before", "ir-after", "diff", "ptx")


def summary_line(record: CompilationRecord) -> str:
    """The one-line summary (`CompilationRecord.summary`: what nbval compares)."""
    return record.summary()


def parse_stages(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """Stage keys from `"source,ptx"` or a list; unknown names raise ValueError."""
    if spec is None:
        return STAGE_KEYS
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    keys = []
    for name in (n.strip().lower() for n in names):
        if not name:
            continue
        if name not in _BY_NAME:
            raise ValueError(f"unknown stage {name!r}; choose from {', '.join(STAGE_KEYS)}")
        if _BY_NAME[name] not in keys:
            keys.append(_BY_NAME[name])
    return tuple(keys) or STAGE_KEYS


class CompilationView:
    """A compilation record, displayable as text, static HTML and a widget."""

    def __init__(self, record: CompilationRecord, show: str | Iterable[str] | None = None, *,
                 diff_layout: str = "unified", widget: bool | None = None):
        self.record = record
        self.stages = parse_stages(show)
        self.diff_layout = diff_layout
        self._widget_wanted = widget  # None: only when a kernel can show widgets

    @cached_property
    def diff(self) -> IRDiff:
        return diff_ir(self.record.ir_before_link, self.record.ir_after_link)

    def stage_html(self, key: str, *, diff_layout: str | None = None) -> str:
        """The static HTML of one stage."""
        r = self.record
        if key == "diff":
            if not (r.ir_before_link or r.ir_after_link):
                return render.note("No IR to compare.")
            return render.render_diff(self.diff, diff_layout or self.diff_layout)
        renderers = {
            "source": lambda: render.render_source(r),
            "overlays": lambda: render.render_overlays(r),
            "jobs": lambda: render.render_jobs(r),
            "derivatives": lambda: render.render_derivatives(r),
            "ir-before": lambda: render.render_module(r.ir_before_link, "llvm"),
            "ir-after": lambda: render.render_module(r.ir_after_link, "llvm"),
            "ptx": lambda: render.render_module(r.ptx, "ptx"),
            "timings": lambda: render.render_timings(r.timings),
        }
        return renderers[key]()

    def header_html(self) -> str:
        r = self.record
        signature = ", ".join(r.signature)
        return (
            f'<div style="margin-bottom: 6px"><b>gpuad kernel <span style="font-family: monospace">'
            f'{html.escape(r.kernel_name)}</span></b> '
            f'<span style="color: {render.MUTED}">[{html.escape(r.target)}, {html.escape(r.arch)}] '
            f"({html.escape(signature)}) — {html.escape(self._counts())}</span></div>"
        )

    def _counts(self) -> str:
        r = self.record
        ptx = plural(len(r.ptx.splitlines()), "PTX line") if r.ptx else "no PTX"
        return (f"{plural(len(r.overlays), 'overlay')}, {plural(len(r.jobs), 'deferred job')}, "
                f"{plural(len(self.diff.linked_functions), 'function')} linked, {ptx}")

    def to_text(self) -> str:
        """The summary and each chosen stage as plain text (a terminal's display)."""
        r = self.record
        parts = [f"gpuad kernel {r.kernel_name} [{r.target}, {r.arch}] ({', '.join(r.signature)}): "
                 f"{self._counts()}"]
        for key in self.stages:
            parts.append(f"\n── {_TITLES[key]} ──\n{self.stage_text(key)}")
        left_out = [key for key in STAGE_KEYS if key not in self.stages and self._line_count(key)]
        if left_out:
            sizes = ", ".join(f"{key} ({plural(self._line_count(key), 'line')})" for key in left_out)
            parts.append(f"\nnot shown: {sizes}; to print them, name them in --show "
                         f"(e.g. --show {','.join((*self.stages, *left_out))})")
        return "\n".join(parts)

    def stage_text(self, key: str) -> str:
        """The plain text of one stage."""
        r = self.record
        texts = {
            "source": lambda: r.source.rstrip("\n"),
            "overlays": lambda: text_overlays(r),
            "jobs": lambda: text_jobs(r),
            "derivatives": lambda: text_derivatives(r),
            "ir-before": lambda: r.ir_before_link.rstrip("\n") or "(not produced by this compilation)",
            "ir-after": lambda: r.ir_after_link.rstrip("\n") or "(not produced by this compilation)",
            "diff": lambda: text_diff(self.diff) if (r.ir_before_link or r.ir_after_link)
            else "(no IR to compare)",
            "ptx": lambda: r.ptx.rstrip("\n") or "(not produced by this compilation)",
            "timings": lambda: text_timings(r.timings),
        }
        return texts[key]()

    def _line_count(self, key: str) -> int:
        r = self.record
        if key == "diff":
            return len(self.stage_text("diff").splitlines()) if r.ir_before_link or r.ir_after_link else 0
        if key in _MODULE_STAGES:
            return len({"ir-before": r.ir_before_link, "ir-after": r.ir_after_link, "ptx": r.ptx}[key]
                       .splitlines())
        return 0  # the short stages are not worth naming

    def to_html(self) -> str:
        """Every stage as a section; the first one open."""
        sections = [
            render.section(_TITLES[key], self.stage_html(key), opened=(k == 0),
                           css_class=f"gpuad-stage-{key}")
            for k, key in enumerate(self.stages)
        ]
        return render.panel(self.header_html() + "".join(sections))

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The summary (what nbval compares), the static HTML and the record as JSON.

        The JupyterLab extension (`extension/`) draws the JSON, live and in a saved
        notebook alike; without it, Jupyter shows the HTML. The ipywidgets view is
        added only when asked for (`widget=True`): its model lives in the kernel,
        so a reopened notebook would show "Error displaying widget: model not found"
        in place of the other forms.
        """
        bundle = {"text/plain": summary_line(self.record), "text/html": self.to_html(),
                  COMPILATION_MIMETYPE: self.viewer_data()}
        if self._widget_wanted:
            view = self.widget()._repr_mimebundle_()
            if view and WIDGET_MIMETYPE in view:
                bundle[WIDGET_MIMETYPE] = view[WIDGET_MIMETYPE]
        return bundle

    def viewer_data(self) -> dict:
        """What the extension's viewer draws: `record.to_dict()` plus what it derives.

        `stages` (the tabs to show, in order), `symbols` (mangled name -> readable
        Python name, for every mangled name in the IR and PTX), `call_sites` (as
        `cell [3], line 5` or a short path) and `link_diff`
        (the line alignment of IR before and after link, with the marker and the
        linked functions marked) are computed here, once, in Python, so the viewer
        needs no demangler or diff of its own.
        """
        data = self.record.to_dict()
        data["stages"] = list(self.stages)
        data["symbols"] = readable_symbols(self.record)
        data["call_sites"] = readable_call_sites(self.record)
        data["link_diff"] = diff_data(self.diff)
        return pack(data)

    def __repr__(self) -> str:
        return summary_line(self.record)

    def widget(self):
        """The interactive view: one tab per stage (built once)."""
        if not hasattr(self, "_widget"):
            self._widget = _build_widget(self)
        return self._widget


def text_overlays(record: CompilationRecord) -> str:
    if not record.overlays:
        return "No call was overlaid: every call resolved to its original function."
    rows = [[short_location(o.call_site).text, o.original, o.replacement, o.function]
            for o in record.overlays]
    return text_table(["call site", "original", "replacement", "function"], rows)


def text_jobs(record: CompilationRecord) -> str:
    if not record.jobs:
        return "No deferred jobs: the kernel makes no autodiff call."
    rows = [[str(j.id), j.function, j.mode, ", ".join(j.activities), ", ".join(j.argument_types),
             short_symbol(j.symbol).text] for j in record.jobs]
    return text_table(["id", "function", "mode", "activities", "types", "symbol"], rows)


def text_derivatives(record: CompilationRecord) -> str:
    if not record.adjoint_sources:
        return "No derivative source was generated."
    jobs = {j.id: j for j in record.jobs}
    parts = []
    for job_id, source in sorted(record.adjoint_sources.items()):
        job = jobs.get(job_id)
        parts.append(f"# job {job_id}" + (f": {job.mode} of {job.function}" if job else ""))
        parts.append(source.rstrip("\n"))
    return "\n".join(parts)


def text_timings(timings: dict[str, float]) -> str:
    if not timings:
        return "No timings recorded."
    rows = [[render.timing_label(stage), render.format_seconds(s)] for stage, s in timings.items()]
    rows.append(["total", render.format_seconds(sum(timings.values()))])
    hit = render.cache_hit_note(timings)
    return (hit + "\n" if hit else "") + text_table(["stage", "time"], rows)


# Mangled numba names (`_ZN…`) as they appear in IR (`@"_ZN…"`, `@_ZN…`) and PTX (`.entry _ZN…`,
# `_ZN…_param_0`).
_MANGLED = re.compile(r"_ZN[A-Za-z0-9_$.]+")
_PTX_PARAM = re.compile(r"(.+?)(_param_\d+)?")


def readable_symbols(record: CompilationRecord) -> dict[str, str]:
    """Each mangled name of the record's IR, PTX and jobs -> its readable Python name."""
    found = set(_MANGLED.findall("\n".join((record.ir_before_link, record.ir_after_link, record.ptx))))
    found.update(j.symbol for j in record.jobs if j.symbol)
    names = {}
    for symbol in sorted(found):
        # A PTX parameter is its function's symbol and `_param_N`: keep the N readable.
        base, param = _PTX_PARAM.fullmatch(symbol).groups()
        short = short_symbol(base, limit=96)
        if short.shortened:
            names[symbol] = short.text + (param or "")
    return names


def readable_call_sites(record: CompilationRecord) -> dict[str, str]:
    """Each `file:line` of the overlays and jobs -> where the reader wrote it (`cell [3], line 5`)."""
    sites = {o.call_site for o in record.overlays} | {s for j in record.jobs for s in j.call_sites}
    return {site: short_location(site).text for site in sorted(sites)}


def diff_data(diff: IRDiff) -> dict:
    """The link diff as the viewer needs it: difflib opcodes over the lines, and the marks.

    Lines are not repeated: the viewer takes them from `ir_before_link` and
    `ir_after_link`. Marks are keyed by 0-based line index (JSON keys are strings).
    """
    return {
        "opcodes": [list(op) for op in diff.opcodes],
        "before_marks": {str(k): v for k, v in diff.before_marks.items()},
        "after_marks": {str(k): v for k, v in diff.after_marks.items()},
        "linked_functions": list(diff.linked_functions),
    }


# The JSON a saved notebook stores: the fields that name the compilation stay readable; the rest
# (IR, PTX, sources, symbols: 90 KB of a default cell's 290) travel as one gzip+base64 string, which
# extension/src/model.ts (`unpackCompilation`) decodes. IR after link is stored as its difference
# from IR before link (the link diff's opcodes align them): beyond gzip's 32 KB window, the two
# copies of a module would not share anything.
PACKING = "gzip+base64"
PLAIN_FIELDS = ("format", "version", "kernel_name", "target", "arch", "signature", "stages")
AFTER_CHANGES = "ir_after_link_changes"


def pack(data: dict) -> dict:
    """`data` with every field not in PLAIN_FIELDS moved into `packed` (see PACKING)."""
    plain = {k: v for k, v in data.items() if k in PLAIN_FIELDS}
    body = {k: v for k, v in data.items() if k not in PLAIN_FIELDS}
    changes = after_link_changes(body)
    if changes is not None:
        del body["ir_after_link"]
        body[AFTER_CHANGES] = changes
    # mtime=0: the same record always saves as the same text (notebook diffs stay quiet).
    raw = gzip.compress(json.dumps(body, separators=(",", ":")).encode(), compresslevel=9, mtime=0)
    return {**plain, "packed": {"encoding": PACKING, "data": base64.b64encode(raw).decode("ascii")}}


def unpack(data: dict) -> dict:
    """The inverse of `pack` (what the extension does in TypeScript)."""
    if "packed" not in data:
        return dict(data)
    packed = data["packed"]
    if packed["encoding"] != PACKING:
        raise ValueError(f"unknown packing {packed['encoding']!r} (gpuad writes {PACKING!r})")
    body = json.loads(gzip.decompress(base64.b64decode(packed["data"])))
    if AFTER_CHANGES in body:
        body["ir_after_link"] = rebuild_after_link(body["ir_before_link"], body["link_diff"]["opcodes"],
                                                   body.pop(AFTER_CHANGES))
    return {**{k: v for k, v in data.items() if k != "packed"}, **body}


def after_link_changes(body: dict) -> dict | None:
    """IR after link as the lines that differ from IR before link, or None when it cannot be.

    `lines`: after's lines of each non-equal opcode, in order. It cannot when a module's lines are
    not exactly its newline-separated pieces (a carriage return or another line break that
    `splitlines` counts, which the TypeScript decoder would not).
    """
    before, after = body.get("ir_before_link", ""), body.get("ir_after_link", "")
    opcodes = body.get("link_diff", {}).get("opcodes")
    if not before or not after or not opcodes or not (_newline_lines(before) and _newline_lines(after)):
        return None
    lines = after.splitlines()
    changes = {"lines": [lines[j1:j2] for tag, _, _, j1, j2 in opcodes if tag != "equal"],
               "final_newline": after.endswith("\n")}
    if rebuild_after_link(before, opcodes, changes) != after:  # never store what does not decode
        return None
    return changes


def rebuild_after_link(before: str, opcodes: list, changes: dict) -> str:
    old, pieces = before.splitlines(), iter(changes["lines"])
    lines = [line for tag, i1, i2, _, _ in opcodes
             for line in (old[i1:i2] if tag == "equal" else next(pieces))]
    return "\n".join(lines) + ("\n" if changes["final_newline"] else "")


def _newline_lines(text: str) -> bool:
    """Whether `text.splitlines()` splits at newlines only."""
    return text.splitlines() == text.removesuffix("\n").split("\n")


def _build_widget(view: CompilationView):
    import ipywidgets as widgets

    browsers = {}
    children = []
    for key in view.stages:
        if key in ("ir-before", "ir-after", "ptx"):
            text = {"ir-before": view.record.ir_before_link, "ir-after": view.record.ir_after_link,
                    "ptx": view.record.ptx}[key]
            browsers[key] = ModuleBrowser(text, "ptx" if key == "ptx" else "llvm")
            children.append(browsers[key].box)
        elif key == "diff":
            browsers[key] = DiffBrowser(view)
            children.append(browsers[key].box)
        else:
            children.append(widgets.HTML(render.panel(view.stage_html(key))))
    tabs = widgets.Tab(children=children, titles=[_TITLES[k] for k in view.stages])
    box = widgets.VBox([widgets.HTML(render.WIDGET_STYLE + view.header_html()), tabs])
    box.add_class("gpuad-widget")
    box.browsers = browsers  # kept for tests and for programmatic navigation
    box.tabs = tabs
    return box


class ModuleBrowser:
    """An IR or PTX module with a function picker and a search box."""

    WHOLE_MODULE = "(whole module)"

    def __init__(self, text: str, language: str):
        import ipywidgets as widgets

        self.text, self.language = text, language
        self.lines = text.splitlines()
        self.outline = outline(text, language)
        # Python names to pick from; the value stays the symbol, which the tooltip shows.
        labels = readable_labels(self.outline.names)
        self.picker = widgets.Dropdown(options=[(self.WHOLE_MODULE, self.WHOLE_MODULE),
                                                *zip(labels, self.outline.names)],
                                       description="function", layout=widgets.Layout(width="60%"))
        self.search = widgets.Text(placeholder="search (substring)", description="find",
                                   continuous_update=False)
        self.body = widgets.HTML()
        self.box = widgets.VBox([widgets.HBox([self.picker, self.search]), self.body])
        self.picker.observe(lambda _: self.refresh(), names="value")
        self.search.observe(lambda _: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        span = self.outline.function(self.picker.value)
        self.picker.tooltip = span.name if span else None  # the mangled symbol, on hover
        start, end = (span.start, span.end) if span else (0, len(self.lines))
        query = self.search.value.strip()
        if query:
            self.body.value = render.panel(self._matches(query, start, end))
        elif span:
            self.body.value = render.panel(render.readable_highlight("\n".join(self.lines[start:end]),
                                                                     self.language, max_height="40em"))
        else:
            self.body.value = render.panel(render.render_module(self.text, self.language))

    def _matches(self, query: str, start: int, end: int) -> str:
        """Lines containing `query` (case-insensitive), numbered, the match marked."""
        needle = query.lower()
        hits = [i for i in range(start, end) if needle in self.lines[i].lower()]
        rows = [f"{i + 1:>6}  {_mark_substring(self.lines[i], needle)}" for i in hits]
        summary = render.note(f"{len(hits)} line(s) contain {query!r}")
        return summary + (render.code_block("\n".join(rows), max_height="40em") if hits else "")


def _mark_substring(line: str, needle: str) -> str:
    out, lower, k = [], line.lower(), 0
    while (found := lower.find(needle, k)) >= 0:
        out.append(html.escape(line[k:found]))
        out.append(f'<mark style="{palette.SEARCH_HIT}">'
                   f"{html.escape(line[found:found + len(needle)])}</mark>")
        k = found + len(needle)
    out.append(html.escape(line[k:]))
    return "".join(out)


class DiffBrowser:
    """The link diff with a unified / side-by-side switch."""

    def __init__(self, view: CompilationView):
        import ipywidgets as widgets

        self.view = view
        self.layout = widgets.ToggleButtons(options=["unified", "side-by-side"], value=view.diff_layout)
        self.body = widgets.HTML()
        self.box = widgets.VBox([self.layout, self.body])
        self.layout.observe(lambda _: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        self.body.value = render.panel(self.view.stage_html("diff", diff_layout=self.layout.value))
