"""The compilation viewer in a real browser: JupyterLab 4 (and Notebook 7) open a saved notebook.

No cell runs: the notebook's output is what `%%gpukernel` or a `CompilationView` saves,
and the committed prebuilt extension (extension/labextension) must draw it. Needs
JupyterLab, Playwright's Python package and a Chromium (Debian's `chromium` package
is used as it is; Playwright's own browser download is not needed). Without them the
tests are skipped, saying what is missing. In CI (.ci/run, Debian):

    apt-get install -y chromium && .venv/bin/pip install playwright jupyterlab

GPUAD_CHROMIUM names another Chromium binary; GPUAD_SCREENSHOT_DIR keeps the
screenshots (docs/extension-jupyterlab.png is one of them).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "extension" / "labextension"
TOKEN = "gpuad-test"
TABS = ["Source", "Map", "Overlays", "Jobs", "Derivative source", "IR before link", "IR after link",
        "Link diff", "PTX"]


def chromium() -> str | None:
    candidates = [os.environ.get("GPUAD_CHROMIUM"), shutil.which("chromium"),
                  shutil.which("chromium-browser"), shutil.which("google-chrome")]
    return next((c for c in candidates if c and Path(c).exists()), None)


def missing() -> str | None:
    for module, what in (("playwright", "pip install playwright"), ("jupyterlab", "pip install jupyterlab")):
        if importlib.util.find_spec(module) is None:
            return f"needs the {module} Python package ({what})"
    if chromium() is None:
        return "needs a Chromium binary (apt-get install chromium, or set GPUAD_CHROMIUM)"
    return None


pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


def saved_notebook(path: Path) -> dict:
    """A notebook whose one output is a compilation's display bundle, as Jupyter saves it."""
    os.environ["GPUAD_TARGET"] = "cpu"
    from gpuad.examples import grad_f
    from gpuad.notebook.views import CompilationView

    xs = np.linspace(0.0, 1.0, 8)
    bundle = CompilationView(grad_f.compile(xs, xs, xs))._repr_mimebundle_()
    output = {"output_type": "display_data", "data": json.loads(json.dumps(bundle)), "metadata": {}}
    cell = {"cell_type": "code", "execution_count": 1, "id": "c1", "metadata": {},
            "source": "CompilationView(grad_f.compile(xs, xs, xs))", "outputs": [output]}
    spec = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    path.write_text(json.dumps({"cells": [cell], "metadata": {"kernelspec": spec}, "nbformat": 4,
                                "nbformat_minor": 5}))
    return bundle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """JupyterLab on 127.0.0.1, its settings in a temporary directory, the committed bundle as extension."""
    home = tmp_path_factory.mktemp("lab")
    root = home / "notebooks"
    root.mkdir()
    bundle = saved_notebook(root / "saved.ipynb")
    extensions = home / "labextensions"
    extensions.mkdir()
    (extensions / "gpuad-jupyterlab").symlink_to(BUILT, target_is_directory=True)
    settings = home / "settings"
    # No "get notified about Jupyter news?" toast over the screenshots.
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text('{"fetchNews": "false"}')
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    port = free_port()
    log = home / "jupyterlab.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
         f"--LabApp.extra_labextensions_path={extensions}",
         f"--JupyterNotebookApp.extra_labextensions_path={extensions}", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, process, log)
        yield {"base": base, "bundle": bundle, "settings": settings, "root": root}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_until_up(base: str, process: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("jupyter lab did not start")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield b
        b.close()


def screenshot_dir(tmp_path: Path) -> Path:
    return Path(os.environ.get("GPUAD_SCREENSHOT_DIR", tmp_path))


def open_viewer(browser, url: str):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.goto(url)
    page.wait_for_selector(".gpuad-viewer .gpuad-tab", timeout=90000)
    return page


def test_saved_notebook_shows_the_viewer_in_jupyterlab(server, browser, tmp_path):
    page = open_viewer(browser, f"{server['base']}/lab/tree/saved.ipynb?token={TOKEN}")
    viewer = page.locator(".gpuad-viewer")
    assert viewer.count() == 1
    assert page.locator("text=model not found").count() == 0
    assert page.locator(".gpuad-tab").all_inner_texts() == TABS
    assert "gpuad kernel" in viewer.locator(".gpuad-header").inner_text()
    assert "total" in viewer.locator(".gpuad-timings").inner_text()

    # Source: the kernel and the function it differentiates.
    source = viewer.locator(".gpuad-stage-source").inner_text()
    assert "def grad_f(" in source and "differentiated" in source and "def f(" in source

    # IR after link: functions by readable name, the mangled one in the title.
    viewer.locator(".gpuad-tab", has_text="IR after link").click()
    titles = viewer.locator(".gpuad-stage-ir-after summary .gpuad-sym")
    readable = titles.locator(".gpuad-sym-readable").all_inner_texts()
    assert any("grad_f" in name and not name.startswith("_ZN") for name in readable), readable
    assert all(t.startswith("_ZN") for t in titles.evaluate_all("els => els.map(e => e.title)"))

    # Link diff: side by side, each half the cell, marker before and linked function after.
    viewer.locator(".gpuad-tab", has_text="Link diff").click()
    diff = viewer.locator(".gpuad-stage-diff")
    marker = diff.locator(".gpuad-diff-before .gpuad-mark-marker")
    assert marker.count() >= 1 and "gpuad.deferred_codegen" in marker.first.inner_text()
    linked = diff.locator(".gpuad-diff-after .gpuad-mark-linked")
    assert linked.count() >= 1 and linked.first.locator(".gpuad-text").inner_text().startswith("define")
    assert "<dynamic>.reverse_f" in linked.first.inner_text()  # the linked function, by readable name
    before, after = (diff.locator(f".gpuad-diff-{side}").bounding_box() for side in ("before", "after"))
    output = page.locator(".jp-OutputArea-output").first.bounding_box()
    assert before["x"] + before["width"] <= after["x"]
    assert after["x"] + after["width"] <= output["x"] + output["width"] + 1
    assert abs(before["y"] - after["y"]) < 1  # side by side, not one under the other
    page.screenshot(path=str(screenshot_dir(tmp_path) / "extension-jupyterlab.png"), full_page=True)
    # The two sides scroll together.
    diff.locator("input[type=checkbox]").check()  # all lines: tall enough to scroll
    scrolled = page.evaluate("""() => {
        const [a, b] = document.querySelectorAll('.gpuad-stage-diff .gpuad-diff-pane');
        a.scrollTop = 120;
        return new Promise(r => setTimeout(() => r([a.scrollTop, b.scrollTop]), 300)); }""")
    assert scrolled[0] > 0 and scrolled[0] == scrolled[1]

    viewer.locator(".gpuad-tab", has_text="PTX").click()
    height = viewer.locator(".gpuad-stage-ptx .gpuad-scroll").first.bounding_box()["height"]
    assert height < 900  # bounded: the PTX scrolls inside its own box
    page.screenshot(path=str(screenshot_dir(tmp_path) / "extension-jupyterlab-ptx.png"), full_page=True)
    page.close()


def highlighted(viewer, stage: str) -> list[str]:
    """The text of the lines highlighted as linked in one tab (opening the tab)."""
    viewer.locator(f".gpuad-tab[data-stage={stage}]").click()
    return viewer.locator(f".gpuad-stage-{stage} .gpuad-line.gpuad-hl .gpuad-text").all_inner_texts()


def test_clicking_a_source_line_highlights_its_ir_and_ptx_lines_and_the_reverse(server, browser, tmp_path):
    """Source ↔ IR ↔ PTX links from the record's line map (gpuad/compiler/lineinfo.py), in the
    saved notebook: no kernel runs."""
    page = open_viewer(browser, f"{server['base']}/lab/tree/saved.ipynb?token={TOKEN}")
    viewer = page.locator(".gpuad-viewer")
    source = viewer.locator(".gpuad-stage-source")
    kernel_store = source.locator(".gpuad-line", has_text="dxs[i] = dx")
    kernel_store.click()
    assert "gpuad-hl-origin" in kernel_store.get_attribute("class")
    assert re.search(r"PTX: [1-9]\d* lines", viewer.locator(".gpuad-linkinfo").inner_text())

    ir = highlighted(viewer, "ir-after")
    assert ir and any("store double" in line for line in ir), ir
    assert not any("deferred_codegen" in line for line in highlighted(viewer, "ir-before"))
    ptx = highlighted(viewer, "ptx")
    assert ptx and any("st.global.f64" in line for line in ptx), ptx
    page.screenshot(path=str(screenshot_dir(tmp_path) / "extension-jupyterlab-lines.png"), full_page=True)

    # A line of the differentiated function: the derivative lines generated from it, and their PTX.
    viewer.locator(".gpuad-tab[data-stage=source]").click()
    source.locator(".gpuad-line", has_text="return math.sin(x) * y").click()
    assert any(line.lstrip().startswith("# line ") for line in highlighted(viewer, "derivatives"))
    assert highlighted(viewer, "ptx")

    # The reverse: one of those PTX lines (the derivative, inlined at the autodiff call) lights up
    # the kernel's autodiff line and the line of f it differentiates.
    viewer.locator(".gpuad-stage-ptx .gpuad-line.gpuad-hl").first.click()
    lit_source = highlighted(viewer, "source")
    assert any("autodiff(Reverse, f" in line for line in lit_source), lit_source
    assert any("return math.sin(x) * y" in line for line in lit_source), lit_source
    assert not any("dxs[i] = dx" in line for line in lit_source), lit_source
    assert highlighted(viewer, "derivatives")
    page.close()


MAP_COLUMNS = ("source", "ir-after", "ptx")
# Where a test clicks a line: its start, as a reader does (a row is as wide as its column's longest
# line, and a click at its middle would first scroll the column sideways).
NEAR_START = {"x": 40, "y": 5}


def map_column(viewer, stage: str):
    """The scroll box of one of the Map tab's columns."""
    return viewer.locator(f".gpuad-stage-map .gpuad-map-{stage} .gpuad-map-box")


def lit_lines(column) -> list[str]:
    """The text of a Map column's highlighted lines (the first one first)."""
    return column.locator(".gpuad-line.gpuad-hl .gpuad-text").all_inner_texts()


def lit_in_view(column) -> list[str]:
    """The text of a Map column's highlighted lines that are inside its scroll box."""
    return column.evaluate("""box => {
        const view = box.getBoundingClientRect();
        return Array.from(box.querySelectorAll('.gpuad-line.gpuad-hl')).filter(row => {
            const r = row.getBoundingClientRect();
            return r.height > 0 && r.top >= view.top - 1 && r.bottom <= view.bottom + 1;
        }).map(row => row.querySelector('.gpuad-text').textContent); }""")


def test_map_shows_source_ir_and_ptx_side_by_side_and_scrolls_linked_lines_to_view(server, browser, tmp_path):
    """The Map tab (extension/src/viewer.ts sourceMap): a click in one column lights the linked lines
    in the others and scrolls them into their own boxes, never moving the column clicked."""
    page = open_viewer(browser, f"{server['base']}/lab/tree/saved.ipynb?token={TOKEN}")
    viewer = page.locator(".gpuad-viewer")
    viewer.locator(".gpuad-tab[data-stage=map]").click()
    columns = [map_column(viewer, stage) for stage in MAP_COLUMNS]
    boxes = [c.bounding_box() for c in columns]
    output = page.locator(".jp-OutputArea-output").first.bounding_box()
    for left, right in zip(boxes, boxes[1:]):
        assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 1  # side by side
    assert boxes[-1]["x"] + boxes[-1]["width"] <= output["x"] + output["width"] + 1
    assert all(100 < box["height"] < 700 for box in boxes), boxes  # bounded, each its own scrollbar
    source = columns[0].inner_text()
    assert "def grad_f(" in source and "def f(" in source and "# line " in source  # kernel, f, derivative
    readable = viewer.locator(".gpuad-map-ir-after summary .gpuad-sym-readable").all_inner_texts()
    assert any("grad_f" in name and not name.startswith("_ZN") for name in readable), readable

    # Source -> IR and PTX: the linked lines light up and their columns scroll to them.
    ir, ptx = columns[1], columns[2]
    assert not lit_in_view(ir) and not lit_in_view(ptx)
    kernel_store = columns[0].locator(".gpuad-line", has_text="dxs[i] = dx")
    source_top = columns[0].evaluate("box => box.scrollTop")
    kernel_store.click(position=NEAR_START)
    page.wait_for_timeout(300)  # the folds the click opened are scrolled to on the next frame
    assert "gpuad-hl-origin" in kernel_store.get_attribute("class")
    assert any("store double" in line for line in lit_lines(ir)), lit_lines(ir)
    assert any("st.global.f64" in line for line in lit_lines(ptx)), lit_lines(ptx)
    for column in (ir, ptx):  # the first linked line is in the column's box
        assert lit_in_view(column)[:1] == lit_lines(column)[:1]
    assert ir.evaluate("box => box.scrollTop") > 0  # it was out of view: the column scrolled to it
    assert columns[0].evaluate("box => box.scrollTop") == source_top  # the clicked column stays put
    page.screenshot(path=str(screenshot_dir(tmp_path) / "extension-jupyterlab-map.png"), full_page=True)

    # PTX -> source: with the source scrolled away (the boxes made short: this kernel's source
    # fits in the usual height), a click on a lit PTX line brings the kernel's store line back into
    # view (lit), and the PTX column does not move.
    page.mouse.move(100, 600)  # off the viewer: what it lights is the click's lines
    viewer.evaluate("v => v.style.setProperty('--gpuad-code-height', '10em')")
    columns[0].evaluate("box => { box.scrollTop = box.scrollHeight; }")
    assert not any("dxs[i] = dx" in line for line in lit_in_view(columns[0]))
    store = ptx.locator(".gpuad-line.gpuad-hl", has_text="st.global.f64").first
    store.evaluate("row => { const box = row.closest('.gpuad-map-box');"
                   " box.scrollTop += row.getBoundingClientRect().top - box.getBoundingClientRect().top; }")
    ptx_top = ptx.evaluate("box => box.scrollTop")
    store.click(position=NEAR_START)
    assert "gpuad-hl-origin" in store.get_attribute("class")
    assert any("dxs[i] = dx" in line for line in lit_in_view(columns[0])), lit_in_view(columns[0])
    assert any("store double" in line for line in lit_lines(ir)) and lit_in_view(ir)
    assert ptx.evaluate("box => box.scrollTop") == ptx_top

    # Hovering never scrolls a linked line that is already in view: the columns keep their place.
    tops = [c.evaluate("box => box.scrollTop") for c in columns]
    columns[0].locator(".gpuad-line", has_text="dxs[i] = dx").hover(position=NEAR_START)
    assert [c.evaluate("box => box.scrollTop") for c in columns] == tops

    # A column can be hidden: the others share the width.
    viewer.locator(".gpuad-map-bar label", has_text="PTX").locator("input").uncheck()
    assert ptx.is_hidden() and ir.bounding_box()["width"] > boxes[1]["width"] * 1.3
    page.close()


def test_link_diff_sides_are_linked_to_the_source(server, browser):
    page = open_viewer(browser, f"{server['base']}/lab/tree/saved.ipynb?token={TOKEN}")
    viewer = page.locator(".gpuad-viewer")
    viewer.locator(".gpuad-stage-source .gpuad-line", has_text="dxs[i] = dx").click()
    viewer.locator(".gpuad-tab[data-stage=diff]").click()
    diff = viewer.locator(".gpuad-stage-diff")
    diff.locator("input[type=checkbox]").check()  # all lines: the kernel's store is an unchanged line
    after = diff.locator(".gpuad-diff-after .gpuad-line.gpuad-hl .gpuad-text").all_inner_texts()
    assert any("store double" in line for line in after), after
    # ... and the reverse: a line of the right side lights the kernel's line.
    diff.locator(".gpuad-diff-after .gpuad-line.gpuad-hl", has_text="store double").first.click()
    assert "PTX: " in viewer.locator(".gpuad-linkinfo").inner_text()
    viewer.locator(".gpuad-tab[data-stage=source]").click()
    lit = viewer.locator(".gpuad-stage-source .gpuad-line.gpuad-hl .gpuad-text").all_inner_texts()
    assert any("dxs[i] = dx" in line for line in lit), lit
    page.close()


def big_module_notebook(path: Path, n_lines: int = 20000) -> int:
    """A saved notebook whose compilation's IR after link is one function of `n_lines` lines,
    each run of 5 mapped to one of the kernel's 5 first lines; returns how many its def line has."""
    from gpuad.examples import grad_f

    data = grad_f.compile(*[np.linspace(0.0, 1.0, 8)] * 3).to_dict()  # unpacked: the viewer takes both
    kernel_file, first = data["line_map"]["sources"]["kernel"]
    body = [f'  %".{k}" = add i64 {k}, 0' for k in range(n_lines - 2)]
    data["ir_after_link"] = "\n".join(['define void @"big"() {', *body, "}"])
    # The first half's runs come from the kernel's first 5 lines (2,000 IR lines each), the second
    # half's each from a line of its own.
    data["line_map"]["ir_after_link"] = [
        [k, min(k + 4, n_lines - 1), kernel_file, first + 1 + (k // 5) % 5 if k < n_lines // 2 else first + k]
        for k in range(2, n_lines, 5)]
    data["stages"] = ["source", "ir-after"]
    output = {"output_type": "display_data", "metadata": {},
              "data": {"text/plain": "big", "application/vnd.gpuad.compilation+json": data}}
    cell = {"cell_type": "code", "execution_count": 1, "id": "c1", "metadata": {}, "source": "",
            "outputs": [output]}
    spec = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    path.write_text(json.dumps({"cells": [cell], "metadata": {"kernelspec": spec}, "nbformat": 4,
                                "nbformat_minor": 5}))
    return sum(last - first_line + 1 for first_line, last, _, line in data["line_map"]["ir_after_link"]
               if line == first + 1)


def test_line_links_stay_fast_on_a_module_of_20000_ir_lines(server, browser):
    per_line = big_module_notebook(server["root"] / "big.ipynb")
    # A workspace of its own: the default one reopens the other tests' notebook beside it.
    page = open_viewer(browser, f"{server['base']}/lab/workspaces/big/tree/big.ipynb?reset&token={TOKEN}")
    viewer = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .gpuad-viewer")
    assert viewer.count() == 1
    viewer.locator(".gpuad-stage-source .gpuad-line").nth(1).click()  # the kernel's def line
    lit = viewer.locator(".gpuad-stage-ir-after .gpuad-line.gpuad-hl")
    assert len(highlighted(viewer, "ir-after")) == per_line  # the folded function opened by the click
    viewer.locator(".gpuad-tab[data-stage=source]").click()
    # Hovering source lines, each lighting 2,000 IR lines: the time per hover, in the page.
    seconds = page.evaluate("""() => {
        const rows = document.querySelectorAll('.gpuad-stage-source .gpuad-code')[0].children;
        const hover = row => row.querySelector('.gpuad-text').dispatchEvent(
            new MouseEvent('mouseover', {bubbles: true}));
        const start = performance.now();
        for (let k = 0; k < 40; k++) {
            hover(rows[1 + k % 5]);
        }
        return (performance.now() - start) / 40 / 1000; }""")
    assert seconds < 0.2, seconds
    # The reverse: hovering IR lines lights up the lines of their source line, no scan of the module.
    viewer.locator(".gpuad-tab[data-stage=ir-after]").click()
    seconds = page.evaluate("""() => {
        const rows = document.querySelector('.gpuad-stage-ir-after .gpuad-code').children;
        const hover = row => row.querySelector('.gpuad-text').dispatchEvent(
            new MouseEvent('mouseover', {bubbles: true}));
        const start = performance.now();
        for (let k = 0; k < 200; k++) {
            hover(rows[rows.length / 2 + 47 * k]);
        }
        return (performance.now() - start) / 200 / 1000; }""")
    assert seconds < 0.01, seconds  # 5 lines lit each time: no pass over the module's 20,000
    assert lit.count() > 0
    # The Map tab: the same hovers in its source column, the IR column beside it on screen
    # (each hover also looks whether the IR column shows a lit line, by bisection).
    viewer.locator(".gpuad-tab[data-stage=map]").click()
    seconds = page.evaluate("""() => {
        const rows = document.querySelector('.gpuad-stage-map .gpuad-map-source .gpuad-code').children;
        const hover = row => row.querySelector('.gpuad-text').dispatchEvent(
            new MouseEvent('mouseover', {bubbles: true}));
        const start = performance.now();
        for (let k = 0; k < 40; k++) {
            hover(rows[1 + k % 5]);
        }
        return (performance.now() - start) / 40 / 1000; }""")
    assert seconds < 0.2, seconds
    assert lit_in_view(map_column(viewer, "ir-after"))  # the last hover's lines, scrolled to
    page.close()


def luminance(rgb: str) -> float:
    channels = [int(c) / 255 for c in rgb[rgb.index("(") + 1:rgb.index(")")].split(",")[:3]]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def test_viewer_follows_the_dark_theme(server, browser, tmp_path):
    themes = server["settings"] / "@jupyterlab" / "apputils-extension"
    themes.mkdir(parents=True, exist_ok=True)
    (themes / "themes.jupyterlab-settings").write_text('{"theme": "JupyterLab Dark"}')
    try:
        page = open_viewer(browser, f"{server['base']}/lab/tree/saved.ipynb?token={TOKEN}")
        page.wait_for_function("document.body.dataset.jpThemeLight === 'false'", timeout=30000)
        page.wait_for_timeout(500)
        colours = page.evaluate("""() => {
            const v = document.querySelector('.gpuad-viewer');
            const area = v.closest('.jp-Notebook') || document.body;
            return [getComputedStyle(v.querySelector('.gpuad-line .gpuad-text') || v).color,
                    getComputedStyle(area).backgroundColor]; }""")
        text, background = (luminance(c) for c in colours)
        contrast = (max(text, background) + 0.05) / (min(text, background) + 0.05)
        assert contrast >= 4.5, colours
        page.screenshot(path=str(screenshot_dir(tmp_path) / "extension-jupyterlab-dark.png"), full_page=True)
        map_reads_in_the_dark(page, tmp_path)
        page.close()
    finally:
        (themes / "themes.jupyterlab-settings").unlink()


def contrast_ratio(a: float, b: float) -> float:
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


def over(rgba: str, background: str) -> str:
    """The colour `rgba` (CSS, maybe translucent) laid over the opaque `background`."""
    fg = [float(c) for c in rgba[rgba.index("(") + 1:rgba.index(")")].split(",")]
    bg = [float(c) for c in background[background.index("(") + 1:background.index(")")].split(",")[:3]]
    alpha = fg[3] if len(fg) == 4 else 1.0
    return "rgb({})".format(",".join(str(round(alpha * f + (1 - alpha) * b)) for f, b in zip(fg, bg)))


def map_reads_in_the_dark(page, tmp_path: Path) -> None:
    """The Map tab in the dark theme: its headings, its code and its lit lines read on the notebook."""
    viewer = page.locator(".gpuad-viewer")
    viewer.locator(".gpuad-tab[data-stage=map]").click()
    map_column(viewer, "source").locator(".gpuad-line", has_text="dxs[i] = dx").click(position=NEAR_START)
    page.mouse.move(100, 600)
    colours = page.evaluate("""() => {
        const map = document.querySelector('.gpuad-stage-map');
        const style = sel => getComputedStyle(map.querySelector(sel));
        return {area: getComputedStyle(map.closest('.jp-Notebook')).backgroundColor,
                box: style('.gpuad-map-box').backgroundColor,
                heading: style('.gpuad-map-heading').color,
                text: style('.gpuad-map-box .gpuad-line .gpuad-text').color,
                lit: style('.gpuad-map-ir-after .gpuad-line.gpuad-hl').backgroundColor,
                litText: style('.gpuad-map-ir-after .gpuad-line.gpuad-hl .gpuad-text').color,
                origin: style('.gpuad-line.gpuad-hl-origin').backgroundColor}; }""")
    area = colours["area"]
    box = over(colours["box"], area) if "rgba(0, 0, 0, 0)" not in colours["box"] else area
    assert luminance(box) < 0.1, colours  # dark, as the notebook around it
    for fg, bg in ((colours["heading"], box), (colours["text"], box),
                   (colours["litText"], over(colours["lit"], box)),
                   (colours["text"], over(colours["origin"], box))):
        assert contrast_ratio(luminance(fg), luminance(bg)) >= 4.5, (fg, bg, colours)
    page.screenshot(path=str(screenshot_dir(tmp_path) / "extension-jupyterlab-map-dark.png"), full_page=True)


@pytest.mark.skipif(importlib.util.find_spec("notebook") is None,
                    reason="needs Notebook 7 (pip install notebook)")
def test_saved_notebook_shows_the_viewer_in_notebook_7(server, browser, tmp_path):
    page = open_viewer(browser, f"{server['base']}/notebooks/saved.ipynb?token={TOKEN}")
    assert page.locator(".gpuad-tab").all_inner_texts() == TABS
    page.locator(".gpuad-tab", has_text="Link diff").click()
    assert page.locator(".gpuad-diff-before .gpuad-mark-marker").count() >= 1
    page.screenshot(path=str(screenshot_dir(tmp_path) / "extension-notebook7.png"), full_page=True)
    page.close()


def shut_down_kernels(base: str) -> None:
    sessions = json.load(urllib.request.urlopen(f"{base}/api/sessions?token={TOKEN}", timeout=10))
    for session in sessions:
        request = urllib.request.Request(f"{base}/api/sessions/{session['id']}?token={TOKEN}",
                                         method="DELETE")
        urllib.request.urlopen(request, timeout=30)


LIVE_CELLS = [
    "import os\nos.environ['GPUAD_TARGET'] = 'cpu'\n%load_ext gpuad\nimport math\nimport numpy as np\n"
    "import gpuad\nfrom gpuad import autodiff, Reverse, Active\n"
    "xs = np.linspace(-2.0, 2.0, 64)\nys = np.full(64, 1.5)\ndxs = np.zeros(64)",
    '%%gpukernel --args "xs, ys, dxs"\n\ndef g(x, y):\n    return math.exp(-x * x) * y\n\n'
    "@gpuad.kernel\ndef grad_g(xs, ys, dxs):\n    i = gpuad.thread_index()\n    if i < xs.shape[0]:\n"
    "        (dx, dy), = autodiff(Reverse, g, Active(xs[i]), Active(ys[i]))\n        dxs[i] = dx",
]


def test_live_gpukernel_cell_draws_the_viewer_and_still_does_after_save_and_reopen(server, browser):
    # The saved-notebook bug: a widget output read "Error displaying widget: model not found" when
    # the notebook was reopened. The kernel is the test run's Python (the python3 kernelspec).
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{k}", "metadata": {}, "outputs": [],
              "source": source} for k, source in enumerate(LIVE_CELLS)]
    spec = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    (server["root"] / "live.ipynb").write_text(json.dumps(
        {"cells": cells, "metadata": {"kernelspec": spec}, "nbformat": 4, "nbformat_minor": 5}))
    shut_down_kernels(server["base"])  # the earlier tests' kernels: this one needs the CPU
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    url = f"{server['base']}/lab/workspaces/live/tree/live.ipynb?reset&token={TOKEN}"
    page.goto(url)
    panel = ".jp-NotebookPanel:not(.lm-mod-hidden) "
    page.wait_for_selector(f"{panel}.jp-Cell", timeout=60000)
    page.wait_for_selector("text=| Idle", timeout=90000)  # the kernel is up: no request is lost
    for k in range(len(LIVE_CELLS)):
        page.locator(f"{panel}.jp-Cell .jp-InputArea-editor").nth(k).click()
        page.keyboard.press("Shift+Enter")
        prompt = page.locator(f"{panel}.jp-Cell .jp-InputPrompt").nth(k)
        try:
            prompt.filter(has_text=re.compile(r"\[\d+\]")).wait_for(timeout=300000)
        except Exception:
            page.screenshot(path="/tmp/live_fail.png")
            raise
    try:
        page.wait_for_selector(f"{panel}.gpuad-viewer .gpuad-tab", timeout=180000)
    except Exception:
        outputs = page.locator(f"{panel}.jp-OutputArea").all_inner_texts()
        page.screenshot(path="/tmp/live_fail.png")
        raise AssertionError(f"no viewer; the outputs say: {outputs}") from None
    assert "grad_g" in page.locator(f"{panel}.gpuad-viewer .gpuad-header").inner_text()
    assert "differentiated" in page.locator(f"{panel}.gpuad-stage-source").inner_text()
    page.keyboard.press("Control+s")
    page.wait_for_timeout(2000)
    page.close()

    saved = json.loads((server["root"] / "live.ipynb").read_text())
    outputs = [o for cell in saved["cells"] for o in cell["outputs"] if "data" in o]
    assert any("application/vnd.gpuad.compilation+json" in o["data"] for o in outputs)
    reopened = open_viewer(browser, url)
    assert reopened.locator(".gpuad-tab").all_inner_texts() == TABS
    assert reopened.locator("text=model not found").count() == 0
    reopened.close()
