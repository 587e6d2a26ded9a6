"""The display of gradient checks: the verdict, a table of errors, and the plots.

The reports (`gpuad.gradient_check`) are data: the numbers and the verdict. This module draws
them: HTML through the shared renderers (`render.table`, the palette's theme colours), a text
table for terminals, and matplotlib figures. The reports reach it through the view that
`gpuad.notebook.display` installs (`gradient_check.def_view`), never by importing it.
"""
from __future__ import annotations

import base64
import html
import io

import numpy as np

from gpuad.gradient_check import GradcheckReport, JacobianReport, KernelGradcheckReport, Report, errors
from gpuad.notebook import palette, render
from gpuad.notebook.extras import missing_extra_refused, require
from gpuad.notebook.text import text_table

# ---------------------------------------------------------------- HTML


def report_html(report: Report) -> str:
    """The verdict (coloured), the table of errors and the default figure, in the theme's colours."""
    colour = palette.PASSED if report.passed else palette.FAILED
    return (
        f'<div class="gpuad-gradcheck" style="background-color: {palette.BACKGROUND}; '
        f"color: {palette.FOREGROUND}; border: 1px solid {palette.RULE}; border-radius: 4px; padding: 8px; "
        f'font-family: sans-serif">'
        f'<p style="margin: 0 0 6px 0; color: {colour}; font-weight: bold">{html.escape(repr(report))}</p>'
        f"{table_html(report)}"
        '<img style="margin-top: 6px; max-width: 100%" '
        f'src="data:image/png;base64,{png_base64(report.figure())}"/>'
        "</div>"
    )


def table_html(report: Report) -> str:
    if isinstance(report, JacobianReport):
        return _jacobian_table(report)
    rows = [[c.name, f"{c.ad:.8g}", f"{c.fd:.8g}", f"{c.step:.3g}", f"{c.max_abs_error:.3g}",
             f"{c.max_rel_error:.3g}", str(c.points), _verdict(c.passed, c.failures, c.points)]
            for c in report.checks]
    header = ["argument", "AD", "FD", "step", "max abs err", "max rel err", "points", "result"]
    return render.table(header, rows, code_columns=frozenset(range(1, 6)))


def _verdict(passed: bool, failures: int, points: int) -> render.Styled:
    if passed:
        return render.Styled("ok", f"color: {palette.PASSED}; font-weight: bold")
    return render.Styled(f"FAIL {failures}/{points}", f"color: {palette.FAILED}; font-weight: bold")


def _jacobian_table(report: JacobianReport) -> str:
    worst = "" if report.worst is None else "∂y[{}]/∂x[{}]".format(*report.worst)
    items = (("shape", "{}×{}".format(*report.shape)), ("max abs err", f"{report.max_abs_error:.3g}"),
             ("max rel err", f"{report.max_rel_error:.3g}"), ("worst entry", worst),
             ("failing entries", f"{report.failures}/{report.ad.size}"))
    return render.table([k for k, _ in items], [[v for _, v in items]])


