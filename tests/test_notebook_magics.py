"""`%%gpukernel` and `%gpuad_info` in a real IPython shell (gpuad/notebook/magics.py, cells.py)."""
from __future__ import annotations

import html
import inspect
import math
import re

import numpy as np
import pytest
from compiled_sample import sample_record
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from gpuad.errors import SourceLocation, UnsupportedConstruct
from gpuad.notebook import magics
from gpuad.notebook.cells import CellError, registered_cell
from gpuad.notebook.info import EnvironmentInfo
from gpuad.notebook.names import short_location
from gpuad.notebook.views import COMPILATION_MIMETYPE, WIDGET_MIMETYPE

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class FakeKernel:
    """The interface of gpuad.kernel.Kernel, with a launch that runs the Python body once."""

    def __init__(self, pyfunc):
        self.pyfunc, self.name = pyfunc, pyfunc.__name__
        self.compiled, self.launched = [], []

    def compile(self, *args, target=None, arch=None, fastmath=False):
        self.compiled.append((args, target, arch, fastmath))
        source = inspect.getsource(self.pyfunc)  # works only if the cell is in linecache
        if "while" in source:
            offset = next(k for k, line in enumerate(source.splitlines()) if "while" in line)
            code = self.pyfunc.__code__
            raise UnsupportedConstruct(
                "cannot differentiate a `while` loop whose trip count depends on active values",
                SourceLocation(code.co_filename, code.co_firstlineno + offset, "while", self.name),
                hint="bound the loop with range(...)")
        record = sample_record()
        record.kernel_name, record.source = self.name, source
        record.target, record.arch = target or "cuda", arch or "sm_90"
        return record

    def launch(self, n, *args):
        self.launched.append(n)
        self.pyfunc(*args)


KERNEL_CELL = '''\
import math

def f(x, w):
    return math.sin(x) * w

@fake_kernel
def grad_f(xs, ws, dxs):
    for i in range(xs.shape[0]):
        dxs[i] = math.cos(xs[i]) * ws[i]
'''


@pytest.fixture(scope="module")
def shell():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "gpuad.notebook.magics")
    return shell


@pytest.fixture
def ip(shell, monkeypatch):
    """The shell with fake kernels, fresh arrays, and displays recorded in `ip.shown`."""
    monkeypatch.setattr(magics, "KERNEL_TYPES", (FakeKernel,))
    shown = []
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, metadata=None, **kw: shown.append(data))
    for name in ("f", "g", "grad_f", "other", "a", "b"):
        shell.user_ns.pop(name, None)
    shell.user_ns.update(fake_kernel=FakeKernel, xs=np.linspace(-1.0, 1.0, 8), ws=np.full(8, 2.0),
                         dxs=np.zeros(8))
    shell.shown = shown
    return shell


def run(shell, line: str, body: str):
    return shell.run_cell(f"%%gpukernel {line}\n{body}", store_history=False)


def test_load_ext_gpuad_registers_both_magics():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "gpuad")
    assert "gpukernel" in shell.magics_manager.magics["cell"]
    assert "gpuad_info" in shell.magics_manager.magics["line"]


def test_help_lists_the_options(ip):
    doc = ip.magics_manager.magics["cell"]["gpukernel"].__doc__
    for option in ("--args", "--target", "--arch", "--show", "--launch", "--gradcheck", "--fastmath",
                   "--quiet", "--verbose"):
        assert option in doc


def test_cell_runs_in_the_user_namespace_and_kernels_compile_with_options(ip):
    names = set(ip.user_ns)
    result = run(ip, '--args "xs, ws, dxs" --target cpu --arch sm_80 --fastmath --show ptx,diff', KERNEL_CELL)
    assert result.success, result.error_in_exec
    assert {n for n in set(ip.user_ns) - names if not n.startswith("_")} == {"math", "f", "grad_f"}
    assert ip.user_ns["f"](0.5, 2.0) == pytest.approx(math.sin(0.5) * 2.0)
    kernel = ip.user_ns["grad_f"]
    ((args, target, arch, fastmath),) = kernel.compiled
    assert args[0] is ip.user_ns["xs"] and len(args) == 3
    assert (target, arch, fastmath) == ("cpu", "sm_80", True)
    assert kernel.launched == []


