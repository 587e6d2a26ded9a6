"""Check automatic derivatives against central finite differences.

`gradcheck(f, *args)` differentiates a host scalar function with
`autodiff(Reverse, …)` and compares every float argument's derivative with
a central difference. `gradcheck_kernel(kernel, n, *args, primal=…)` runs a
gradient kernel over `n` points and compares what it wrote, point by point,
with central differences of the plain Python `primal`. Both return a report
that prints a deterministic verdict, renders as a table with a plot, and
saves its figure. `jacobian_check(f, x, out_size=m)` does the same for the
Jacobian of an array-to-array `f(x, y)`, drawn as heat maps.

Step size: `h = eps · max(1, |x|)` with `eps = cbrt(machine epsilon of x's
dtype)` unless given — the step that balances the truncation error (h²) of
a central difference against its rounding error (ε/h).
"""
from __future__ import annotations

import base64
import html
import inspect
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

# Default tolerances per dtype: (rtol, atol), numpy.isclose semantics.
TOLERANCES = {np.dtype(np.float64): (1e-5, 1e-8), np.dtype(np.float32): (1e-2, 1e-4)}


def _ad_gradient(f: Callable, args: Sequence) -> tuple:
    """Reverse-mode derivatives of scalar `f` at `args`: one per argument, None if inactive.

    The single place gradcheck calls the AD engine (tests replace it).
    """
    from gpuad.api import Active, Const, Reverse, autodiff

    wrapped = [Active(a) if _is_float(a) else Const(a) for a in args]
    (derivatives,) = autodiff(Reverse, f, *wrapped)
    return tuple(derivatives)


# ---------------------------------------------------------------- numerics

def _is_float(value) -> bool:
    return isinstance(value, (float, np.floating)) and not isinstance(value, bool)


def _dtype_of(value) -> np.dtype:
    dtype = getattr(value, "dtype", None)
    return np.dtype(dtype) if dtype is not None and np.dtype(dtype).kind == "f" else np.dtype(np.float64)


def step_size(x: float, dtype: np.dtype | None = None, eps: float | None = None) -> float:
    """The central-difference step for `x` (float64 unless `dtype`), exactly representable around `x`."""
    dtype = np.dtype(np.float64) if dtype is None else np.dtype(dtype)
    relative = float(np.cbrt(np.finfo(dtype).eps)) if eps is None else eps
    scalar = dtype.type
    h = scalar(relative * max(1.0, abs(float(x))))
    # (x + h) - x is the step the arithmetic actually takes; dividing by it avoids a bias.
    return float((scalar(x) + h) - scalar(x))


def central_difference(f: Callable, args: Sequence, index: int, h: float) -> float:
    """(f(…, x+h, …) - f(…, x-h, …)) / 2h for argument `index`."""
    x = args[index]
    kind = type(x) if isinstance(x, np.floating) else float
    up, down = list(args), list(args)
    up[index], down[index] = kind(x + h), kind(x - h)
    return (float(f(*up)) - float(f(*down))) / (2.0 * h)


def _tolerances(dtype: np.dtype, rtol: float | None, atol: float | None) -> tuple[float, float]:
    default_rtol, default_atol = TOLERANCES.get(np.dtype(dtype), TOLERANCES[np.dtype(np.float64)])
    return (default_rtol if rtol is None else rtol), (default_atol if atol is None else atol)


def _errors(ad: np.ndarray, fd: np.ndarray, rtol: float, atol: float):
    """Absolute error, relative error (to |fd|) and the isclose verdict, elementwise."""
    ad, fd = np.asarray(ad, dtype=np.float64), np.asarray(fd, dtype=np.float64)
    absolute = np.abs(ad - fd)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(absolute == 0, 0.0, absolute / np.abs(fd))
    ok = np.isfinite(absolute) & (absolute <= atol + rtol * np.abs(fd))
    return absolute, relative, ok


# ---------------------------------------------------------------- reports

@dataclass(frozen=True)
class ArgumentCheck:
    """The comparison for one differentiated argument."""

    name: str
    ad: float  # host: the derivative; kernel: the AD value at the worst point
    fd: float
    step: float
    max_abs_error: float
    max_rel_error: float
    passed: bool
    points: int = 1
    failures: int = 0
    worst_point: int | None = None  # kernel only: index of the largest error


