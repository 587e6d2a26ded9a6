"""AD against central finite differences (gpuad/gradient_check.py)."""
from __future__ import annotations

import importlib
import math
import re

import numpy as np
import pytest

# The module behind gpuad.gradcheck / gpuad.gradcheck_kernel.
gc = importlib.import_module("gpuad.gradient_check")


def f(x, w):
    return math.sin(x) * w


def exact(f_, args):
    x, w = args
    return (math.cos(x) * w, math.sin(x))


def wrong(f_, args):
    x, w = args
    return (math.cos(x) * w * 1.01, math.sin(x))  # 1 % off in x only


@pytest.fixture
def correct_ad(monkeypatch):
    monkeypatch.setattr(gc, "_ad_gradient", exact)


def test_a_correct_gradient_passes_with_small_errors(correct_ad):
    report = gc.gradcheck(f, 0.7, 2.0)
    assert report.passed
    assert [c.name for c in report.checks] == ["x", "w"]
    assert report.check("x").ad == pytest.approx(math.cos(0.7) * 2.0)
    assert report.check("x").fd == pytest.approx(math.cos(0.7) * 2.0, rel=1e-9)
    assert report.max_rel_error < 1e-9 and report.max_abs_error < 1e-9
    assert repr(report) == "gradcheck of f: PASSED — 2 argument(s), rtol=1e-05, atol=1e-08"


def test_a_wrong_gradient_is_flagged(monkeypatch):
    monkeypatch.setattr(gc, "_ad_gradient", wrong)
    report = gc.gradcheck(f, 0.7, 2.0)
    assert not report.passed
    assert not report.check("x").passed and report.check("w").passed
    assert report.check("x").max_rel_error == pytest.approx(0.01, rel=1e-6)
    assert repr(report).startswith("gradcheck of f: FAILED (x outside tolerance)")
    assert "FAIL" in report._repr_html_()


def test_step_is_cbrt_eps_scaled_by_the_magnitude_and_reported(correct_ad):
    eps64 = np.cbrt(np.finfo(np.float64).eps)
    small, large = gc.gradcheck(f, 0.25, 2.0), gc.gradcheck(f, 300.0, 2.0)
    assert small.check("x").step == pytest.approx(eps64, rel=1e-6)
    assert large.check("x").step == pytest.approx(300.0 * eps64, rel=1e-6)
    assert gc.step_size(np.float32(0.5), np.dtype(np.float32)) == pytest.approx(
        np.cbrt(np.finfo(np.float32).eps), rel=1e-3)
    assert gc.gradcheck(f, 0.25, 2.0, eps=1e-3).check("x").step == pytest.approx(1e-3)


def test_float32_arguments_get_float32_steps_and_tolerances(correct_ad):
    report = gc.gradcheck(f, np.float32(0.7), np.float32(2.0))
    assert (report.rtol, report.atol) == gc.TOLERANCES[np.dtype(np.float32)]
    assert report.check("x").step > 1e-3 and report.passed


def test_explicit_tolerances_decide_the_verdict(monkeypatch):
    monkeypatch.setattr(gc, "_ad_gradient", wrong)
    assert gc.gradcheck(f, 0.7, 2.0, rtol=0.02).passed
    assert not gc.gradcheck(f, 0.7, 2.0, rtol=0.005).passed


def test_integer_arguments_are_const_and_not_checked(monkeypatch):
    def power(x, n):
        return x ** n

    monkeypatch.setattr(gc, "_ad_gradient", lambda fn, args: (args[1] * args[0] ** (args[1] - 1), None))
    report = gc.gradcheck(power, 1.5, 3)
    assert [c.name for c in report.checks] == ["x"] and report.passed
    with pytest.raises(ValueError, match="at least one float"):
        gc.gradcheck(power, 2, 3)


def test_the_seam_calls_autodiff_reverse_with_active_floats(monkeypatch):
    import gpuad.api as api

    calls = []

    def fake_autodiff(mode, fn, *args):
        calls.append((mode, fn, args))
        return ((2.5, None),)

    monkeypatch.setattr(api, "autodiff", fake_autodiff)
    assert gc._ad_gradient(f, [0.5, 3]) == (2.5, None)
    ((mode, fn, args),) = calls
    assert mode is api.Reverse and fn is f
    assert isinstance(args[0], api.Active) and args[0].values == (0.5,)
    assert isinstance(args[1], api.Const) and args[1].values == (3,)