def test_display_bundle_has_text_and_html_and_the_cells_source(ip):
    run(ip, '--args "xs, ws, dxs"', KERNEL_CELL)
    (bundle,) = ip.shown
    assert bundle["text/plain"] == "gpuad kernel grad_f [cuda, sm_90]: 2 overlays, 1 deferred job, " \
                                   "1 function linked"
    assert "gpuad-stage-diff" in bundle["text/html"]
    assert WIDGET_MIMETYPE not in bundle  # a terminal shell has no kernel to draw widgets
    # inspect.getsource found the kernel in the cell (linecache registration).
    assert ip.user_ns["grad_f"].pyfunc.__code__.co_filename.startswith("<gpukernel-cell-")
    text = html.unescape(re.sub(r"<[^>]+>", "", bundle["text/html"]))
    assert "def grad_f(xs, ws, dxs):\n    for i in range(xs.shape[0]):" in text


def test_the_cell_is_registered_with_its_execution_count(ip):
    ip.run_cell(f"%%gpukernel\n{KERNEL_CELL}", store_history=True)
    number = ip.execution_count - 1
    filename = ip.user_ns["grad_f"].pyfunc.__code__.co_filename
    cell = registered_cell(filename)
    assert cell is not None and cell.execution_count == number
    assert short_location(f"{filename}:8").text == f"cell [{number}], line 9"


def test_display_bundle_survives_save_and_reopen(ip, monkeypatch):
    # A widget view in the bundle is what a reopened notebook showed as "Error displaying widget:
    # model not found" (its model lived in the kernel): the bundle carries the record's JSON for
    # the JupyterLab extension instead, and the static HTML for every other front end.
    # As in ipykernel: a front end that could draw widgets is attached.
    monkeypatch.setattr(ip, "kernel", object(), raising=False)
    run(ip, '--args "xs, ws, dxs" --show source', KERNEL_CELL)
    (bundle,) = ip.shown
    assert set(bundle) == {"text/plain", "text/html", COMPILATION_MIMETYPE}
    assert bundle[COMPILATION_MIMETYPE]["kernel_name"] == "grad_f"
    assert bundle[COMPILATION_MIMETYPE]["stages"] == ["source"]


def test_fastmath_left_out_keeps_the_kernels_own_setting(ip):
    run(ip, '--args xs, ws, dxs', KERNEL_CELL)  # unquoted --args works too
    ((args, target, arch, fastmath),) = ip.user_ns["grad_f"].compiled
    assert len(args) == 3 and (target, arch, fastmath) == (None, None, None)


def test_launch_runs_the_kernel(ip):
    result = run(ip, '--args "xs, ws, dxs" --launch 8 --quiet', KERNEL_CELL)
    assert result.success
    assert ip.user_ns["grad_f"].launched == [8]
    np.testing.assert_allclose(ip.user_ns["dxs"], np.cos(ip.user_ns["xs"]) * 2.0)
    assert ip.shown == []  # --quiet


def test_without_args_the_kernels_are_defined_but_not_compiled(ip, capsys):
    assert run(ip, "", KERNEL_CELL).success
    assert "defined grad_f; add --args EXPR" in capsys.readouterr().out
    assert ip.user_ns["grad_f"].compiled == []


def test_kernel_option_picks_one_of_several(ip):
    body = KERNEL_CELL + "\n@fake_kernel\ndef other(xs, ws, dxs):\n    pass\n"
    assert run(ip, '--args "xs, ws, dxs" --kernel other --quiet', body).success
    assert ip.user_ns["other"].compiled and not ip.user_ns["grad_f"].compiled
    result = run(ip, '--args "xs, ws, dxs" --kernel nope', body)
    assert isinstance(result.error_in_exec, UsageError)
    assert "defines: grad_f, other" in str(result.error_in_exec)


@pytest.mark.parametrize("line, message", [
    ("--bogus", "unrecognized arguments: --bogus"),
    ("--target gpu", "invalid choice: 'gpu'"),
    ("--show assembly --args xs", "unknown stage 'assembly'"),
    ("--launch 8", "--launch and --gradcheck need --args"),
])
def test_bad_options_are_usage_errors_and_the_cell_does_not_run(ip, line, message):
    result = run(ip, line, "a = 1\n")
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)
    assert "a" not in ip.user_ns


def _error(result, capsys) -> tuple[CellError, str]:
    assert isinstance(result.error_in_exec, CellError), result.error_in_exec
    return result.error_in_exec, ANSI.sub("", capsys.readouterr().out)


