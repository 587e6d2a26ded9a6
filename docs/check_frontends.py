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

    python docs/check_frontends.py static http://127.0.0.1:8899 abc shot.png     # also static-dark,
    python docs/check_frontends.py static-notebook http://127.0.0.1:8898 abc shot.png  # Notebook 7

`static` displays the static text/html view (what Jupyter shows without the
extension, and nbconvert) of the link diff, unified and side by side, the PTX,
`%gpuad_info` and a gradcheck, and measures in the browser what Jupyter's CSS
used to break: line-number width, `white-space: pre`, indentation, the two
halves of the side-by-side diff within the view, titles within the panel and
the info table's contrast (`static-dark`: in JupyterLab's dark theme). Its
`shot-page.png` (JupyterLab, file browser hidden) is docs/link-diff.png.

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


STATIC_CELL = (
    "import os\nos.environ['GPUAD_TARGET'] = 'cpu'\nimport numpy as np\n"
    "from IPython.display import HTML, display\n"
    "from gpuad.examples import grad_f\nfrom gpuad.notebook.views import CompilationView\n"
    "from gpuad.notebook.info import environment_info\nimport gpuad\n"
    "xs = np.linspace(0, 1, 8)\nrecord = grad_f.compile(xs, xs, xs)\n"
    "for layout in ('unified', 'side-by-side'):\n"
    "    display(HTML(CompilationView(record, show='diff', diff_layout=layout).to_html()))\n"
    "display(HTML(CompilationView(record, show='ptx,derivatives').to_html()))\n"
    "display(environment_info())\n"
    "from gpuad.examples import f\ndisplay(gpuad.gradcheck(f, 0.5, 2.0))"
)
# Measured in the browser: what Jupyter's CSS broke in the static view (all lengths in CSS pixels).
MEASURE = """() => {
  const box = e => e.getBoundingClientRect();
  const diffs = [...document.querySelectorAll('.gpuad-diff')];
  const unified = diffs.find(d => d.classList.contains('gpuad-diff-unified'));
  const sbs = diffs.find(d => d.classList.contains('gpuad-diff-side-by-side'));
  const number = unified.querySelector('g-ln');
  const lines = unified.querySelector('.gpuad-diff-lines');
  const old = sbs.querySelector('.gpuad-diff-old-side'), neu = sbs.querySelector('.gpuad-diff-new-side');
  const info = document.querySelector('.gpuad-info td');
  const summaries = [...document.querySelectorAll('.gpuad-view summary')];
  return {
    number_width: box(number).width, white_space: getComputedStyle(lines).whiteSpace,
    text_align: getComputedStyle(lines).textAlign,
    indent_kept: lines.textContent.includes('\\n  ') || lines.innerText.includes('\\n  '),
    old_width: box(old).width, new_width: box(neu).width, new_left: box(neu).left,
    new_right: box(neu).right, view_right: box(sbs).right, window_width: window.innerWidth,
    titles_overflowing: summaries.filter(s => s.scrollWidth > s.closest('.gpuad-view').clientWidth).length,
    info_colour: info && getComputedStyle(info).color,
    info_background: info && getComputedStyle(info).backgroundColor,
  };
}"""


def set_theme(base: str, token: str, theme: str) -> None:
    """JupyterLab's theme setting, through the server's settings API (Notebook 7 shares it)."""
    import urllib.request

    body = json.dumps({"raw": json.dumps({"theme": theme})}).encode()
    request = urllib.request.Request(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:themes",
                                     data=body, method="PUT",
                                     headers={"Authorization": f"token {token}",
                                              "Content-Type": "application/json"})
    urllib.request.urlopen(request).close()


def check_static(frontend: str, base: str, token: str, screenshot: str, dark: bool = False) -> list[str]:
    """The static text/html view (what Jupyter shows without the extension) laid out right."""
    if frontend == "static-notebook":
        url, panel = f"{base}/notebooks/static_check.ipynb?token={token}", ""
    else:
        url = f"{base}/lab/workspaces/static/tree/static_check.ipynb?reset&token={token}"
        panel = ".jp-NotebookPanel:not(.lm-mod-hidden) "
    if frontend != "static-notebook" or dark:
        set_theme(base, token, "JupyterLab Dark" if dark else "JupyterLab Light")
    with sync_playwright() as p:
        browser, page = open_notebook(p, url, panel, height=1000)
        page.click(f"{panel}.jp-Cell .jp-InputArea-editor")
        page.keyboard.press("Shift+Enter")
        page.wait_for_selector(".gpuad-diff-side-by-side", timeout=120000)
        page.wait_for_timeout(2000)
        found = page.evaluate(MEASURE)
        news = page.locator(".Toastify button:has-text('No'):visible")  # "notified about news?"
        if news.count():
            news.first.click()
        if frontend == "static":  # JupyterLab: the file browser away, the notebook the page's width
            page.keyboard.press("Escape")
            page.keyboard.press("Control+b")
            page.wait_for_timeout(500)
        page.locator(".gpuad-view").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(500)
        page.screenshot(path=screenshot.replace(".png", "-page.png"))
        page.locator(".gpuad-view").first.screenshot(path=screenshot)
        page.locator(".gpuad-view").nth(1).screenshot(path=screenshot.replace(".png", "-side-by-side.png"))
        page.locator(".gpuad-info").first.screenshot(path=screenshot.replace(".png", "-info.png"))
        ptx = page.locator(".gpuad-view").nth(2)
        ptx.locator("summary:has-text('gpuad.examples.grad_f')").first.click()  # a function, unfolded
        ptx.locator("summary:has-text('Derivative source')").first.click()
        ptx.screenshot(path=screenshot.replace(".png", "-ptx.png"))
        page.locator(".gpuad-gradcheck").first.screenshot(path=screenshot.replace(".png", "-gradcheck.png"))
        browser.close()
    print(found)
    problems = []
    if found["number_width"] > 80:
        problems.append(f"line numbers {found['number_width']:.0f} px wide")
    if (found["white_space"], found["text_align"]) != ("pre", "left"):
        problems.append(f"diff lines {found['white_space']}, {found['text_align']}")
    if not found["indent_kept"]:
        problems.append("indentation lost")
    if found["new_right"] > found["view_right"] + 1 or abs(found["old_width"] - found["new_width"]) > 2:
        problems.append(f"side-by-side halves {found['old_width']:.0f}/{found['new_width']:.0f} px, new side "
                        f"ends at {found['new_right']:.0f} past the view's {found['view_right']:.0f}")
    if found["titles_overflowing"]:
        problems.append(f"{found['titles_overflowing']} section titles overflow the panel")
    if found["info_colour"] == found["info_background"]:
        problems.append("info table text colour equals its background")
    return problems


if __name__ == "__main__":
    frontend, base, token, shot = sys.argv[1:5]
    if frontend.startswith("static"):
        write_notebook(Path("static_check.ipynb"), [STATIC_CELL])
        dark = frontend.endswith("-dark")
        missing = check_static(frontend.removesuffix("-dark"), base, token, shot, dark=dark)
    elif frontend.startswith("readme"):
        write_notebook(Path("readme_check.ipynb"), readme_cells())  # in the server's root directory
        missing = check_readme(frontend, base, token, shot)
    else:
        write_notebook(Path("widget_check.ipynb"))
        missing = check(frontend, base, token, shot)
    print("all present" if not missing else f"missing: {missing}")
    sys.exit(1 if missing else 0)