def test_figure_sweeps_one_argument_with_the_error_on_a_log_scale(correct_ad):
    report = gc.gradcheck(f, 0.7, 2.0)
    figure = report.figure(arg="x", lo=-1.0, hi=2.0, num=41)
    top, bottom = figure.axes
    ad_line, fd_line = top.get_lines()[:2]
    assert (ad_line.get_label(), fd_line.get_label()) == ("AD", "central FD")
    np.testing.assert_allclose(ad_line.get_xdata(), np.linspace(-1.0, 2.0, 41))
    np.testing.assert_allclose(ad_line.get_ydata(), np.cos(np.linspace(-1.0, 2.0, 41)) * 2.0)
    np.testing.assert_allclose(fd_line.get_ydata(), ad_line.get_ydata(), rtol=1e-8, atol=1e-9)
    assert bottom.get_yscale() == "log"
    with pytest.raises(ValueError, match="not a float"):
        gc.gradcheck(lambda x, n: x * n, 1.0, 2).figure(arg="n")


def test_the_sweep_is_data_the_figure_draws(correct_ad):
    report = gc.gradcheck(f, 0.7, 2.0)
    sweep = report.sweep("x", num=5)
    assert (sweep.name, sweep.x0) == ("x", 0.7)
    np.testing.assert_allclose(sweep.xs, np.linspace(-0.3, 1.7, 5))  # x0 ± max(1, |x0|)
    np.testing.assert_allclose(sweep.ad, np.cos(sweep.xs) * 2.0)
    np.testing.assert_allclose(sweep.fd, sweep.ad, rtol=1e-8)
    drawn = report.figure(arg="x", num=5).axes[0].get_lines()[0]
    np.testing.assert_array_equal(drawn.get_ydata(), sweep.ad)


def test_the_html_table_marks_each_verdict_in_its_colour(monkeypatch):
    from gpuad.notebook import palette

    monkeypatch.setattr(gc, "_ad_gradient", wrong)
    page = gc.gradcheck(f, 0.7, 2.0)._repr_html_()
    assert f"color: {palette.FAILED}; font-weight: bold\">FAIL 1/1</td>" in page
    assert f"color: {palette.PASSED}; font-weight: bold\">ok</td>" in page