def test_syntax_error_points_at_the_cell_line(ip, capsys):
    error, shown = _error(run(ip, "--args xs", "a = 1\ndef g(x):\n    return x +\n"), capsys)
    assert (error.kind, error.cell_line) == ("SyntaxError", 4)  # line 1 of the cell is %%gpukernel
    assert "SyntaxError at cell line 4 while running the cell" in shown
    assert "     4 |     return x +" in shown
    assert "Traceback" not in shown and "a" not in ip.user_ns


def test_unsupported_construct_points_at_the_cell_line_and_keeps_definitions(ip, capsys):
    body = ("def f(x):\n    return x\n\n@fake_kernel\ndef grad_f(xs, ws, dxs):\n"
            "    i = 0\n    while xs[i] > 0:\n        i += 1\n")
    error, shown = _error(run(ip, '--args "xs, ws, dxs"', body), capsys)
    assert (error.kind, error.cell_line, error.location.function) == ("UnsupportedConstruct", 8, "grad_f")
    assert "UnsupportedConstruct at cell line 8 (in grad_f) while compiling grad_f:" in shown
    assert "     8 |     while xs[i] > 0:" in shown and "hint: bound the loop with range(...)" in shown
    assert "Traceback" not in shown and "gpuad/notebook" not in shown
    assert isinstance(ip.user_ns["grad_f"], FakeKernel) and ip.user_ns["f"](3) == 3


def test_runtime_error_in_the_cell_keeps_what_ran_before_it(ip, capsys):
    error, shown = _error(run(ip, "", "a = 1\ndef g():\n    return undefined_name\nb = g()\n"), capsys)
    # The innermost cell frame is g's return line (cell line 4), not the call on line 5.
    assert (error.kind, error.cell_line, error.location.function) == ("NameError", 4, "g")
    assert "name 'undefined_name' is not defined" in shown
    assert ip.user_ns["a"] == 1 and callable(ip.user_ns["g"]) and "b" not in ip.user_ns


def test_failing_launch_points_at_the_kernel_line(ip, capsys, monkeypatch):
    monkeypatch.setenv("GPUAD_TARGET", "cpu")
    body = "@fake_kernel\ndef grad_f(xs, ws, dxs):\n    for i in range(100):\n        dxs[i] = xs[i]\n"
    error, shown = _error(run(ip, '--args "xs, ws, dxs" --launch 100 --quiet', body), capsys)
    assert (error.kind, error.cell_line) == ("IndexError", 5)
    assert "IndexError at cell line 5 (in grad_f) while launching grad_f over 100 threads " \
           "on the cpu target" in shown


def test_bad_args_expression_is_reported(ip, capsys):
    error, shown = _error(run(ip, '--args "xs, nothing_here"', KERNEL_CELL), capsys)
    assert error.kind == "NameError" and "evaluating --args 'xs, nothing_here'" in shown
    assert isinstance(ip.user_ns["grad_f"], FakeKernel)


def test_verbose_shows_the_internal_traceback_and_the_steps(ip, capsys):
    assert run(ip, '--args "xs, ws, dxs" --quiet --verbose', KERNEL_CELL).success
    assert "gpuad: compiling grad_f: done in" in capsys.readouterr().out
    body = "@fake_kernel\ndef grad_f(xs, ws, dxs):\n    for i in range(100):\n        dxs[i] = xs[i]\n"
    _, shown = _error(run(ip, '--args "xs, ws, dxs" --launch 100 --quiet --verbose', body), capsys)
    assert "Traceback (most recent call last)" in shown and "IndexError at cell line 5" in shown


def test_gradcheck_option_checks_the_kernel_against_the_cells_primal(ip):
    assert run(ip, '--args "xs, ws, dxs" --launch 8 --gradcheck --wrt xs --out dxs --show source',
               KERNEL_CELL).success
    view, report = ip.shown
    assert "gpuad-stage-source" in view["text/html"]
    assert report["text/plain"].startswith("gradcheck of kernel grad_f: PASSED")
    assert "data:image/png;base64," in report["text/html"]


def test_gradcheck_option_flags_a_wrong_kernel(ip):
    wrong = KERNEL_CELL.replace("math.cos(xs[i]) * ws[i]", "math.cos(xs[i])")
    assert run(ip, '--args "xs, ws, dxs" --gradcheck --quiet', wrong).success
    (report,) = ip.shown  # --quiet still shows a failing check
    assert report["text/plain"].startswith("gradcheck of kernel grad_f: FAILED (xs outside tolerance)")


