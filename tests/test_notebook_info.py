"""`%gpuad_info`'s HTML (gpuad/notebook/info.py): readable in JupyterLab's light and dark themes."""
from __future__ import annotations

import re

from gpuad.notebook.info import EnvironmentInfo


def test_info_table_takes_the_themes_colours_on_every_cell():
    page = EnvironmentInfo(versions={"gpuad": "1.0"}, target="cpu")._repr_html_()
    cells = re.findall(r"<t[hd] style=\"([^\"]*)\"", page)
    assert len(cells) == 2 * 5  # gpuad, target, GPU, NVVM, cache
    # A fixed white table under the dark theme's light text colour read dark-on-black in its cells.
    for style in cells:
        assert "background-color: var(--jp-layout-color0, #ffffff)" in style
        assert "color: var(--jp-content-font-color1, #1f2328)" in style
    assert "background-color: #ffffff" not in page
