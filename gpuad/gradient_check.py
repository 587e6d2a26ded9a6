"""Check automatic derivatives against central finite differences.

`gradcheck(f, *args)` differentiates a host scalar function with
`autodiff(Reverse, …)` and compares every float argument's derivative with
a central difference. `gradcheck_kernel(kernel, n, *args, primal=…)` runs a
gradient kernel over `n` points and compares what it wrote, point by point,
with central differences of the plain Python `primal`. Both return a report
that prints a deterministic verdict, renders as a table with a plot, and
saves its figure. `jacobian_check(f, x, out_size=m)` does the same for the
Jacobian of an array-to-array `f(x, y)`, drawn as heat maps.

This module is the numerics and the reports (data); their display (the HTML table, the plots)
is `gpuad.notebook.gradcheck_view`, which `gpuad.notebook.display` installs here (`def_view`)
when gpuad is imported: the reports never import it.

Step size: `h = eps · max(1, |x|)` with `eps = cbrt(machine epsilon of x's
dtype)` unless given — the step that balances the truncation error (h²) of
a central difference against its rounding error (ε/h).
"""
from __future__ import annotations

import inspect
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


def errors(ad: np.ndarray, fd: np.ndarray, rtol: float, atol: float):
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


# The display of the reports: an object with `html(report)` and `figure(report, *args, **kwargs)`.
# Installed from above (`gpuad.notebook.display`), as gpuad.host installs api.autodiff's host
# implementation: the reports are data and do not import their view.
_view = None


def def_view(view):
    """Install `view` as every report's display (`_repr_html_`, `figure`, `savefig`)."""
    global _view
    _view = view
    return view


class Report:
    """Verdict and details shared by the reports; HTML and figures come from the installed view."""

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
        """The report as a matplotlib figure (the view's; each report's arguments are its own)."""
        return _installed_view().figure(self, *args, **kwargs)

    def savefig(self, path, **kwargs) -> None:
        """Save the default figure; the format follows the suffix (.png, .svg, .pdf)."""
        self.figure().savefig(path, bbox_inches="tight", **kwargs)

    def _repr_html_(self) -> str | None:
        return _installed_view().html(self)


def _installed_view():
    if _view is None:  # `import gpuad` installs it; only a partial import of the package lacks it
        raise RuntimeError("no display is installed for gradcheck reports: import gpuad first")
    return _view


@dataclass(frozen=True)
class Sweep:
    """AD and FD derivatives of a host function along one argument (`GradcheckReport.sweep`)."""

    name: str
    x0: float  # the checked point
    xs: np.ndarray
    ad: np.ndarray
    fd: np.ndarray


@dataclass(repr=False)
class GradcheckReport(Report):
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

    def sweep(self, arg: int | str = 0, lo: float | None = None, hi: float | None = None,
              num: int = 101) -> Sweep:
        """AD and FD derivatives over a 1-D sweep of one float argument (default: x0 ± max(1, |x0|))."""
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
        return Sweep(self.names[index], x0, xs, ad, fd)

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
        absolute, relative, ok = errors(np.array([ad]), np.array([fd]), rtol, atol)
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
class KernelGradcheckReport(Report):
    """A gradient kernel's output against central differences of its primal, per point."""

    kernel_name: str
    checks: list[ArgumentCheck]
    rtol: float
    atol: float
    data: dict[str, PointData] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"of kernel {self.kernel_name}"



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
    absolute, relative, ok = errors(ad, fd, rtol, atol)
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
class JacobianReport(Report):
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
        return errors(self.ad, self.fd, self.rtol, self.atol)[0]

    @property
    def relative_error(self) -> np.ndarray:
        return errors(self.ad, self.fd, self.rtol, self.atol)[1]

    @property
    def ok(self) -> np.ndarray:
        """Elementwise verdict, numpy.isclose(AD, FD, rtol, atol)."""
        return errors(self.ad, self.fd, self.rtol, self.atol)[2]

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