def test_gradcheck_needs_a_primal_when_the_cell_has_several_functions(ip):
    body = KERNEL_CELL + "\ndef g(x):\n    return x\n"
    result = run(ip, '--args "xs, ws, dxs" --gradcheck --quiet', body)
    assert isinstance(result.error_in_exec, UsageError) and "pass --primal NAME" in str(result.error_in_exec)
    assert run(ip, '--args "xs, ws, dxs" --gradcheck --primal f --quiet', body).success


def test_gpuad_info_reports_versions_target_gpu_nvvm_and_cache(ip, monkeypatch):
    from gpuad.notebook import info

    monkeypatch.setattr(info, "_gpu", lambda: "none found")
    monkeypatch.setattr(info, "_nvvm", lambda: "found")
    report = ip.run_line_magic("gpuad_info", "")
    assert isinstance(report, EnvironmentInfo)
    labels = [label for label, _ in report.rows()]
    assert labels == ["gpuad", "numba", "numba-cuda", "llvmlite", "numpy",
                      "target in use", "GPU", "NVVM", "cache"]
    assert report.versions["numpy"] == np.__version__
    assert report.target in ("cuda", "cpu")
    assert report.cache_dir.rstrip("/").endswith("gpuad")
    assert "<table" in report._repr_html_() and "numba-cuda" in str(report)


def test_gpuad_info_survives_a_broken_probe(monkeypatch):
    from gpuad.notebook import info

    def broken():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(info, "_gpu", broken)
    monkeypatch.setattr(info, "_nvvm", lambda: "found")
    assert info.environment_info().gpu == "unavailable (RuntimeError: driver exploded)"


@pytest.fixture(scope="module")
def pipeline():
    """Skip unless the compiler can compile the README's example outside any notebook."""
    from gpuad import examples

    xs = np.linspace(-1.0, 1.0, 8)
    try:
        examples.grad_f.compile(xs, xs.copy(), np.zeros(8))
    except Exception as exc:
        pytest.skip(f"the pipeline cannot compile gpuad.examples.grad_f yet: {type(exc).__name__}: {exc}")


def test_a_real_gpuad_kernel_compiles_and_displays(shell, monkeypatch, pipeline):
    shown = []
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, metadata=None, **kw: shown.append(data))
    shell.user_ns.update(xs=np.linspace(-1.0, 1.0, 8), ws=np.full(8, 2.0), dxs=np.zeros(8))
    body = ("import math, gpuad\nfrom gpuad import autodiff, Reverse, Active\n\n"
            "def f(x, w):\n    return math.sin(x) * w\n\n@gpuad.kernel\ndef grad_f(xs, ws, dxs):\n"
            "    i = gpuad.thread_index()\n    if i < xs.shape[0]:\n"
            "        (dx, dw), = autodiff(Reverse, f, Active(xs[i]), Active(ws[i]))\n        dxs[i] = dx\n")
    result = run(shell, '--args "xs, ws, dxs" --launch 8 --gradcheck', body)
    assert result.success, result.error_in_exec
    view, report = shown
    assert "1 deferred job," in view["text/plain"] and "gpuad-mark-marker" in view["text/html"]
    # Overlaid calls are located by cell and cell line (the %%gpukernel line is line 1).
    overlays = view["text/html"].split('class="gpuad-stage-overlays"')[1].split("</details>")[0]
    assert re.search(r">cell \[\d+\], line 10</td>", overlays)  # gpuad.thread_index()
    assert re.search(r">cell \[\d+\], line 12</td>", overlays)  # autodiff(...)
    assert "<gpukernel-cell-" not in overlays.replace("&lt;", "<").split("title=")[0]
    assert report["text/plain"].startswith("gradcheck of kernel grad_f: PASSED")



# ------------------------------------------------ real kernels on the cpu target

# Starts with a blank line, as cells often do: IPython's transform drops it, and
# both inspect.getsource and the cell line numbers must still agree with the cell.
# Cell lines: 1 %%gpukernel, 2 blank, 12 gpuad.thread_index(), 14 autodiff(...).
REAL_CELL = '''
import math
import gpuad
from gpuad import autodiff, Reverse, Active

def f(x, w):
    return math.sin(x) * w

@gpuad.kernel
def grad_f(xs, ws, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (dx, dw), = autodiff(Reverse, f, Active(xs[i]), Active(ws[i]))
        dxs[i] = dx
'''
REAL_SUMMARY = "gpuad kernel grad_f [{target}, sm_90]: 2 overlays, 1 deferred job, 1 function linked"


