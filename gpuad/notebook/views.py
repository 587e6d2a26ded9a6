"""The display of a compilation: a tabbed widget and its static HTML twin.

`CompilationView(record)` is what `%%gpukernel` displays. Its MIME bundle
carries `text/plain` (the record's deterministic summary, for nbval),
`text/html` (every stage as a foldable section, readable without a kernel)
and, when a kernel with ipywidgets is attached, the widget view.
"""
from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from gpuad.notebook import render
from gpuad.notebook.irdiff import IRDiff, diff_ir
from gpuad.notebook.outline import outline
from gpuad.record import CompilationRecord

WIDGET_MIMETYPE = "application/vnd.jupyter.widget-view+json"


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
            f"({html.escape(signature)}) — {len(r.overlays)} overlays, {len(r.jobs)} deferred jobs, "
            f"{len(self.diff.linked_functions)} functions linked</span></div>"
        )

    def to_html(self) -> str:
        """Every stage as a section; the first one open."""
        sections = [
            render.section(_TITLES[key], self.stage_html(key), opened=(k == 0),
                           css_class=f"gpuad-stage-{key}")
            for k, key in enumerate(self.stages)
        ]
        return render.panel(self.header_html() + "".join(sections))

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        bundle = {"text/plain": self.record.summary(), "text/html": self.to_html()}
        if self._widget_wanted or (self._widget_wanted is None and _kernel_can_show_widgets()):
            view = self.widget()._repr_mimebundle_()
            if view and WIDGET_MIMETYPE in view:
                bundle[WIDGET_MIMETYPE] = view[WIDGET_MIMETYPE]
        return bundle

    def __repr__(self) -> str:
        return self.record.summary()

    def widget(self):
        """The interactive view: one tab per stage (built once)."""
        if not hasattr(self, "_widget"):
            self._widget = _build_widget(self)
        return self._widget


def _kernel_can_show_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    # A terminal IPython has no kernel, so no front end could render the widget.
    return shell is not None and getattr(shell, "kernel", None) is not None


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
    box = widgets.VBox([widgets.HTML(view.header_html()), tabs])
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
        self.picker = widgets.Dropdown(options=[self.WHOLE_MODULE, *self.outline.names],
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
        start, end = (span.start, span.end) if span else (0, len(self.lines))
        query = self.search.value.strip()
        if query:
            self.body.value = render.panel(self._matches(query, start, end))
        elif span:
            self.body.value = render.panel(render.highlight("\n".join(self.lines[start:end]), self.language,
                                                            max_height="40em"))
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
        out.append(f'<mark style="background-color: #ffd33d; color: #1f2328">'
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