def png_base64(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------- text


def gradcheck_text(report: Report) -> str:
    """A gradcheck report as text: verdict, tolerance, and each argument's errors.

    The report's own repr is one deterministic line (for nbval); a terminal
    has no HTML table, so this is the table it shows instead.
    """
    tolerance = (f"tolerance: |AD - FD| <= atol + rtol * |FD| with rtol={report.rtol:g}, "
                 f"atol={report.atol:g}")
    rows = [[c.name, str(c.points), "ok" if c.passed else f"FAIL {c.failures}/{c.points}",
             f"{c.max_abs_error:.3g}", f"{c.max_rel_error:.3g}",
             "" if c.worst_point is None else str(c.worst_point), f"{c.ad:.8g}", f"{c.fd:.8g}"]
            for c in report.checks]
    # A kernel's check compares many points: its AD and FD are those at the worst one.
    at = " at worst" if any(c.worst_point is not None for c in report.checks) else ""
    table = text_table(["argument", "points", "result", "max abs err", "max rel err", "worst point",
                        f"AD{at}", f"FD{at}"], rows)
    return f"{report!r}\n{tolerance}\n{table}"


# ---------------------------------------------------------------- figures


def figure(report: Report, *args, **kwargs):
    """The report's default figure (what `report.figure(...)` returns)."""
    if isinstance(report, GradcheckReport):
        return sweep_figure(report, *args, **kwargs)
    if isinstance(report, KernelGradcheckReport):
        return points_figure(report, *args, **kwargs)
    if isinstance(report, JacobianReport):
        return jacobian_figure(report, *args, **kwargs)
    raise TypeError(f"no figure for {type(report).__name__}")


def _new_figure():
    # A bare Figure (no pyplot): no global state, no GUI backend, nothing left open.
    Figure = require("matplotlib.figure", "savefig and gradient plots").Figure

    figure = Figure(figsize=(7, 5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    return figure, top, bottom


def sweep_figure(report: GradcheckReport, arg: int | str = 0, lo: float | None = None,
                 hi: float | None = None, num: int = 101):
    """AD and FD derivative over a 1-D sweep of one argument, the error on a log scale beneath."""
    sweep = report.sweep(arg, lo, hi, num)
    figure, top, bottom = _new_figure()
    _plot_derivatives(top, sweep.xs, sweep.ad, sweep.fd, "AD")
    top.axvline(sweep.x0, color=palette.PLOT_GUIDE, linewidth=1, linestyle=":")
    top.set_ylabel(f"∂f/∂{sweep.name}")
    top.set_title(f"gradcheck {report.title}: sweep of {sweep.name}")
    top.legend(loc="best", fontsize="small")
    _plot_errors(bottom, sweep.xs, sweep.ad, sweep.fd, report.rtol, report.atol, sweep.name)
    return figure


def points_figure(report: KernelGradcheckReport, arg: int | str = 0, x: str = "input"):
    """AD (what the kernel wrote) and FD per checked point; `x` is "input" or "index"."""
    name = report.checks[arg].name if isinstance(arg, int) else arg
    data = report.data[name]
    xs = data.inputs if x == "input" else data.points.astype(float)
    order = np.argsort(xs, kind="stable")
    figure, top, bottom = _new_figure()
    _plot_derivatives(top, xs[order], data.ad[order], data.fd[order], "AD (kernel)", ad_line=False)
    top.set_ylabel(f"∂primal/∂{name}")
    top.set_title(f"gradcheck {report.title}: {len(data.points)} points")
    top.legend(loc="best", fontsize="small")
    _plot_errors(bottom, xs[order], data.ad[order], data.fd[order], report.rtol, report.atol,
                 name if x == "input" else "point")
    return figure


def _plot_derivatives(axis, x, ad, fd, ad_label: str, *, ad_line: bool = True) -> None:
    """FD under AD: FD as larger hollow circles, AD as a line or small filled dots drawn above them.

    Where they agree the AD dots sit inside the FD rings, so both stay visible
    (FD drawn last used to hide AD completely).
    """
    style = {"linestyle": "-", "linewidth": 1.5} if ad_line else {"linestyle": "none", "marker": "o",
                                                                    "markersize": 3}
    axis.plot(x, ad, color=palette.PLOT_AD, zorder=3, label=ad_label, **style)
    axis.plot(x, fd, "o", color=palette.PLOT_FD, markersize=7, markerfacecolor="none", markeredgewidth=1.2,
              linestyle="none", zorder=2, label="central FD")


def _plot_errors(axis, x, ad, fd, rtol, atol, xlabel: str) -> None:
    absolute, _, _ = errors(ad, fd, rtol, atol)
    shown = np.where(absolute > 0, absolute, np.nan)  # log scale: exact agreement has no height
    axis.semilogy(x, shown, ".", color=palette.PLOT_ERROR, markersize=3, label="|AD − FD|")
    axis.semilogy(x, atol + rtol * np.abs(np.asarray(fd, dtype=float)), "--", color=palette.PLOT_TOLERANCE,
                  linewidth=1, label="tolerance")
    if not np.any(absolute > 0):
        axis.text(0.5, 0.5, "AD and FD agree exactly", transform=axis.transAxes, ha="center")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("error")
    axis.legend(loc="best", fontsize="small")


def jacobian_figure(report: JacobianReport):
    """Heat maps side by side: AD Jacobian, FD Jacobian (shared colour scale), |AD − FD| (log scale)."""
    with missing_extra_refused("Jacobian heat maps"):
        from matplotlib import colormaps
        from matplotlib.colors import LogNorm
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(13, 4), layout="constrained")
    axes = figure.subplots(1, 3)
    finite = np.concatenate([report.ad[np.isfinite(report.ad)], report.fd[np.isfinite(report.fd)]])
    limit = float(np.max(np.abs(finite), initial=0.0)) or 1.0
    for axis, values, title in ((axes[0], report.ad, "AD Jacobian (reverse)"),
                                (axes[1], report.fd, "FD Jacobian (central)")):
        image = axis.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto",
                            interpolation="nearest")
        figure.colorbar(image, ax=axis, label="∂y[j]/∂x[i]")
        axis.set_title(title)
    absolute = report.absolute_error
    shown = np.ma.masked_where(~(np.isfinite(absolute) & (absolute > 0)), absolute)
    cmap = colormaps["viridis"].with_extremes(bad=palette.PLOT_MISSING)
    if shown.count():
        low, high = float(shown.min()), float(shown.max())
        norm = LogNorm(vmin=low if low < high else high / 10, vmax=high)
        image = axes[2].imshow(shown, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    else:  # exact agreement has no height on a log scale
        image = axes[2].imshow(np.zeros_like(absolute), cmap=cmap, vmin=0, vmax=1, aspect="auto",
                               interpolation="nearest")
        axes[2].text(0.5, 0.5, "AD and FD agree exactly", transform=axes[2].transAxes, ha="center")
    figure.colorbar(image, ax=axes[2], label="|AD − FD|")
    rows, columns = np.nonzero(~report.ok)
    if len(rows):
        axes[2].plot(columns, rows, "x", color=palette.PLOT_ERROR, markersize=6, label="outside tolerance")
        axes[2].legend(loc="upper right", fontsize="small")
    axes[2].set_title("|AD − FD|" + ("" if report.passed else f" ({report.failures} failing)"))
    for axis in axes:
        axis.set_xlabel("input index")
        axis.set_ylabel("output index")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(repr(report), fontsize="medium")
    return figure