@pytest.fixture
def real(shell, monkeypatch, pipeline):
    """The shell with gpuad's own kernels, no GPU (as on this machine), fresh arrays, displays recorded."""
    from gpuad.compiler import numba_adapter

    monkeypatch.setattr(numba_adapter, "gpu_available", lambda: False)
    monkeypatch.delenv("GPUAD_TARGET", raising=False)
    shown = []
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, metadata=None, **kw: shown.append(data))
    for name in ("f", "grad_f"):
        shell.user_ns.pop(name, None)
    shell.user_ns.update(xs=np.linspace(-1.0, 1.0, 8), ws=np.full(8, 2.0), dxs=np.zeros(8))
    shell.shown = shown
    return shell


def _record(shell, target: str):
    """The record the cell's kernel compiled to (cached: no second compilation)."""
    ns = shell.user_ns
    return ns["grad_f"].compile(ns["xs"], ns["ws"], ns["dxs"], target=target)


def test_a_real_cell_starting_with_a_blank_line_launches_and_gradchecks_on_the_cpu_target(real):
    result = run(real, '--args "xs, ws, dxs" --target cpu --launch 8 --gradcheck', REAL_CELL)
    assert result.success, result.error_in_exec
    np.testing.assert_allclose(real.user_ns["dxs"], np.cos(real.user_ns["xs"]) * 2.0)
    view, report = real.shown
    assert view["text/plain"] == REAL_SUMMARY.format(target="cpu")
    overlays = view["text/html"].split('class="gpuad-stage-overlays"')[1].split("</details>")[0]
    assert re.search(r">cell \[\d+\], line 12</td>", overlays)  # gpuad.thread_index()
    assert re.search(r">cell \[\d+\], line 14</td>", overlays)  # autodiff(...)
    ptx_lines = len(_record(real, "cpu").ptx.splitlines())
    assert f"1 function linked, {ptx_lines} PTX lines" in view["text/html"]
    assert report["text/plain"].startswith("gradcheck of kernel grad_f: PASSED")
    assert real.user_ns["grad_f"].target is None  # --target chose the launch's target only


def test_errors_in_a_cell_starting_with_blank_lines_name_the_cell_line(real, capsys):
    error, shown = _error(run(real, "", "\n\na = 1\ndef g(x):\n    return x +\n"), capsys)
    assert (error.kind, error.cell_line) == ("SyntaxError", 6)
    assert "     6 |     return x +" in shown


def test_target_cpu_launches_on_the_cpu_where_cuda_is_the_default(real, monkeypatch):
    monkeypatch.setenv("GPUAD_TARGET", "cuda")  # the launch used to follow this, not --target
    result = run(real, '--args "xs, ws, dxs" --target cpu --launch 8 --verbose', REAL_CELL)
    assert result.success, result.error_in_exec
    np.testing.assert_allclose(real.user_ns["dxs"], np.cos(real.user_ns["xs"]) * 2.0)
    assert real.user_ns["grad_f"].target is None


def test_launch_steps_name_their_target(real, capsys):
    assert run(real, '--args "xs, ws, dxs" --target cpu --launch 8 --verbose --quiet', REAL_CELL).success
    assert "gpuad: launching grad_f over 8 threads on the cpu target: done in" in capsys.readouterr().out


NO_GPU = ("%%gpukernel {flag}: no GPU found, so grad_f cannot run on the cuda target ({why}). "
          "Compiling needs no GPU: its IR and PTX for sm_90 are in the record. "
          "To run it on this machine, use --target cpu (the cpu target runs the same kernel on the CPU); "
          "to only compile it, drop {drop}.")


@pytest.mark.parametrize("line, env, decorator, flag, why, drop", [
    ("--target cuda --launch 8", None, "@gpuad.kernel", "--launch", "--target cuda", "--launch"),
    ("--target cuda --gradcheck", None, "@gpuad.kernel", "--gradcheck", "--target cuda", "--gradcheck"),
    ("--launch 8", None, '@gpuad.kernel(target="cuda")', "--launch",
     "the kernel's own target: @gpuad.kernel(target='cuda')", "--launch"),
    ("--launch 8 --gradcheck", "cuda", "@gpuad.kernel", "--launch", "GPUAD_TARGET=cuda",
     "--launch and --gradcheck"),
])
def test_a_cuda_launch_without_a_gpu_is_refused_after_compiling(real, monkeypatch, line, env, decorator,
                                                                 flag, why, drop):
    if env:
        monkeypatch.setenv("GPUAD_TARGET", env)
    result = run(real, f'--args "xs, ws, dxs" {line}', REAL_CELL.replace("@gpuad.kernel", decorator))
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert str(result.error_in_exec) == NO_GPU.format(flag=flag, why=why, drop=drop)
    (view,) = real.shown  # compiled and displayed, labelled with the target it compiled for
    assert view["text/plain"] == REAL_SUMMARY.format(target="cuda")
    assert not real.user_ns["dxs"].any()  # nothing ran, on any target