def test_figure_saves_as_png_and_svg_and_embeds_in_html(correct_ad, tmp_path):
    report = gc.gradcheck(f, 0.7, 2.0)
    report.savefig(tmp_path / "check.png")
    report.savefig(tmp_path / "check.svg")
    assert (tmp_path / "check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "check.svg").read_text()
    page = report._repr_html_()
    assert '<img style="margin-top: 6px; max-width: 100%" src="data:image/png;base64,iVBORw0KGgo' in page
    assert "PASSED" in page and "<style" not in page


class GradientKernel:
    """A kernel writing dxs[i] = d/dx sin(x)·w, optionally wrong at some points."""

    def __init__(self, wrong_at=()):
        self.name, self.wrong_at, self.launches = "grad_f", set(wrong_at), []

        def grad_f(xs, ws, dxs):  # the signature names wrt/out refer to
            pass

        self.pyfunc = grad_f

    def launch(self, n, xs, ws, dxs):
        self.launches.append(n)
        dxs[:n] = np.cos(xs[:n]) * ws[:n]
        for i in self.wrong_at:
            dxs[i] += 0.1


def _arrays(n=50):
    return np.linspace(-2.0, 2.0, n), np.linspace(0.5, 1.5, n), np.zeros(n)


def test_kernel_gradcheck_passes_for_a_correct_kernel():
    kernel = GradientKernel()
    report = gc.gradcheck_kernel(kernel, 50, *_arrays(), primal=f, wrt="xs", out="dxs")
    assert kernel.launches == [50]
    assert report.passed and repr(report).startswith("gradcheck of kernel grad_f: PASSED")
    (check,) = report.checks
    assert (check.name, check.points, check.failures) == ("xs", 50, 0)
    assert check.max_rel_error < 1e-8


def test_kernel_gradcheck_counts_and_locates_wrong_points():
    report = gc.gradcheck_kernel(GradientKernel(wrong_at=(7, 31)), 50, *_arrays(), primal=f, wrt=0, out=2)
    (check,) = report.checks
    assert not report.passed and check.failures == 2 and check.worst_point in (7, 31)
    assert check.max_abs_error == pytest.approx(0.1, rel=1e-6)
    assert "FAIL 2/50" in report._repr_html_()


def test_kernel_gradcheck_samples_at_most_max_points_and_plots_them(tmp_path):
    report = gc.gradcheck_kernel(GradientKernel(), 50, *_arrays(), primal=f, max_points=10)
    assert report.checks[0].points == 10
    figure = report.figure()
    top, bottom = figure.axes
    ad = top.get_lines()[0]
    assert len(ad.get_xdata()) == 10 and list(ad.get_xdata()) == sorted(ad.get_xdata())
    assert bottom.get_yscale() == "log"
    report.savefig(tmp_path / "kernel.png")
    assert (tmp_path / "kernel.png").stat().st_size > 1000


def test_kernel_gradcheck_checks_several_gradients_and_rejects_bad_names():
    def launch(n, xs, ws, dxs, dws):
        dxs[:] = np.cos(xs) * ws
        dws[:] = np.sin(xs)

    kernel = GradientKernel()
    kernel.launch = launch
    kernel.pyfunc = lambda xs, ws, dxs, dws: None
    xs, ws, dxs = _arrays()
    report = gc.gradcheck_kernel(kernel, 50, xs, ws, dxs, np.zeros(50), primal=f,
                                 wrt=("xs", "ws"), out=("dxs", "dws"))
    assert [c.name for c in report.checks] == ["xs", "ws"] and report.passed
    with pytest.raises(ValueError, match="not a parameter"):
        gc.gradcheck_kernel(kernel, 50, xs, ws, dxs, np.zeros(50), primal=f, wrt="zs", out="dxs")


def test_kernel_gradcheck_ignores_scalar_arguments_by_default():
    def launch(n, xs, ws, dxs, count):
        dxs[:count] = np.cos(xs[:count]) * ws[:count]

    kernel = GradientKernel()
    kernel.launch = launch
    kernel.pyfunc = lambda xs, ws, dxs, count: None
    report = gc.gradcheck_kernel(kernel, 50, *_arrays(), 50, primal=f, wrt="xs", out="dxs")
    assert report.passed and report.checks[0].points == 50


# ---------------------------------------------------------------- Jacobians

def two_outputs(x, y):
    y[0] = x[0] * x[1]
    y[1] = math.sin(x[1])
    y[2] = x[0] * x[0] + math.exp(x[2])


def two_outputs_jacobian(x):
    return np.array([[x[1], x[0], 0.0],
                     [0.0, math.cos(x[1]), 0.0],
                     [2.0 * x[0], 0.0, math.exp(x[2])]])


X = np.array([0.7, 1.3, -0.4])


def test_jacobian_check_of_a_correct_function_matches_the_closed_form():
    report = gc.jacobian_check(two_outputs, X, out_size=3)  # the real engine, one reverse sweep per row
    assert report.passed and report.failures == 0 and report.shape == (3, 3)
    np.testing.assert_allclose(report.ad, two_outputs_jacobian(X), rtol=1e-14, atol=0)
    np.testing.assert_allclose(report.fd, two_outputs_jacobian(X), rtol=1e-8, atol=1e-10)
    assert report.max_abs_error < 1e-8 and report.max_rel_error < 1e-8
    assert report.steps == pytest.approx(np.cbrt(np.finfo(np.float64).eps) * np.array([1.0, 1.3, 1.0]),
                                         rel=1e-6)
    assert repr(report) == ("jacobian_check of two_outputs: PASSED — 3×3 Jacobian (outputs × inputs), "
                            "rtol=1e-05, atol=1e-08")
    np.testing.assert_array_equal(X, [0.7, 1.3, -0.4])  # x is not modified


def test_the_jacobian_seam_seeds_each_output_of_the_written_array():
    x = np.array([0.7, 1.3])

    def f2(x, y):
        y[0] = x[0] * x[1]
        y[1] = math.sin(x[1])

    np.testing.assert_allclose(gc._ad_jacobian(f2, x, 2), [[1.3, 0.7], [0.0, math.cos(1.3)]], rtol=1e-14)


def test_a_wrong_custom_reverse_rule_is_flagged():
    import gpuad
    from gpuad.ad.rules import clear_rule

    def softplus(v):
        return math.log(1.0 + math.exp(v))

    def f(x, y):
        y[0] = softplus(x[0]) * x[1]
        y[1] = x[1] * x[1]

    def softplus_rev_twice_too_big(v, d_out):
        return (2.0 * d_out / (1.0 + math.exp(-v)),)

    gpuad.rule(softplus, reverse=softplus_rev_twice_too_big)
    try:
        report = gc.jacobian_check(f, np.array([0.3, 2.0]), out_size=2)
    finally:
        clear_rule(softplus)
    assert not report.passed and report.failures == 1 and report.worst == (0, 0)
    assert not report.ok[0, 0] and report.ok[0, 1] and report.ok[1].all()
    assert report.ad[0, 0] == pytest.approx(2.0 * report.fd[0, 0], rel=1e-8)
    assert repr(report) == ("jacobian_check of test_a_wrong_custom_reverse_rule_is_flagged.<locals>.f: "
                            "FAILED (1 of 4 entries outside tolerance) — 2×2 Jacobian (outputs × inputs), "
                            "rtol=1e-05, atol=1e-08")
    assert "worst entry ∂y[0]/∂x[0]" in report.details()


def test_jacobian_tolerances_and_the_seam(monkeypatch):
    monkeypatch.setattr(gc, "_ad_jacobian", lambda f, x, m: two_outputs_jacobian(x) * 1.01)
    assert not gc.jacobian_check(two_outputs, X, out_size=3).passed
    assert gc.jacobian_check(two_outputs, X, out_size=3, rtol=0.02).passed
    assert gc.jacobian_check(two_outputs, X, out_size=3, eps=1e-4).steps[0] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="1-D float"):
        gc.jacobian_check(two_outputs, np.arange(3), out_size=3)
    with pytest.raises(ValueError, match="positive integer"):
        gc.jacobian_check(two_outputs, X, out_size=0)