class _Report:
    """Verdict, table, figure and rich display shared by both reports."""

    title: str
    checks: list[ArgumentCheck]
    rtol: float
    atol: float

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def max_abs_error(self) -> float:
        return max((c.max_abs_error for c in self.checks), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.checks), default=0.0)

    def check(self, name: str) -> ArgumentCheck:
        return next(c for c in self.checks if c.name == name)

    def __repr__(self) -> str:
        # Deterministic (no error magnitudes) so that nbval can compare it.
        verdict = "PASSED" if self.passed else "FAILED"
        failed = [c.name for c in self.checks if not c.passed]
        detail = f" ({', '.join(failed)} outside tolerance)" if failed else ""
        return (f"gradcheck {self.title}: {verdict}{detail} — {len(self.checks)} argument(s), "
                f"rtol={self.rtol:g}, atol={self.atol:g}")

    def details(self) -> str:
        """A text table of every argument's errors."""
        lines = [repr(self)]
        for c in self.checks:
            lines.append(f"  {c.name}: AD {c.ad:.10g}, FD {c.fd:.10g} (h={c.step:.3g}), max abs err "
                         f"{c.max_abs_error:.3g}, max rel err {c.max_rel_error:.3g}, "
                         f"{'ok' if c.passed else f'FAIL ({c.failures}/{c.points} points)'}")
        return "\n".join(lines)

    def figure(self, *args, **kwargs):
        raise NotImplementedError

    def savefig(self, path, **kwargs) -> None:
        """Save the default figure; the format follows the suffix (.png, .svg, .pdf)."""
        self.figure().savefig(path, bbox_inches="tight", **kwargs)

    def _png_base64(self) -> str:
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=96, bbox_inches="tight")
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def _table_html(self) -> str:
        cell = CELL_STYLE
        header = "".join(f'<th style="{cell}; {HEADER_STYLE}">{h}</th>' for h in
                         ("argument", "AD", "FD", "step", "max abs err", "max rel err", "points", "result"))
        rows = []
        for c in self.checks:
            verdict = ('<span style="color: #1a7f37; font-weight: bold">ok</span>' if c.passed else
                       f'<span style="color: #cf222e; font-weight: bold">FAIL {c.failures}/{c.points}</span>')
            values = [html.escape(c.name), f"{c.ad:.8g}", f"{c.fd:.8g}", f"{c.step:.3g}",
                      f"{c.max_abs_error:.3g}", f"{c.max_rel_error:.3g}", str(c.points), verdict]
            rows.append("<tr>" + "".join(f'<td style="{cell}">{v}</td>' for v in values) + "</tr>")
        return (f'<table style="{TABLE_STYLE}">'
                f"<thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else "#cf222e"
        return (
            f'<div class="gpuad-gradcheck" style="background-color: {BACKGROUND}; color: {FOREGROUND}; '
            f'border: 1px solid {RULE}; border-radius: 4px; padding: 8px; font-family: sans-serif">'
            f'<p style="margin: 0 0 6px 0; color: {colour}; font-weight: bold">{html.escape(repr(self))}</p>'
            f"{self._table_html()}"
            '<img style="margin-top: 6px; max-width: 100%" '
            f'src="data:image/png;base64,{self._png_base64()}"/>'
            "</div>"
        )


# The theme's colours (light fallbacks outside JupyterLab): the header was white on light grey in
# JupyterLab's dark theme, whose text colour it inherited.
BACKGROUND = "var(--jp-layout-color0, #ffffff)"
FOREGROUND = "var(--jp-content-font-color1, #1f2328)"
RULE = "var(--jp-border-color2, #d0d7de)"
CELL_STYLE = f"border: 1px solid {RULE}; padding: 2px 6px; text-align: right; color: {FOREGROUND}"
HEADER_STYLE = "background-color: var(--jp-layout-color2, #eaeef2)"
TABLE_STYLE = "border-collapse: collapse; table-layout: auto; width: auto; font-size: 12px"


def _new_figure():
    # A bare Figure (no pyplot): no global state, no GUI backend, nothing left open.
    from gpuad.notebook.extras import require

    Figure = require("matplotlib.figure", "savefig and gradient plots").Figure

    figure = Figure(figsize=(7, 5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    return figure, top, bottom


def _plot_derivatives(axis, x, ad, fd, ad_label: str, *, ad_line: bool = True) -> None:
    """FD under AD: FD as larger hollow circles, AD as a line or small filled dots drawn above them.

    Where they agree the AD dots sit inside the FD rings, so both stay visible
    (FD drawn last used to hide AD completely).
    """
    style = {"linestyle": "-", "linewidth": 1.5} if ad_line else {"linestyle": "none", "marker": "o",
                                                                    "markersize": 3}
    axis.plot(x, ad, color="tab:blue", zorder=3, label=ad_label, **style)
    axis.plot(x, fd, "o", color="tab:orange", markersize=7, markerfacecolor="none", markeredgewidth=1.2,
              linestyle="none", zorder=2, label="central FD")


def _plot_errors(axis, x, ad, fd, rtol, atol, xlabel: str) -> None:
    absolute, _, _ = _errors(ad, fd, rtol, atol)
    shown = np.where(absolute > 0, absolute, np.nan)  # log scale: exact agreement has no height
    axis.semilogy(x, shown, ".", color="tab:red", markersize=3, label="|AD − FD|")
    axis.semilogy(x, atol + rtol * np.abs(np.asarray(fd, dtype=float)), "--", color="0.5", linewidth=1,
                  label="tolerance")
    if not np.any(absolute > 0):
        axis.text(0.5, 0.5, "AD and FD agree exactly", transform=axis.transAxes, ha="center")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("error")
    axis.legend(loc="best", fontsize="small")


@dataclass(repr=False)
class GradcheckReport(_Report):
    """AD against central differences for a host function at one point."""

    function: Callable
    args: tuple
    checks: list[ArgumentCheck]
    rtol: float
    atol: float
    eps: float | None = None
    names: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"of {getattr(self.function, '__qualname__', repr(self.function))}"

    def figure(self, arg: int | str = 0, lo: float | None = None, hi: float | None = None, num: int = 101):
        """AD and FD derivative over a 1-D sweep of one argument, the error on a log scale beneath."""
        index = self._float_index(arg)
        x0, dtype = float(self.args[index]), _dtype_of(self.args[index])
        half = max(1.0, abs(x0))
        xs = np.linspace(x0 - half if lo is None else lo, x0 + half if hi is None else hi, num)
        ad, fd = np.empty(num), np.empty(num)
        for k, x in enumerate(xs):
            point = list(self.args)
            kind = type(self.args[index]) if isinstance(self.args[index], np.floating) else float
            point[index] = kind(x)
            ad[k], fd[k] = self._derivatives_at(point, index, dtype)
        figure, top, bottom = _new_figure()
        name = self.names[index]
        _plot_derivatives(top, xs, ad, fd, "AD")
        top.axvline(x0, color="0.6", linewidth=1, linestyle=":")
        top.set_ylabel(f"∂f/∂{name}")
        top.set_title(f"gradcheck {self.title}: sweep of {name}")
        top.legend(loc="best", fontsize="small")
        _plot_errors(bottom, xs, ad, fd, self.rtol, self.atol, name)
        return figure

    def _derivatives_at(self, point: list, index: int, dtype: np.dtype) -> tuple[float, float]:
        try:
            ad = _ad_gradient(self.function, point)[index]
            h = step_size(point[index], dtype, self.eps)
            return float(ad), central_difference(self.function, point, index, h)
        except (ArithmeticError, ValueError):  # outside f's domain: leave a gap in the plot
            return math.nan, math.nan

    def _float_index(self, arg: int | str) -> int:
        index = self.names.index(arg) if isinstance(arg, str) else arg
        if not _is_float(self.args[index]):
            raise ValueError(f"argument {self.names[index]!r} is not a float; only float arguments are swept")
        return index


def _parameter_names(f: Callable, count: int) -> list[str]:
    try:
        names = list(inspect.signature(f).parameters)
    except (TypeError, ValueError):
        names = []
    return [names[k] if k < len(names) else f"arg{k}" for k in range(count)]


def gradcheck(f: Callable, *args, rtol: float | None = None, atol: float | None = None,
              eps: float | None = None) -> GradcheckReport:
    """Compare `autodiff(Reverse, f, Active(x)…)` with central differences at `args`.

    Float arguments are differentiated (Active); others are passed as Const.
    `eps` is the relative step (default cbrt of the dtype's epsilon);
    `rtol`/`atol` default per dtype (`TOLERANCES`). The report's `passed`
    is numpy.isclose(AD, FD, rtol, atol) for every float argument.
    """
    float_indices = [k for k, a in enumerate(args) if _is_float(a)]
    if not float_indices:
        raise ValueError("gradcheck needs at least one float argument to differentiate")
    dtype = np.result_type(*[_dtype_of(args[k]) for k in float_indices])
    rtol, atol = _tolerances(dtype, rtol, atol)
    names = _parameter_names(f, len(args))
    ad_all = _ad_gradient(f, list(args))
    checks = []
    for k in float_indices:
        h = step_size(args[k], _dtype_of(args[k]), eps)
        fd = central_difference(f, args, k, h)
        ad = float(ad_all[k])
        absolute, relative, ok = _errors(np.array([ad]), np.array([fd]), rtol, atol)
        checks.append(ArgumentCheck(names[k], ad, fd, h, float(absolute[0]), float(relative[0]), bool(ok[0]),
                                    failures=int(not ok[0])))
    return GradcheckReport(f, tuple(args), checks, rtol, atol, eps, names)


# ---------------------------------------------------------------- kernels

@dataclass
class PointData:
    """Per-point values of one differentiated input (for the figure)."""

    points: np.ndarray
    inputs: np.ndarray
    ad: np.ndarray
    fd: np.ndarray


@dataclass(repr=False)
class KernelGradcheckReport(_Report):
    """A gradient kernel's output against central differences of its primal, per point."""

    kernel_name: str
    checks: list[ArgumentCheck]
    rtol: float
    atol: float
    data: dict[str, PointData] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"of kernel {self.kernel_name}"

    def figure(self, arg: int | str = 0, x: str = "input"):
        """AD (what the kernel wrote) and FD per checked point; `x` is "input" or "index"."""
        name = self.checks[arg].name if isinstance(arg, int) else arg
        data = self.data[name]
        xs = data.inputs if x == "input" else data.points.astype(float)
        order = np.argsort(xs, kind="stable")
        figure, top, bottom = _new_figure()
        _plot_derivatives(top, xs[order], data.ad[order], data.fd[order], "AD (kernel)", ad_line=False)
        top.set_ylabel(f"∂primal/∂{name}")
        top.set_title(f"gradcheck {self.title}: {len(data.points)} points")
        top.legend(loc="best", fontsize="small")
        _plot_errors(bottom, xs[order], data.ad[order], data.fd[order], self.rtol, self.atol,
                     name if x == "input" else "point")
        return figure


def _to_host(array) -> np.ndarray:
    """A numpy view of a host, numba-cuda device or CuPy array."""
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    if hasattr(array, "get") and not isinstance(array, np.ndarray):
        return array.get()
    return np.asarray(array)


def _positions(spec, names: list[str], what: str) -> list[int]:
    """Argument positions from an int, a parameter name, or a sequence of them."""
    items = [spec] if isinstance(spec, (int, str)) else list(spec)
    positions = []
    for item in items:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"{what}={item!r} is not a parameter of the kernel ({', '.join(names)})")
            positions.append(names.index(item))
        else:
            positions.append(item % len(names))
    return positions


def gradcheck_kernel(kernel, n: int, *args, primal: Callable, wrt=0, out=-1, inputs=None,
                     rtol: float | None = None, atol: float | None = None, eps: float | None = None,
                     max_points: int = 1000, launch: bool = True) -> KernelGradcheckReport:
    """Launch a gradient kernel and check what it wrote against central differences.

    The kernel computes, for each point `i < n`, the derivative of
    `primal(*[a[i] for a in inputs])` and stores it in `out[i]`:

        @gpuad.kernel
        def grad_f(xs, ws, dxs):
            i = gpuad.thread_index()
            if i < xs.shape[0]:
                (dx, dw), = autodiff(Reverse, f, Active(xs[i]), Active(ws[i]))
                dxs[i] = dx

        gradcheck_kernel(grad_f, n, xs, ws, dxs, primal=f, wrt="xs", out="dxs")

    `wrt` and `out` name kernel arguments (position or parameter name; a
    sequence to check several gradients at once, paired in order). `inputs`
    are the arrays whose i-th elements are `primal`'s arguments, in order;
    by default every array argument that is not an `out`. Up to `max_points`
    evenly spaced points are compared. With `launch=False` the kernel is
    not run and the outputs are read as they are.
    """
    names = _parameter_names(getattr(kernel, "pyfunc", kernel), len(args))
    wrt_positions, out_positions = _positions(wrt, names, "wrt"), _positions(out, names, "out")
    if len(wrt_positions) != len(out_positions):
        raise ValueError(f"wrt and out must pair up: {len(wrt_positions)} wrt, {len(out_positions)} out")
    # By default the primal takes the i-th element of every array that is not an output.
    if inputs is None:
        input_positions = [k for k, a in enumerate(args)
                           if k not in out_positions and getattr(a, "ndim", 0) >= 1]
    else:
        input_positions = _positions(inputs, names, "inputs")
    if launch:
        kernel.launch(n, *args)
    host = {k: _to_host(args[k]) for k in {*input_positions, *out_positions}}
    points = np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(np.int64))
    dtype = np.result_type(*[host[k].dtype for k in input_positions])
    rtol, atol = _tolerances(dtype if dtype.kind == "f" else np.dtype(np.float64), rtol, atol)
    checks, data = [], {}
    for w, o in zip(wrt_positions, out_positions, strict=True):
        if w not in input_positions:
            raise ValueError(f"wrt={names[w]!r} is not one of the primal's inputs")
        slot = input_positions.index(w)
        check, data[names[w]] = _check_kernel_argument(
            primal, host, input_positions, slot, host[o], points, eps, rtol, atol, names[w])
        checks.append(check)
    name = getattr(kernel, "name", getattr(kernel, "__name__", "kernel"))
    return KernelGradcheckReport(name, checks, rtol, atol, data)


def _check_kernel_argument(primal, host, input_positions, slot, gradient, points, eps, rtol, atol, name):
    """Compare one output array with central differences at `points`."""
    inputs_dtype = host[input_positions[slot]].dtype
    fd = np.empty(len(points))
    for k, i in enumerate(points):
        point_args = [host[p][i] for p in input_positions]
        h = step_size(point_args[slot], np.dtype(inputs_dtype), eps)
        fd[k] = central_difference(primal, point_args, slot, h)
    ad = np.asarray(gradient[points], dtype=np.float64)
    absolute, relative, ok = _errors(ad, fd, rtol, atol)
    worst = int(np.nanargmax(np.where(np.isfinite(absolute), absolute, np.inf))) if len(points) else 0
    x = host[input_positions[slot]]
    check = ArgumentCheck(
        name, float(ad[worst]), float(fd[worst]), step_size(x[points[worst]], np.dtype(inputs_dtype), eps),
        float(np.max(absolute)), float(np.max(relative)), bool(np.all(ok)),
        points=len(points), failures=int(np.sum(~ok)), worst_point=int(points[worst]),
    )
    return check, PointData(points, np.asarray(x[points], dtype=np.float64), ad, fd)


# ---------------------------------------------------------------- Jacobians

def _ad_jacobian(f: Callable, x: np.ndarray, out_size: int) -> np.ndarray:
    """Reverse-mode Jacobian of array-to-array `f(x, y)`, one `autodiff` call per output.

    Seeding the written output's shadow with e_j (Enzyme semantics: the shadow
    of a written element is its seed) leaves row j of the Jacobian in `dx`.
    The single place jacobian_check calls the AD engine (tests replace it).
    """
    from gpuad.api import Duplicated, Reverse, autodiff

    jacobian = np.empty((out_size, x.size), dtype=np.float64)
    for j in range(out_size):
        dx = np.zeros_like(x)
        y, dy = np.zeros(out_size, dtype=x.dtype), np.zeros(out_size, dtype=x.dtype)
        dy[j] = 1
        autodiff(Reverse, f, Duplicated(x.copy(), dx), Duplicated(y, dy))
        jacobian[j] = dx
    return jacobian


def _fd_jacobian(f: Callable, x: np.ndarray, out_size: int,
                 eps: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference Jacobian of `f(x, y)` (one column per input) and the step per input."""
    jacobian = np.empty((out_size, x.size), dtype=np.float64)
    steps = np.empty(x.size)
    for i in range(x.size):
        h = steps[i] = step_size(x[i], x.dtype, eps)
        columns = []
        for sign in (1, -1):
            shifted, y = x.copy(), np.zeros(out_size, dtype=x.dtype)
            shifted[i] = x[i] + x.dtype.type(sign * h)
            f(shifted, y)
            columns.append(np.asarray(y, dtype=np.float64))
        jacobian[:, i] = (columns[0] - columns[1]) / (2.0 * h)
    return jacobian, steps


@dataclass(repr=False)
class JacobianReport(_Report):
    """A reverse-mode Jacobian against central differences of an array-to-array function."""

    function: Callable
    x: np.ndarray
    ad: np.ndarray  # (out_size, x.size): row j is ∂y[j]/∂x
    fd: np.ndarray
    steps: np.ndarray  # the central-difference step per input
    rtol: float
    atol: float
    eps: float | None = None
    checks: list[ArgumentCheck] = field(default_factory=list)  # unused: the comparison is per entry

    @property
    def title(self) -> str:
        return f"of {getattr(self.function, '__qualname__', repr(self.function))}"

    @property
    def shape(self) -> tuple[int, int]:
        return self.ad.shape

    @property
    def absolute_error(self) -> np.ndarray:
        return _errors(self.ad, self.fd, self.rtol, self.atol)[0]

    @property
    def relative_error(self) -> np.ndarray:
        return _errors(self.ad, self.fd, self.rtol, self.atol)[1]

    @property
    def ok(self) -> np.ndarray:
        """Elementwise verdict, numpy.isclose(AD, FD, rtol, atol)."""
        return _errors(self.ad, self.fd, self.rtol, self.atol)[2]

    @property
    def passed(self) -> bool:
        return bool(np.all(self.ok))

    @property
    def failures(self) -> int:
        return int(np.sum(~self.ok))

    @property
    def max_abs_error(self) -> float:
        return float(np.max(self.absolute_error, initial=0.0))

    @property
    def max_rel_error(self) -> float:
        return float(np.max(self.relative_error, initial=0.0))

    @property
    def worst(self) -> tuple[int, int] | None:
        """(output, input) index of the largest absolute error (a non-finite one counts as largest)."""
        if self.ad.size == 0:
            return None
        absolute = np.where(np.isfinite(self.absolute_error), self.absolute_error, np.inf)
        j, i = np.unravel_index(int(np.argmax(absolute)), absolute.shape)
        return int(j), int(i)

    def __repr__(self) -> str:
        # Deterministic (no error magnitudes) so that nbval can compare it.
        out_size, in_size = self.shape
        verdict = ("PASSED" if self.passed else
                   f"FAILED ({self.failures} of {self.ad.size} entries outside tolerance)")
        return (f"jacobian_check {self.title}: {verdict} — {out_size}×{in_size} Jacobian (outputs × inputs), "
                f"rtol={self.rtol:g}, atol={self.atol:g}")

    def details(self) -> str:
        """The verdict, the largest errors and where the worst entry is."""
        lines = [repr(self), f"  max abs err {self.max_abs_error:.3g}, max rel err {self.max_rel_error:.3g}"]
        if self.worst is not None:
            j, i = self.worst
            lines.append(f"  worst entry ∂y[{j}]/∂x[{i}]: AD {self.ad[j, i]:.10g}, FD {self.fd[j, i]:.10g} "
                         f"(h={self.steps[i]:.3g})")
        return "\n".join(lines)

    def _table_html(self) -> str:
        cell = CELL_STYLE
        worst = "" if self.worst is None else "∂y[{}]/∂x[{}]".format(*self.worst)
        items = (("shape", "{}×{}".format(*self.shape)), ("max abs err", f"{self.max_abs_error:.3g}"),
                 ("max rel err", f"{self.max_rel_error:.3g}"), ("worst entry", worst),
                 ("failing entries", f"{self.failures}/{self.ad.size}"))
        header = "".join(f'<th style="{cell}; {HEADER_STYLE}">{k}</th>' for k, _ in items)
        row = "".join(f'<td style="{cell}">{html.escape(v)}</td>' for _, v in items)
        return (f'<table style="{TABLE_STYLE}">'
                f"<thead><tr>{header}</tr></thead><tbody><tr>{row}</tr></tbody></table>")

    def figure(self):
        """Heat maps side by side: AD Jacobian, FD Jacobian (shared colour scale), |AD − FD| (log scale)."""
        from gpuad.notebook.extras import missing_extra_refused

        with missing_extra_refused("Jacobian heat maps"):
            from matplotlib import colormaps
            from matplotlib.colors import LogNorm
            from matplotlib.figure import Figure
            from matplotlib.ticker import MaxNLocator

        figure = Figure(figsize=(13, 4), layout="constrained")
        axes = figure.subplots(1, 3)
        finite = np.concatenate([self.ad[np.isfinite(self.ad)], self.fd[np.isfinite(self.fd)]])
        limit = float(np.max(np.abs(finite), initial=0.0)) or 1.0
        for axis, values, title in ((axes[0], self.ad, "AD Jacobian (reverse)"),
                                    (axes[1], self.fd, "FD Jacobian (central)")):
            image = axis.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto",
                                interpolation="nearest")
            figure.colorbar(image, ax=axis, label="∂y[j]/∂x[i]")
            axis.set_title(title)
        absolute = self.absolute_error
        shown = np.ma.masked_where(~(np.isfinite(absolute) & (absolute > 0)), absolute)
        cmap = colormaps["viridis"].with_extremes(bad="0.85")
        if shown.count():
            low, high = float(shown.min()), float(shown.max())
            norm = LogNorm(vmin=low if low < high else high / 10, vmax=high)
            image = axes[2].imshow(shown, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        else:  # exact agreement has no height on a log scale
            image = axes[2].imshow(np.zeros_like(absolute), cmap=cmap, vmin=0, vmax=1, aspect="auto",
                                   interpolation="nearest")
            axes[2].text(0.5, 0.5, "AD and FD agree exactly", transform=axes[2].transAxes, ha="center")
        figure.colorbar(image, ax=axes[2], label="|AD − FD|")
        rows, columns = np.nonzero(~self.ok)
        if len(rows):
            axes[2].plot(columns, rows, "x", color="tab:red", markersize=6, label="outside tolerance")
            axes[2].legend(loc="upper right", fontsize="small")
        axes[2].set_title("|AD − FD|" + ("" if self.passed else f" ({self.failures} failing)"))
        for axis in axes:
            axis.set_xlabel("input index")
            axis.set_ylabel("output index")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        figure.suptitle(repr(self), fontsize="medium")
        return figure


def jacobian_check(f: Callable, x, *, out_size: int, rtol: float | None = None, atol: float | None = None,
                   eps: float | None = None) -> JacobianReport:
    """Compare the reverse-mode Jacobian of `f(x, y)` with central differences.

    `f` is a plain Python function that reads the 1-D float array `x` and
    writes the 1-D output `y` (length `out_size`). Row j of the AD Jacobian
    is `dx` after `autodiff(Reverse, f, Duplicated(x.copy(), dx),
    Duplicated(y, dy))` with `dy = e_j`; column i of the FD Jacobian is a
    central difference in `x[i]` (step as in `gradcheck`). `rtol`/`atol`
    default per dtype (`TOLERANCES`); the report passes when every entry is
    numpy.isclose(AD, FD, rtol, atol).
    """
    x = np.asarray(x)
    if x.ndim != 1 or x.dtype.kind != "f":
        raise ValueError(f"jacobian_check needs a 1-D float array x, got {x.dtype} with shape {x.shape}")
    if int(out_size) != out_size or out_size < 1:
        raise ValueError(f"out_size must be a positive integer, got {out_size!r}")
    out_size = int(out_size)
    rtol, atol = _tolerances(x.dtype, rtol, atol)
    ad = np.asarray(_ad_jacobian(f, x.copy(), out_size), dtype=np.float64)
    fd, steps = _fd_jacobian(f, x, out_size, eps)
    return JacobianReport(f, x.copy(), ad, fd, steps, rtol, atol, eps)
