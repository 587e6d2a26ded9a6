"""The rich display of `kernel.compile(...)`'s record, installed into `gpuad.record` from above.

`gpuad` imports this module when it is imported (as it imports `gpuad.host`), so the record,
which is data, never imports its display: `record.def_display` receives it. The view and its
renderers (pygments, and ipywidgets when asked for) load on the first display only; without the
notebook extra the record shows as its repr.
"""
from __future__ import annotations

from gpuad import record


@record.def_display
def compilation_bundle(compilation: record.CompilationRecord, include=None, exclude=None) -> dict | None:
    """The compilation view's MIME bundle (static HTML and the record as JSON, no widget)."""
    try:
        from gpuad.notebook.views import CompilationView
    except ImportError:  # the notebook extra is missing: the text form is all there is
        return None
    return CompilationView(compilation, widget=False)._repr_mimebundle_(include, exclude)
