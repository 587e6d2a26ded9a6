"""The compilation display: static HTML, MIME bundle, widget (gpuad/notebook/views.py, render.py)."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest
from compiled_sample import adjoint_symbol, kernel_symbol, sample_record
from IPython.core.interactiveshell import InteractiveShell

from gpuad.notebook import palette
from gpuad.notebook.cells import register_cell
from gpuad.notebook.gradcheck_view import gradcheck_text
from gpuad.notebook.highlight import highlight, highlight_lines
from gpuad.notebook.names import Short, short_location, short_symbol
from gpuad.notebook.render import OPEN_MODULE_LINES
from gpuad.notebook.text import text_diff
from gpuad.notebook.views import (
    COMPILATION_MIMETYPE,
    STAGE_KEYS,
    WIDGET_MIMETYPE,
    CompilationView,
    parse_stages,
    plural,
    summary_line,
    unpack,
)

TITLES = ["Source", "Overlays", "Deferred jobs", "Derivative source", "IR before link", "IR after link",
          "Link diff", "PTX", "Timings"]


# The hand-picked stage times of the timing tests (a real compilation's vary from run to run).
TIMINGS = {"interpret": 0.0042, "differentiate": 0.0113, "lower": 0.2140, "link": 0.0031, "emit": 0.9310}


@pytest.fixture
def view():
    return CompilationView(sample_record(), widget=False)


def test_text_plain_is_the_records_short_summary(view):
    bundle = view._repr_mimebundle_()
    # No PTX size: it changes with numba and NVVM, and nbval compares this text.
    assert bundle["text/plain"] == ("gpuad kernel grad_f [cuda, sm_90]: 2 overlays, 1 deferred job, "
                                    "1 function linked")
    assert repr(view) == bundle["text/plain"]
    assert WIDGET_MIMETYPE not in bundle


def test_summary_counts_are_pluralised_and_a_missing_ptx_is_named():
    record = sample_record()
    several = replace(record, overlays=record.overlays[:1], jobs=record.jobs * 2, ptx="")
    assert summary_line(several) == ("gpuad kernel grad_f [cuda, sm_90]: 1 overlay, 2 deferred jobs, "
                                     "1 function linked, no PTX")
    assert plural(0, "deferred job") == "0 deferred jobs" and plural(1, "PTX line") == "1 PTX line"


def test_header_gives_the_ptx_line_count(view):
    lines = len(sample_record().ptx.splitlines())
    assert lines > 1
    assert f"2 overlays, 1 deferred job, 1 function linked, {lines} PTX lines</span>" in view.header_html()


def test_text_form_has_the_summary_the_chosen_stages_and_names_the_others():
    record = replace(sample_record(), timings=TIMINGS)
    text = CompilationView(record, show="jobs,timings").to_text()
    assert text.splitlines()[0] == (
        "gpuad kernel grad_f [cuda, sm_90] (array(float64, 1d, C), array(float64, 1d, C), "
        f"array(float64, 1d, C)): 2 overlays, 1 deferred job, 1 function linked, "
        f"{len(record.ptx.splitlines())} PTX lines")
    assert "\n── Deferred jobs ──\nid  function  " in text and "\n── Timings ──\nstage  " in text
    assert re.search(r"\ntotal +1\.16 s\n", text)  # 4.2 + 11.3 + 214 + 3.1 + 931 ms
    assert "── Overlays ──" not in text
    assert text.endswith(
        f"not shown: ir-before ({len(record.ir_before_link.splitlines())} lines), "
        f"ir-after ({len(record.ir_after_link.splitlines())} lines), "
        f"diff ({len(CompilationView(record).stage_text('diff').splitlines())} lines), "
        f"ptx ({len(record.ptx.splitlines())} lines); to print them, name them in --show "
        "(e.g. --show jobs,timings,ir-before,ir-after,diff,ptx)")


def test_text_diff_numbers_both_sides_and_notes_marker_and_linked_function(view):
    text = view.stage_text("diff")
    diff = view.diff
    assert text.startswith(f"{diff.deleted} lines removed, {diff.inserted} added; "
                           "functions linked: <dynamic>.reverse_f…\n")
    (marker,) = [line for line in text.splitlines() if "gpuad.deferred_codegen\"(i64 1)" in line]
    # sign, old number, (no new number), the IR line, the note
    number = next(k for k, line in enumerate(view.record.ir_before_link.splitlines(), 1)
                  if "@\"gpuad.deferred_codegen\"(i64 1)" in line)
    ir_line = view.record.ir_before_link.splitlines()[number - 1]
    assert marker == f"-{number:>6}{'':>6}  {ir_line}   <- deferred-codegen marker"
    # The linked function is noted once, on its define line, not on every line of its body.
    (linked,) = [line for line in text.splitlines() if line.endswith("<- linked function")]
    assert linked.startswith("+") and f'define internal i32 @"{adjoint_symbol()}"(' in linked
    assert re.search(r"⋯ \d+ unchanged lines ⋯", text)


def test_text_diff_around_markers_keeps_the_marker_hunks_of_the_full_diff(view):
    full = view.stage_text("diff").splitlines()
    around = text_diff(view.diff, only_markers=True).splitlines()
    assert around[0] == full[0]
    shown = [line for line in around[1:] if line != "   ⋯"]
    assert set(shown) <= set(full) and len(shown) < len(full) - 1
    markers = [line for line in full if line.endswith("<- deferred-codegen marker")]
    assert len(markers) == 2 and all(m in shown for m in markers)
    assert not [line for line in shown if line.endswith("<- linked function")]
    assert around[1] == around[-1] == "   ⋯"


def test_empty_stages_say_so_in_text():
    empty = replace(sample_record(), overlays=[], jobs=[], adjoint_sources={}, ir_before_link="",
                    ir_after_link="", ptx="", timings={})
    view = CompilationView(empty)
    assert view.stage_text("overlays") == ("No call was overlaid: every call resolved to its "
                                           "original function.")
    assert view.stage_text("jobs") == "No deferred jobs: the kernel makes no autodiff call."
    assert view.stage_text("derivatives") == "No derivative source was generated."
    assert view.stage_text("ptx") == "(not produced by this compilation)"
    assert view.stage_text("diff") == "(no IR to compare)"
    assert view.stage_text("timings") == "No timings recorded."
    assert "not shown" not in CompilationView(empty, show="jobs").to_text()


def _product(x, w):
    return x * w


def test_gradcheck_text_of_a_host_check_has_the_errors_and_tolerance():
    from gpuad.gradient_check import gradcheck

    report = gradcheck(_product, 0.5, 2.0)
    lines = gradcheck_text(report).splitlines()
    assert lines[0] == repr(report) and lines[0].startswith("gradcheck of ")
    assert lines[1] == "tolerance: |AD - FD| <= atol + rtol * |FD| with rtol=1e-05, atol=1e-08"
    assert lines[2].split() == ["argument", "points", "result", "max", "abs", "err", "max", "rel", "err",
                                "worst", "point", "AD", "FD"]
    x_row, w_row = lines[4].split(), lines[5].split()
    assert x_row[:3] == ["x", "1", "ok"] and float(x_row[-2]) == 2.0
    assert float(x_row[-1]) == pytest.approx(2.0)
    assert w_row[:3] == ["w", "1", "ok"] and float(w_row[-2]) == 0.5


def test_static_html_has_every_stage_as_a_section_and_no_style_block(view):
    page = view._repr_mimebundle_()["text/html"]
    for key, title in zip(STAGE_KEYS, TITLES, strict=True):
        assert f'class="gpuad-stage-{key}"' in page
        assert f">{title}</summary>" in page
    # One scoped stylesheet (token colours); layout and the theme's colours are inline.
    assert page.count("<style>") == 1 and "class=\"highlight\"" not in page
    assert page.startswith('<div class="gpuad-view" style="background-color: var(--jp-layout-color0, '
                           '#ffffff); color: var(--jp-content-font-color1, #1f2328)')


def test_static_html_is_deterministic():
    assert CompilationView(sample_record()).to_html() == CompilationView(sample_record()).to_html()


def test_tables_show_overlays_and_jobs(view):
    page = view.to_html()
    assert "gpuad.api.autodiff_deferred" in page and "examples.py:16" in page
    jobs = view.stage_html("jobs")
    assert adjoint_symbol() in jobs and "Active, Active" in jobs and "float64, float64" in jobs


def test_python_ir_and_ptx_are_highlighted(view):
    assert "<b>def</b>" in view.stage_html("source")
    assert "<b>define</b>" in view.stage_html("ir-after")
    assert "<b>.visible</b>" in view.stage_html("ptx")


def test_modules_are_folded_by_function(view):
    # The kernel, the thread-index overlay's function and the linked derivative; the PTX keeps
    # the kernel and libdevice's helper (the others are inlined).
    after = view.stage_html("ir-after")
    assert after.count('class="gpuad-function"') == 3
    assert f'title="{adjoint_symbol()}"' in after and "&lt;dynamic&gt;.reverse_f  (" in after
    assert view.stage_html("ptx").count('class="gpuad-function"') == 2


def test_large_modules_start_folded():
    record = sample_record()
    filler = "\n".join(f"@g{k} = global i32 {k}" for k in range(400))
    record.ir_after_link = record.ir_after_link + filler
    after = CompilationView(record).stage_html("ir-after")
    assert '<details class="gpuad-function" open' not in after
    record.ir_after_link = "\n".join(sample_record().ir_after_link.splitlines()[:OPEN_MODULE_LINES])
    small = CompilationView(record).stage_html("ir-after")
    assert '<details class="gpuad-function" open' in small


def test_timings_are_bars_scaled_to_the_slowest(view):
    view.record.timings = TIMINGS
    timings = view.stage_html("timings")
    widths = [float(w) for w in re.findall(r'class="gpuad-bar" style="[^"]*width: ([\d.]+)%', timings)]
    assert len(widths) == 5 and max(widths) == 100.0
    assert "931.0 ms" in timings and "total" in timings


def test_a_kernel_from_the_disk_cache_shows_a_cache_hit(view):
    view.record.timings = {"disk cache": 0.0042}  # what gpuad.kernel records for a disk cache hit
    timings = view.stage_html("timings")
    assert "Cache hit: loaded from the on-disk kernel cache in 4.2 ms; nothing was compiled." in timings
    assert "cache hit (from disk)" in timings
    text = view.stage_text("timings")
    assert text.startswith("Cache hit: loaded from the on-disk kernel cache in 4.2 ms")
    assert "cache hit (from disk)  4.2 ms" in text
    view.record.timings = TIMINGS
    assert "Cache hit" not in view.stage_html("timings") + view.stage_text("timings")


def test_show_selects_and_orders_stages():
    assert parse_stages("ptx, source,diff") == ("ptx", "source", "diff")
    assert parse_stages("adjoint,before,after") == ("derivatives", "ir-before", "ir-after")
    with pytest.raises(ValueError, match="unknown stage 'assembly'"):
        parse_stages("assembly")
    page = CompilationView(sample_record(), show="ptx").to_html()
    assert "gpuad-stage-ptx" in page and "gpuad-stage-source" not in page


def test_bundle_carries_the_widget_view_when_widgets_can_show():
    bundle = CompilationView(sample_record(), widget=True)._repr_mimebundle_()
    assert {"text/plain", "text/html", WIDGET_MIMETYPE} <= set(bundle)
    assert bundle[WIDGET_MIMETYPE]["model_id"]
    assert bundle["text/plain"].startswith("gpuad kernel grad_f")


def test_widget_has_one_tab_per_stage():
    box = CompilationView(sample_record()).widget()
    assert list(box.tabs.titles) == TITLES
    assert len(box.tabs.children) == 9


def test_function_picker_and_search_in_the_ir_tab():
    browser = CompilationView(sample_record()).widget().browsers["ir-after"]
    options = list(browser.picker.options)
    assert options[:2] == [("(whole module)", "(whole module)"), ("gpuad.examples.grad_f", kernel_symbol())]
    assert options[-1] == ("<dynamic>.reverse_f", adjoint_symbol())
    browser.picker.value = adjoint_symbol()
    assert "__nv_cos" in browser.body.value and "llvm.nvvm.read.ptx.sreg.tid.x" not in browser.body.value
    browser.search.value = "fmul"
    span = browser.outline.function(adjoint_symbol())
    count = sum("fmul" in line for line in browser.lines[span.start:span.end])
    assert count >= 2  # d_y and d_x: products of the adjoint with a partial
    assert f"{count} line(s) contain &#x27;fmul&#x27;" in browser.body.value
    marked = f'<mark style="{palette.SEARCH_HIT}">fmul</mark>'
    assert browser.body.value.count(marked) == count
    browser.picker.value = kernel_symbol()
    assert "0 line(s) contain" in browser.body.value


def test_diff_tab_switches_layout():
    diff = CompilationView(sample_record()).widget().browsers["diff"]
    unified = diff.body.value
    diff.layout.value = "side-by-side"
    assert diff.body.value != unified
    assert "gpuad-diff-side-by-side" in diff.body.value and "gpuad-mark-link-ref" in diff.body.value


def test_empty_stages_say_so():
    record = sample_record()
    record.overlays, record.jobs, record.adjoint_sources, record.ptx, record.timings = [], [], {}, "", {}
    view = CompilationView(record)
    assert "No call was overlaid" in view.stage_html("overlays")
    assert "No deferred jobs" in view.stage_html("jobs")
    assert "Not produced" in view.stage_html("ptx")
    assert "No timings" in view.stage_html("timings")


def test_highlight_lines_keeps_one_fragment_per_line_even_inside_docstrings():
    text = 'def f():\n    """one\n    two"""\n'
    lines = highlight_lines(text, "python")
    assert len(lines) == 3
    assert all(line.count("<span") == line.count("</span>") for line in lines)
    assert "(empty)" in highlight("", "llvm")
    with pytest.raises(ValueError, match="no highlighter"):
        highlight_lines("x", "fortran")


# ------------------------------------------------------------ short names, two-column diff, linked anchor

def test_overlay_call_sites_are_short_with_the_full_path_in_a_tooltip(monkeypatch, tmp_path):
    record = sample_record()
    inside = tmp_path / "pkg" / "kernels.py"
    record.overlays = [replace(record.overlays[0], call_site=f"{inside}:14"),
                       replace(record.overlays[1], call_site="/elsewhere/lib/helpers.py:7")]
    monkeypatch.chdir(tmp_path)
    overlays = CompilationView(record).stage_html("overlays")
    assert f'title="{inside}:14">pkg/kernels.py:14</td>' in overlays
    assert 'title="/elsewhere/lib/helpers.py:7">helpers.py:7</td>' in overlays
    assert "word-break: break-all" not in overlays


def test_call_sites_in_notebook_cells_name_the_cell_and_line(monkeypatch):
    shell = InteractiveShell.instance()
    shell.run_cell("def in_a_cell():\n    return 1\n", store_history=True)
    number = shell.execution_count - 1
    filename = shell.user_ns["in_a_cell"].__code__.co_filename
    assert short_location(f"{filename}:2") == Short(f"cell [{number}], line 2", f"{filename}:2")
    # ipykernel names cells /tmp/ipykernel_<pid>/<hash>.py: only IPython's map can tell the number.
    fake = "/tmp/ipykernel_4242/2851623131.py"
    monkeypatch.setitem(shell.compile._filename_map, fake, 7)
    record = sample_record()
    record.overlays = [replace(record.overlays[0], call_site=f"{fake}:3")]
    overlays = CompilationView(record).stage_html("overlays")
    assert f'title="{fake}:3">cell [7], line 3</td>' in overlays and "ipykernel_4242/" not in \
        overlays.replace(f'title="{fake}:3"', "")


def test_call_sites_in_gpukernel_cells_count_the_magic_line():
    cell = register_cell("def f(x):\n    return x\n", execution_count=12)
    assert short_location(f"{cell.filename}:2").text == "cell [12], line 3"
    anonymous = register_cell("x = 1\n")
    assert short_location(f"{anonymous.filename}:1").text == "%%gpukernel cell, line 2"
    assert short_location("<string>:4").text == "<string>:4"
    assert short_location("kernels.py").text == "kernels.py"


def test_mangled_symbols_shorten_to_their_python_name():
    assert short_symbol(adjoint_symbol()) == Short("<dynamic>.reverse_f…", adjoint_symbol())
    assert short_symbol(kernel_symbol()).text == "gpuad.examples.grad_f…"
    real = ("_ZN13_3cdynamic_3e9reverse_fB2v3B72cw51cXTLSUwv1sDUaKthqaNgoKmjgOR3W3CwAkMXLaJtQYkOIgxJU0gCqOkEL"
            "KEJAA_3d_3dEdd5ArrayIxLi1E1C7mutable7alignedE")
    assert short_symbol(real).text == "<dynamic>.reverse_f…"
    assert short_symbol("__nv_sin") == Short("__nv_sin", "__nv_sin")
    long = short_symbol("x" * 100)
    assert len(long.text) == 48 and "…" in long.text and long.full == "x" * 100


def test_diff_without_linked_functions_says_none():
    record = sample_record()
    record.ir_after_link = record.ir_before_link
    diff = CompilationView(record).stage_html("diff")
    assert "functions linked: none" in diff and "gpuad-linked-link" not in diff


# ------------------------------------------------------------------ saved size of a default cell

README_CELL = '''\
import math, gpuad
from gpuad import Active, Reverse, autodiff

def f(x, y):
    return math.sin(x) * y

@gpuad.kernel
def grad_f(xs, ys, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (dx, dy), = autodiff(Reverse, f, Active(xs[i]), Active(ys[i]))
        dxs[i] = dx
'''
# What one default cell's output adds to a saved notebook: 1.42 MB in issue 12, 290 KB before the
# JSON was packed and the static HTML's markup cut, 167 KB after (numba-cuda 0.30, the cpu target).
# The issue asks for 300 KB at most; this pins the margin, so that a regression fails here first.
SAVED_CELL_LIMIT = 200_000


def test_a_default_gpukernel_cell_saves_at_most_200_kb(monkeypatch):
    """The README's kernel through the real magic and pipeline, saved as Jupyter saves it (nbformat)."""
    nbformat = pytest.importorskip("nbformat")
    import numpy as np

    monkeypatch.setenv("GPUAD_TARGET", "cpu")
    monkeypatch.setenv("GPUAD_CACHE", "0")  # compiled now, not an older entry of the disk cache
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "gpuad.notebook.magics")
    shown = []
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, metadata=None, **kw: shown.append(data))
    monkeypatch.setattr(shell, "kernel", object(), raising=False)  # as in ipykernel: widgets could show
    shell.user_ns.update(xs=np.linspace(0.0, 1.0, 8), ys=np.linspace(0.0, 1.0, 8), dxs=np.zeros(8))
    source = '%%gpukernel --args "xs, ys, dxs"\n' + README_CELL
    assert shell.run_cell(source, store_history=False).error_in_exec is None
    (bundle,) = [data for data in shown if COMPILATION_MIMETYPE in data]  # not the progress display
    # Every part a saved cell keeps: no widget state (its model would live in the kernel).
    assert set(bundle) == {"text/plain", "text/html", COMPILATION_MIMETYPE}
    record = unpack(bundle[COMPILATION_MIMETYPE])
    assert record["ptx"] and record["ir_after_link"] and "reverse_f" in bundle["text/html"]

    def saved(outputs) -> int:
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source, outputs=outputs)])
        return len(nbformat.writes(notebook).encode())

    size = saved([nbformat.v4.new_output("display_data", data=bundle)]) - saved([])
    assert size <= SAVED_CELL_LIMIT, f"a default cell saves {size} bytes (limit {SAVED_CELL_LIMIT})"