def test_jacobian_figure_has_three_heat_maps_and_saves_and_embeds(monkeypatch, tmp_path):
    wrong = two_outputs_jacobian(X)
    wrong[2, 0] += 0.5
    monkeypatch.setattr(gc, "_ad_jacobian", lambda f, x, m: wrong)
    report = gc.jacobian_check(two_outputs, X, out_size=3)
    figure = report.figure()
    heat_maps = [axis for axis in figure.axes if axis.get_images()]
    assert len(heat_maps) == 3 and len(figure.axes) == 6  # plus three colorbars
    for axis in heat_maps:
        assert (axis.get_xlabel(), axis.get_ylabel()) == ("input index", "output index")
    ad_map, fd_map, error_map = heat_maps
    np.testing.assert_array_equal(ad_map.get_images()[0].get_array(), wrong)
    assert ad_map.get_images()[0].get_clim() == fd_map.get_images()[0].get_clim()
    assert type(error_map.get_images()[0].norm).__name__ == "LogNorm"
    report.savefig(tmp_path / "jacobian.png")
    assert (tmp_path / "jacobian.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = report._repr_html_()
    assert "src=\"data:image/png;base64,iVBORw0KGgo" in page and "FAILED" in page and "1/9" in page


def test_jacobian_figure_when_ad_and_fd_agree_exactly(monkeypatch):
    def linear(x, y):
        y[0] = 2.0 * x[0]
        y[1] = x[1]

    monkeypatch.setattr(gc, "_ad_jacobian", lambda f, x, m: np.array([[2.0, 0.0], [0.0, 1.0]]))
    report = gc.jacobian_check(linear, np.array([0.5, 0.25]), out_size=2)
    assert report.passed and report.max_abs_error == 0.0
    assert len([axis for axis in report.figure().axes if axis.get_images()]) == 3


def _ad_and_fd(axis):
    lines = {line.get_label(): line for line in axis.get_lines()}
    return next(v for k, v in lines.items() if k.startswith("AD")), lines["central FD"]


@pytest.mark.parametrize("which", ["host", "kernel"])
def test_ad_is_drawn_above_fd_and_unlike_it_so_neither_hides_the_other(which, correct_ad):
    if which == "host":
        figure = gc.gradcheck(f, 0.7, 2.0).figure(arg="x")
    else:
        figure = gc.gradcheck_kernel(GradientKernel(), 50, *_arrays(), primal=f, max_points=10).figure()
    ad, fd = _ad_and_fd(figure.axes[0])
    assert ad.get_zorder() > fd.get_zorder()
    assert fd.get_markerfacecolor() == "none" and fd.get_linestyle() == "None"
    # AD is a line or filled dots smaller than the FD rings: it shows inside them.
    assert ad.get_linestyle() == "-" or (ad.get_markersize() < fd.get_markersize()
                                          and ad.get_markerfacecolor() != "none")


def test_report_html_takes_the_themes_colours_so_the_header_reads_in_dark_mode(correct_ad):
    page = gc.gradcheck(f, 0.7, 2.0)._repr_html_()
    header = re.search(r'<th style="([^"]*)"', page).group(1)
    assert "background-color: var(--jp-layout-color2" in header
    assert "color: var(--jp-content-font-color1" in header
    assert "background-color: #ffffff" not in page and "color: #1f2328" not in page
