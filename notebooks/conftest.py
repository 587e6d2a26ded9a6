"""nbval compares text/plain; the JSON a gpuad compilation display carries is not compared.

`application/vnd.gpuad.compilation+json` (what the JupyterLab extension draws) holds
IR, PTX and timings, which vary with the machine and numba's version, as the HTML
twin does (sanitize.cfg replaces that one by a constant). nbval sanitizes strings
only, so the JSON is left out of the comparison instead; this also lets notebooks
executed before the JSON existed still pass.
"""
import os

from gpuad.notebook.views import COMPILATION_MIMETYPE

# The kernels nbval starts inherit this: a compile's progress display shows only past a second,
# so on a loaded CI machine it would come and go in the compared outputs (notebooks/execute.py
# executes the committed outputs the same way).
os.environ["GPUAD_PROGRESS"] = "0"


def pytest_collection_modifyitems(items):
    for item in items:
        notebook = getattr(item, "parent", None)
        if hasattr(notebook, "skip_compare") and COMPILATION_MIMETYPE not in notebook.skip_compare:
            notebook.skip_compare = (*notebook.skip_compare, COMPILATION_MIMETYPE)