@pytest.fixture
def terminal(real, monkeypatch):
    """A terminal IPython: its display shows text/plain only."""
    monkeypatch.setattr(real.display_formatter, "active_types", ["text/plain"])
    return real


def _text(shell) -> str:
    (bundle,) = shell.shown
    assert set(bundle) == {"text/plain"}
    return bundle["text/plain"]


def test_a_terminal_prints_the_stages_show_asks_for_as_text(terminal):
    assert run(terminal, '--args "xs, ws, dxs" --target cpu --show ptx,jobs', REAL_CELL).success
    text, record = _text(terminal), _record(terminal, "cpu")
    assert text.startswith("gpuad kernel grad_f [cpu, sm_90] (array(float64, 1d, C), array(float64, 1d, C), "
                           "array(float64, 1d, C)): 2 overlays, 1 deferred job, 1 function linked, "
                           f"{len(record.ptx.splitlines())} PTX lines\n")
    assert f"\n── PTX ──\n{record.ptx.rstrip()}\n" in text
    assert text.index("── PTX ──") < text.index("── Deferred jobs ──")  # the order --show gives
    assert re.search(r"\n1 +f +Reverse +Active, Active +float64, float64 ", text)
    assert "── Overlays ──" not in text and "── IR after link ──" not in text
    assert (f"\nnot shown: ir-before ({len(record.ir_before_link.splitlines())} lines), "
            f"ir-after ({len(record.ir_after_link.splitlines())} lines), diff (") in text
    assert text.endswith("to print them, name them in --show (e.g. --show ptx,jobs,ir-before,ir-after,diff)")


def test_a_terminal_without_show_prints_the_short_stages_and_names_the_long_ones(terminal):
    assert run(terminal, '--args "xs, ws, dxs" --target cpu', REAL_CELL).success
    text, record = _text(terminal), _record(terminal, "cpu")
    for title in ("Overlays", "Deferred jobs", "Derivative source", "Timings"):
        assert f"\n── {title} ──\n" in text
    assert re.search(r"\ncell \[\d+\], line 14 +gpuad\.api\.autodiff +gpuad\.api\.autodiff_deferred +grad_f",
                     text)
    assert "\n# job 1: Reverse of f\ndef reverse_f(" in text
    assert re.search(r"\ntotal +\d", text)
    assert "── PTX ──" not in text and ".target sm_90" in record.ptx and ".target sm_90" not in text
    assert f"ptx ({len(record.ptx.splitlines())} lines); to print them, name them in --show" in text


def test_a_terminal_shows_a_failing_gradchecks_errors_and_tolerance(terminal):
    half = REAL_CELL.replace("dxs[i] = dx", "dxs[i] = dx * 0.5")  # half the true derivative
    assert run(terminal, '--args "xs, ws, dxs" --target cpu --launch 8 --gradcheck --quiet', half).success
    text = _text(terminal)  # --quiet still shows a failing check
    header, tolerance, columns, _, row = text.splitlines()
    assert header == ("gradcheck of kernel grad_f: FAILED (xs outside tolerance) — 1 argument(s), "
                      "rtol=1e-05, atol=1e-08")
    assert tolerance == "tolerance: |AD - FD| <= atol + rtol * |FD| with rtol=1e-05, atol=1e-08"
    assert columns.split() == ["argument", "points", "result", "max", "abs", "err", "max", "rel", "err",
                               "worst", "point", "AD", "at", "worst", "FD", "at", "worst"]
    name, points, fail, count, abs_err, rel_err, worst, ad, fd = row.split()
    xs = terminal.user_ns["xs"]
    # AD = cos(x), FD = 2 cos(x): the largest error is where cos(x) peaks, half of FD.
    assert (name, points, fail, count) == ("xs", "8", "FAIL", "8/8")
    assert float(abs_err) == pytest.approx(np.cos(xs).max(), rel=1e-2)
    assert float(rel_err) == pytest.approx(0.5, rel=1e-2)
    assert float(ad) == pytest.approx(np.cos(xs[int(worst)]), rel=1e-6)
    assert float(fd) == pytest.approx(2 * np.cos(xs[int(worst)]), rel=1e-6)
