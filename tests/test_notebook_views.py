"""The compilation display: static HTML, MIME bundle, widget (gpuad/notebook/views.py, render.py)."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest
from IPython.core.interactiveshell import InteractiveShell

from gpuad.notebook.cells import register_cell
from gpuad.notebook.highlight import highlight, highlight_lines
from gpuad.notebook.names import Short, short_location, short_symbol
from gpuad.notebook.sample import ADJOINT_SYMBOL, KERNEL_SYMBOL, sample_record
from gpuad.notebook.views import (
    STAGE_KEYS,
    WIDGET_MIMETYPE,
    CompilationView,
    gradcheck_text,
    parse_stages,
    plural,
    summary_line,
)

TITLES = ["Source", "Overlays", "Deferred jobs", "Derivative source", "IR before link", "IR after link",
          "Link diff", "PTX", "Timings"]


@pytest.fixture
def view():
    return CompilationView(sample_record(), widget=False)


def _cell_of(html: str, text: str) -> str:
    """The opening tag of the diff cell whose text contains `text`."""
    for match in re.finditer(r"<td class=\"(gpuad-diff-[^\"]*)\" style=\"([^\"]*)\"[^>]*>(.*?)</td>", html):
        if text in re.sub(r"<[^>]+>", "", match.group(3)).replace("&quot;", '"'):
            return match.group(0)
    raise AssertionError(f"no diff cell contains {text!r}")


def _marker_row(html: str) -> str:
    """The side-by-side row holding the marker call (tags stripped when matching)."""
    return next(r for r in html.split("<tr>")
                if "gpuad-mark-marker" in r and "(i64 1)" in re.sub(r"<[^>]+>", "", r))


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
    record = sample_record()
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
        f"ir-after ({len(record.ir_after_link.splitlines())} lines), diff (37 lines), "
        f"ptx ({len(record.ptx.splitlines())} lines); to print them, name them in --show "
        "(e.g. --show jobs,timings,ir-before,ir-after,diff,ptx)")


def test_text_diff_numbers_both_sides_and_notes_marker_and_linked_function(view):
    text = view.stage_text("diff")
    assert text.startswith("2 lines removed, 19 added; functions linked: <dynamic>.reverse_f…\n")
    (marker,) = [line for line in text.splitlines() if "gpuad.deferred_codegen\"(i64 1)" in line]
    # sign, old number, (no new number), the IR line, the note
    assert marker == ('-    23          %".5" = call i8* @"gpuad.deferred_codegen"(i64 1)'
                      "   <- deferred-codegen marker")
    # The linked function is noted once, on its define line, not on every line of its body.
    (linked,) = [line for line in text.splitlines() if line.endswith("<- linked function")]
    assert linked.startswith("+") and "define linkonce_odr" in linked
    assert "⋯ 19 unchanged lines ⋯" in text


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
    # JupyterLab's sanitizer drops <style>; colours must be inline and set by us.
    assert "<style" not in page and "class=\"highlight\"" not in page
    assert page.startswith('<div class="gpuad-view" style="background-color: #ffffff; color: #1f2328')


def test_static_html_is_deterministic():
    assert CompilationView(sample_record()).to_html() == CompilationView(sample_record()).to_html()


def test_tables_show_overlays_and_jobs(view):
    page = view.to_html()
    assert "gpuad.api.autodiff_deferred" in page and "kernels.py:14" in page
    jobs = view.stage_html("jobs")
    assert ADJOINT_SYMBOL in jobs and "Active, Active" in jobs and "float64, float64" in jobs


def test_python_ir_and_ptx_are_highlighted_with_inline_styles(view):
    source = view.stage_html("source")
    assert '<span style="color: #008000; font-weight: bold">def</span>' in source
    ir = view.stage_html("ir-after")
    assert re.search(r'<span style="[^"]+">define</span>', ir)
    ptx = view.stage_html("ptx")
    assert re.search(r'<span style="[^"]+">\.visible</span>', ptx)


def test_modules_are_folded_by_function(view):
    after = view.stage_html("ir-after")
    assert after.count('class="gpuad-function"') == 2
    assert f"{ADJOINT_SYMBOL}  (" in after
    assert view.stage_html("ptx").count('class="gpuad-function"') == 2


def test_large_modules_start_folded():
    record = sample_record()
    filler = "\n".join(f"@g{k} = global i32 {k}" for k in range(400))
    record.ir_after_link = record.ir_after_link + filler
    after = CompilationView(record).stage_html("ir-after")
    assert '<details class="gpuad-function" open' not in after
    small = CompilationView(sample_record()).stage_html("ir-after")
    assert '<details class="gpuad-function" open' in small


def test_diff_highlights_marker_before_and_linked_function_after(view):
    diff = view.stage_html("diff")
    marker = _cell_of(diff, '@"gpuad.deferred_codegen"(i64 1)')
    assert "gpuad-diff-delete" in marker and "gpuad-mark-marker" in marker
    assert "background-color: #fff1b8" in marker and 'title="deferred-codegen marker' in marker
    replacement = _cell_of(diff, f'bitcast i32 ({{double, double}}*, double, double)* @"{ADJOINT_SYMBOL}"')
    assert "gpuad-diff-insert" in replacement and "gpuad-mark-link-ref" in replacement
    definition = _cell_of(diff, f'define linkonce_odr i32 @"{ADJOINT_SYMBOL}"')
    assert "gpuad-diff-insert" in definition and "gpuad-mark-linked" in definition
    assert "background-color: #f0ebff" in definition
    # Unchanged runs far from the link are folded, with their line ranges on both sides.
    assert re.search(r"⋯ \d+ unchanged lines \(old 1–\d+, new 1–\d+\) ⋯", diff)


def test_side_by_side_diff_has_both_line_numbers_on_the_marker_row():
    view = CompilationView(sample_record(), diff_layout="side-by-side")
    diff = view.stage_html("diff")
    row = _marker_row(diff)
    assert "gpuad-mark-link-ref" in row  # the replacement sits beside the marker
    numbers = re.findall(r'class="gpuad-diff-(old|new)-number"[^>]*>(\d+)</td>', row)
    assert numbers == [("old", "23"), ("new", "23")]
    # Folded runs span both sides (number + code cell per side).
    assert re.findall(r'<td colspan="(\d)" class="gpuad-diff-collapsed"', diff) and \
        set(re.findall(r'<td colspan="(\d)" class="gpuad-diff-collapsed"', diff)) == {"4"}


def test_timings_are_bars_scaled_to_the_slowest(view):
    timings = view.stage_html("timings")
    widths = [float(w) for w in re.findall(r'class="gpuad-bar" style="[^"]*width: ([\d.]+)%', timings)]
    assert len(widths) == 5 and max(widths) == 100.0
    assert "931.0 ms" in timings and "total" in timings


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
    assert list(browser.picker.options) == ["(whole module)", KERNEL_SYMBOL, ADJOINT_SYMBOL]
    browser.picker.value = ADJOINT_SYMBOL
    assert "__nv_cos" in browser.body.value and "llvm.nvvm.read.ptx.sreg.tid.x" not in browser.body.value
    browser.search.value = "fmul"
    assert "3 line(s) contain &#x27;fmul&#x27;" in browser.body.value
    marked = '<mark style="background-color: #ffd33d; color: #1f2328">fmul</mark>'
    assert browser.body.value.count(marked) == 3
    browser.picker.value = KERNEL_SYMBOL
    assert "0 line(s) contain" in browser.body.value


def test_diff_tab_switches_layout():
    diff = CompilationView(sample_record()).widget().browsers["diff"]
    unified = diff.body.value
    diff.layout.value = "side-by-side"
    assert diff.body.value != unified
    row = _marker_row(diff.body.value)
    assert "gpuad-mark-link-ref" in row


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

def _numbers(row: str) -> tuple[str, str]:
    """(old, new) line numbers of a unified diff row ("" where a side has none)."""
    found = dict(re.findall(r'class="gpuad-diff-(old|new)-number"[^>]*>(\d*)</td>', row))
    return found["old"], found["new"]


def _row_with(html: str, text: str) -> str:
    def plain(row: str) -> str:
        return re.sub(r"<[^>]+>", "", "<tr" + row).replace("&quot;", '"')

    return next(r for r in html.split("<tr") if text in plain(r))


def _shifted_record():
    """The sample with four declarations added near the top, so old and new numbers differ."""
    record = sample_record()
    lines = record.ir_after_link.splitlines(True)
    extra = [f'declare double @"__nv_extra{k}"(double)\n' for k in range(4)]
    record.ir_after_link = "".join(lines[:4] + extra + lines[4:])
    return record


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
    assert short_symbol(ADJOINT_SYMBOL) == Short("<dynamic>.reverse_f…", ADJOINT_SYMBOL)
    assert short_symbol(KERNEL_SYMBOL).text == "cudapy.__main__.grad_f…"
    real = ("_ZN13_3cdynamic_3e9reverse_fB2v3B72cw51cXTLSUwv1sDUaKthqaNgoKmjgOR3W3CwAkMXLaJtQYkOIgxJU0gCqOkEL"
            "KEJAA_3d_3dEdd5ArrayIxLi1E1C7mutable7alignedE")
    assert short_symbol(real).text == "<dynamic>.reverse_f…"
    assert short_symbol("__nv_sin") == Short("__nv_sin", "__nv_sin")
    long = short_symbol("x" * 100)
    assert len(long.text) == 48 and "…" in long.text and long.full == "x" * 100


def test_jobs_table_shows_a_short_symbol_unwrapped_with_the_full_one_as_tooltip(view):
    jobs = view.stage_html("jobs")
    cell = re.search(r"<td [^>]*title=\"([^\"]+)\">([^<]*)</td>", jobs)
    assert cell.groups() == (ADJOINT_SYMBOL, "&lt;dynamic&gt;.reverse_f…")
    assert "white-space: nowrap" in cell.group(0) and "break-all" not in jobs
    assert f">{ADJOINT_SYMBOL}<" not in jobs


def test_unified_diff_has_separate_old_and_new_number_columns():
    diff = CompilationView(_shifted_record()).stage_html("diff")
    marker = _row_with(diff, '@"gpuad.deferred_codegen"(i64 1)')
    replacement = _row_with(diff, f'bitcast i32 ({{double, double}}*, double, double)* @"{ADJOINT_SYMBOL}"')
    unchanged = _row_with(diff, '%"w" = load double')
    assert _numbers(marker) == ("23", "")
    assert _numbers(replacement) == ("", "27")
    assert _numbers(unchanged) == ("22", "26")
    assert _numbers(_row_with(diff, '@"__nv_extra0"')) == ("", "5")
    # Folded runs span both number columns and the code column.
    assert set(re.findall(r'<td colspan="(\d)" class="gpuad-diff-collapsed"', diff)) == {"3"}


def test_diff_summary_names_linked_functions_short_and_links_to_them():
    for layout in ("unified", "side-by-side"):
        diff = CompilationView(sample_record(), diff_layout=layout).stage_html("diff")
        summary = diff.split('<table class="gpuad-diff"')[0]
        assert ADJOINT_SYMBOL not in re.sub(r'title="[^"]*"', "", summary)
        link = re.search(r'<a class="gpuad-linked-link" href="#([^"]+)" title="([^"]+)"[^>]*>(.*?)</a>',
                         summary)
        assert link, summary
        anchor, title, text = link.groups()
        assert ADJOINT_SYMBOL in title and "&lt;dynamic&gt;.reverse_f…" in text
        # The anchor is on the row of the linked function's `define`, and is the only one.
        assert diff.count(f'id="{anchor}"') == 1
        row = diff.split(f'<tr id="{anchor}">')[1].split("</tr>")[0]
        assert f'define linkonce_odr i32 @"{ADJOINT_SYMBOL}"' in re.sub(r"<[^>]+>", "", row)
    shifted = CompilationView(_shifted_record()).stage_html("diff")
    after = _shifted_record().ir_after_link.splitlines()
    start = next(k for k, line in enumerate(after) if line.startswith("define linkonce"))
    assert f"(new lines {start + 1}–" in shifted


def test_diff_without_linked_functions_says_none():
    record = sample_record()
    record.ir_after_link = record.ir_before_link
    diff = CompilationView(record).stage_html("diff")
    assert "functions linked: none" in diff and "gpuad-linked-link" not in diff


def test_diff_tab_keeps_the_jump_to_the_linked_function():
    diff = CompilationView(sample_record()).widget().browsers["diff"]
    for layout in ("unified", "side-by-side"):
        diff.layout.value = layout
        anchor = re.search(r'href="#(gpuad-linked-[^"]+)"', diff.body.value).group(1)
        assert f'<tr id="{anchor}">' in diff.body.value
