"""The rich displays of gpuad's data, installed into the data modules from above.

`gpuad` imports this module when it is imported (as it imports `gpuad.host`), so the data never
imports its display: `kernel.compile(...)`'s record gets the compilation view
(`record.def_display`) and the gradient-check reports their HTML and figures
(`gradient_check.def_view`). The views and their renderers (pygments, matplotlib, and ipywidgets
when asked for) load on first use only; without the notebook extra a record shows as its repr.
"""
from __future__ import annotations

from gpuad import gradient_check, record


@record.def_display
def compilation_bundle(compilation: record.CompilationRecord, include=None, exclude=None) -> dict | None:
    """The compilation view's MIME bundle (static HTML and the record as JSON, no widget)."""
    try:
        from gpuad.notebook.views import CompilationView
    except ImportError:  # the notebook extra is missing: the text form is all there is
        return None
    return CompilationView(compilation, widget=False)._repr_mimebundle_(include, exclude)


@gradient_check.def_view
class GradcheckDisplay:
    """The reports' HTML and figures (`gpuad.notebook.gradcheck_view`), loaded when first asked for."""

    @staticmethod
    def html(report: gradient_check.Report) -> str:
        return _view().report_html(report)

    @staticmethod
    def figure(report: gradient_check.Report, *args, **kwargs):
        return _view().figure(report, *args, **kwargs)


def _view():
    from gpuad.notebook.extras import missing_extra_refused

    with missing_extra_refused("gradcheck reports' HTML and plots"):
        from gpuad.notebook import gradcheck_view

    return gradcheck_view
