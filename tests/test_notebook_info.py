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


def test_gpuad_info_and_the_gpuad_info_command_ask_the_same_probes(monkeypatch):
    """%gpuad_info words the answers of `gpuad info`'s checks; it has no probes of its own."""
    from gpuad.notebook import info

    monkeypatch.setattr(info, "_cuda_device", lambda: "H200 (compute capability 9.0)")
    monkeypatch.setattr(info, "_nvvm_version", lambda: "2.0")
    found = info.environment_info()
    assert (found.gpu, found.nvvm) == ("H200 (compute capability 9.0)", "found, NVVM IR version 2.0")
    assert info.check("NVVM", info.COMPILE, info._nvvm_loads, "").detail == "loads, version 2.0"

    def no_driver():
        raise info.Missing("no CUDA driver found")

    monkeypatch.setattr(info, "_cuda_device", no_driver)
    assert info.environment_info().gpu == "none found (kernels launch on the cpu target)"
    monkeypatch.setenv("GPUAD_TARGET", "gpu")
    assert "GPUAD_TARGET='gpu' is not a gpuad target" in info.environment_info().target
