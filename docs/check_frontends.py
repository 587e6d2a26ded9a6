"""Check the live compilation widget in JupyterLab 4 and Notebook 7 with a real kernel.

Not part of CI (it needs a browser). Run where Debian's chromium and the
notebook extra are installed, plus `pip install playwright` (its browser
download is not needed: the system chromium is used):

    jupyter lab --no-browser --port=8899 --IdentityProvider.token=abc &   # and/or
    jupyter notebook --no-browser --port=8898 --IdentityProvider.token=abc &
    python docs/check_frontends.py lab http://127.0.0.1:8899 abc shot.png
    python docs/check_frontends.py notebook http://127.0.0.1:8898 abc shot.png
    python docs/check_frontends.py readme http://127.0.0.1:8899 abc shot.png
    python docs/check_frontends.py readme-notebook http://127.0.0.1:8898 abc shot.png

It writes a notebook that displays `CompilationView(..., widget=True)`, runs
the cell in the browser, and checks that every stage tab is there. `readme`
instead makes a notebook of the README's ```ipython blocks (what a new user
types: `%load_ext gpuad`, then a `%%gpukernel` cell), runs them in JupyterLab
(`readme-notebook`: in Notebook 7) and checks that the compilation view and the passing gradcheck appear.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

STAGES = ["Source", "Overlays", "Deferred jobs", "Derivative source", "IR before link",
          "IR after link", "Link diff", "PTX", "Timings"]
CELL = ("import os\nos.environ['GPUAD_TARGET'] = 'cpu'\nimport numpy as np\n"
        "from gpuad.examples import grad_f\nfrom gpuad.notebook import CompilationView\n"
        "xs = np.linspace(0, 1, 8)\nCompilationView(grad_f.compile(xs, xs, xs), widget=True)")


def write_notebook(path: Path, sources: list[str] = (CELL,)) -> None:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{k}", "metadata": {}, "outputs": [],
              "source": source} for k, source in enumerate(sources, start=1)]
    spec = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": spec},
                                "nbformat": 4, "nbformat_minor": 5}))


def open_notebook(p, url: str, panel: str, height: int):
    """The system chromium showing the notebook at `url`, its kernel started: (browser, page)."""
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(url)
    page.wait_for_selector(f"{panel}.jp-Cell", timeout=60000)
    page.wait_for_timeout(4000)  # the kernel starts
    return browser, page


def readme_cells() -> list[str]:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return [block.strip("\n") for block in re.findall(r"```ipython\n(.*?)```", readme, re.S)]


def check_readme(frontend: str, base: str, token: str, screenshot: str) -> list[str]:
    """Run the README's notebook cells in JupyterLab or Notebook 7; what a new user would miss."""
    if frontend == "readme-notebook":
        url, panel = f"{base}/notebooks/readme_check.ipynb?token={token}", ""
    else:
        url = f"{base}/lab/workspaces/readme/tree/readme_check.ipynb?reset&token={token}"
        panel = ".jp-NotebookPanel:not(.lm-mod-hidden) "
    with sync_playwright() as p:
        browser, page = open_notebook(p, url, panel, height=1400)
        for k in range(len(readme_cells())):
            page.locator(f"{panel}.jp-Cell .jp-InputArea-editor").nth(k).click()
            page.keyboard.press("Shift+Enter")
            page.wait_for_timeout(1000)
        page.wait_for_selector(f"{panel}.jp-OutputArea-output:has-text('gradcheck')", timeout=180000)
        page.wait_for_timeout(3000)
        text = page.locator(f"{panel}.jp-OutputArea").all_inner_texts()
        page.screenshot(path=screenshot, full_page=True)
        browser.close()
    shown = "\n".join(text)
    wanted = {"the compilation view": "gpuad kernel grad_g", "a passing gradcheck": "PASSED"}
    missing = [what for what, words in wanted.items() if words not in shown]
    if "Error" in shown or "Traceback" in shown:
        missing.append(f"a run without errors (the outputs say: {shown[:500]!r})")
    return missing


def check(frontend: str, base: str, token: str, screenshot: str) -> list[str]:
    if frontend == "lab":
        url, panel = f"{base}/lab/workspaces/check/tree/widget_check.ipynb?reset&token={token}", \
            ".jp-NotebookPanel:not(.lm-mod-hidden) "
    else:
        url, panel = f"{base}/notebooks/widget_check.ipynb?token={token}", ""
    with sync_playwright() as p:
        browser, page = open_notebook(p, url, panel, height=1000)
        page.click(f"{panel}.jp-Cell .jp-InputArea-editor")
        page.keyboard.press("Shift+Enter")
        page.wait_for_selector(".widget-tab", timeout=90000)
        labels = page.locator(".lm-TabBar-tabLabel").all_inner_texts()
        page.screenshot(path=screenshot)
        browser.close()
    return [s for s in STAGES if s not in labels]


if __name__ == "__main__":
    frontend, base, token, shot = sys.argv[1:5]
    if frontend.startswith("readme"):
        write_notebook(Path("readme_check.ipynb"), readme_cells())  # in the server's root directory
        missing = check_readme(frontend, base, token, shot)
    else:
        write_notebook(Path("widget_check.ipynb"))
        missing = check(frontend, base, token, shot)
    print("all present" if not missing else f"missing: {missing}")
    sys.exit(1 if missing else 0)
