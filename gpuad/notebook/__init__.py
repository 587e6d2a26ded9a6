"""The Jupyter layer of gpuad: magics, the compilation widget, static views.

Nothing here compiles anything; it displays what the library produced.
`%load_ext gpuad` ends in `gpuad.notebook.magics.load_ipython_extension`.
Submodules import IPython and ipywidgets only when used.
"""
from __future__ import annotations

from gpuad.notebook.extras import (  # noqa: F401 - the package's public names
    INSTALL_EXTRA,
    NOTEBOOK_PACKAGES,
    MissingNotebookExtra,
    missing_extra_refused,
    require,
)


def load_ipython_extension(ipython) -> None:
    """Register `%%gpukernel` and `%gpuad_info` (also `%load_ext gpuad.notebook`)."""
    with missing_extra_refused("%load_ext gpuad"):
        from gpuad.notebook.magics import load_ipython_extension as load

    load(ipython)
    from gpuad.notebook import tracebacks

    tracebacks.install(ipython)  # gpuad errors: the message and the user's frames


def __getattr__(name: str):
    # `gpuad.notebook.CompilationView` without importing ipywidgets at `import gpuad`.
    if name == "CompilationView":
        with missing_extra_refused("CompilationView"):
            from gpuad.notebook.views import CompilationView

        return CompilationView
    raise AttributeError(f"module 'gpuad.notebook' has no attribute {name!r}")
