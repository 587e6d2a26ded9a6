"""Regenerate the README's screenshots (docs/*.png) from the example kernel.

    GPUAD_TARGET=cpu python docs/make_screenshots.py

Needs headless Chromium (`apt-get install chromium`; override with CHROMIUM=...).
The compilation view is the static HTML `CompilationView(record).to_html()`
that saved notebooks show; the gradcheck figure is `report.savefig(...)`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GPUAD_TARGET", "cpu")

import numpy as np  # noqa: E402

import gpuad  # noqa: E402
from gpuad.examples import f, grad_f  # noqa: E402
from gpuad.notebook.views import CompilationView  # noqa: E402

DOCS = Path(__file__).resolve().parent
PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body style="margin: 16px; background: #ffffff; font-family: sans-serif">{body}</body></html>
"""


def chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    sys.exit("make_screenshots: no Chromium found (apt-get install chromium, or set CHROMIUM)")


def screenshot(html: str, png: Path, size: tuple[int, int], workdir: Path) -> None:
    page = workdir / (png.stem + ".html")
    page.write_text(PAGE.format(title=png.stem, body=html), encoding="utf-8")
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", page.as_uri()],
                   check=True, capture_output=True)
    print(f"wrote {png.relative_to(DOCS.parent)}")


def main() -> None:
    # Call sites are shown relative to the working directory: make it the repository's.
    os.chdir(DOCS.parent)
    n = 64
    xs, ys, dxs = np.linspace(-2.0, 2.0, n), np.linspace(0.5, 1.5, n), np.zeros(n)
    record = grad_f.compile(xs, ys, dxs)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # The view as a saved notebook shows it (header, one section per stage), with the
        # overlays, jobs and derivative sections unfolded as a reader would.
        overview = CompilationView(record).to_html()
        for stage in ("overlays", "jobs", "derivatives"):
            opening = f'<details class="gpuad-stage-{stage}"'
            overview = overview.replace(opening, opening + " open")
        screenshot(overview, DOCS / "compilation.png", (1400, 780), work)
    # docs/link-diff.png is taken inside JupyterLab, whose CSS is what the static view must withstand:
    # `python docs/check_frontends.py static http://127.0.0.1:8899 TOKEN shot.png` (shot-page.png).
    report = gpuad.gradcheck_kernel(grad_f, n, xs, ys, dxs, primal=f, wrt="xs", out="dxs")
    report.savefig(DOCS / "gradcheck.png", dpi=110)
    print(f"wrote docs/gradcheck.png ({report!r})")


if __name__ == "__main__":
    main()
