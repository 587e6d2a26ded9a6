"""Derivative rules as data, and the registry of user rules (`gpuad.rule`).

`DERIVATIVES` is the one table of built-in rules: for each resolved callable
(a `math` function, a builtin, or an `operator` function standing for a
Python operator) it lists the partial derivative of the result with respect
to each argument, as a Python expression over the argument names and `out`
(the result). Both sweeps are generated from it:

    reverse:  d_x += d_out * <partial wrt x>
    forward:  t_out = t_x * <partial wrt x> + t_y * <partial wrt y>

A partial of `None` means "no derivative" (integer-valued or piecewise
constant). Adding `math.erf` is one entry; the engine never special-cases a
primitive.

User rules (`gpuad.rule`) win over differentiating a function's body:

    rule = gpuad.rule(softplus)

    @rule.forward
    def softplus_fwd(x, t_x):            # primal args interleaved with tangents
        return t_x / (1.0 + math.exp(-x))  # -> tangent of the result

    @rule.reverse
    def softplus_rev(x, d_out):          # primal args, then the result's adjoint
        return (d_out / (1.0 + math.exp(-x)),)  # -> one adjoint per argument

Both rule functions are plain Python in the kernel subset (they are compiled
with the derivative); inactive arguments receive a tangent of 0.0, and the
adjoints returned for them are ignored. `gpuad.rule(f, forward=..., reverse=...)`
registers both at once. A function with only a reverse rule cannot be
differentiated in forward mode and vice versa (the engine says so).
"""
from __future__ import annotations

import builtins
import math
import operator
from dataclasses import dataclass

from gpuad.ad.primitives import atomic_add


@dataclass(frozen=True)
class Derivative:
    """Partials of one primitive: parameter names and one expression per parameter."""

    params: tuple
    partials: tuple


def D(params: str, *partials) -> Derivative:
    return Derivative(tuple(p.strip() for p in params.split(",")), partials)


_LOG2, _LOG10, _2_SQRTPI = "0.6931471805599453", "2.302585092994046", "1.1283791670955126"

DERIVATIVES: dict = {
    # Python operators, keyed by the operator function they stand for
    operator.add: D("x, y", "1.0", "1.0"),
    operator.sub: D("x, y", "1.0", "-1.0"),
    operator.mul: D("x, y", "y", "x"),
    operator.truediv: D("x, y", "1.0 / y", "-out / y"),
    operator.floordiv: D("x, y", None, None),
    operator.mod: D("x, y", "1.0", "-math.floor(x / y)"),
    operator.pow: D("x, y", "y * x ** (y - 1)", "out * math.log(x) if x > 0.0 else 0.0"),
    operator.neg: D("x", "-1.0"),
    operator.pos: D("x", "1.0"),
    # builtins
    abs: D("x", "math.copysign(1.0, x)"),
    min: D("x, y", "1.0 if x <= y else 0.0", "0.0 if x <= y else 1.0"),
    max: D("x, y", "1.0 if x >= y else 0.0", "0.0 if x >= y else 1.0"),
    float: D("x", "1.0"),
    int: D("x", None),
    round: D("x", None),
    # math
    math.sin: D("x", "math.cos(x)"),
    math.cos: D("x", "-math.sin(x)"),
    math.tan: D("x", "1.0 + out * out"),
    math.asin: D("x", "1.0 / math.sqrt(1.0 - x * x)"),
    math.acos: D("x", "-1.0 / math.sqrt(1.0 - x * x)"),
    math.atan: D("x", "1.0 / (1.0 + x * x)"),
    math.atan2: D("y, x", "x / (x * x + y * y)", "-y / (x * x + y * y)"),
    math.sinh: D("x", "math.cosh(x)"),
    math.cosh: D("x", "math.sinh(x)"),
    math.tanh: D("x", "1.0 - out * out"),
    math.asinh: D("x", "1.0 / math.sqrt(x * x + 1.0)"),
    math.acosh: D("x", "1.0 / math.sqrt(x * x - 1.0)"),
    math.atanh: D("x", "1.0 / (1.0 - x * x)"),
    math.exp: D("x", "out"),
    math.expm1: D("x", "out + 1.0"),
    math.log: D("x", "1.0 / x"),
    math.log1p: D("x", "1.0 / (1.0 + x)"),
    math.log2: D("x", f"1.0 / (x * {_LOG2})"),
    math.log10: D("x", f"1.0 / (x * {_LOG10})"),
    math.sqrt: D("x", "0.5 / out"),
    math.pow: D("x, y", "y * x ** (y - 1.0)", "out * math.log(x) if x > 0.0 else 0.0"),
    math.hypot: D("x, y", "x / out", "y / out"),
    math.erf: D("x", f"{_2_SQRTPI} * math.exp(-x * x)"),
    math.erfc: D("x", f"-{_2_SQRTPI} * math.exp(-x * x)"),
    math.fabs: D("x", "math.copysign(1.0, x)"),
    math.copysign: D("x, y", "math.copysign(1.0, x) * math.copysign(1.0, y)", None),
    math.floor: D("x", None),
    math.ceil: D("x", None),
    math.trunc: D("x", None),
    math.degrees: D("x", "57.29577951308232"),
    math.radians: D("x", "0.017453292519943295"),
    math.isnan: D("x", None),
    math.isinf: D("x", None),
    math.isfinite: D("x", None),
    # primitives appearing in generated code (higher order): linear in the value
    atomic_add: D("array, index, value", None, None, None),
}

# How normalised operators map onto the table above.
BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
          "//": operator.floordiv, "%": operator.mod, "**": operator.pow}
UNARY = {"-": operator.neg, "+": operator.pos}

# Names a template may use besides its parameters and `out`.
TEMPLATE_GLOBALS = {"math": math, "builtins": builtins}


# ------------------------------------------------------------------ user rules
@dataclass
class UserRule:
    """Forward and/or reverse rule registered for one function."""

    fn: object
    forward_fn: object = None
    reverse_fn: object = None

    def forward(self, f):
        """Decorator: register `f(x, t_x, y, t_y, ...) -> t_out`."""
        self.forward_fn = f
        return f

    def reverse(self, f):
        """Decorator: register `f(x, y, ..., d_out) -> (d_x, d_y, ...)`."""
        self.reverse_fn = f
        return f


_USER_RULES: dict = {}


def rule(fn, *, forward=None, reverse=None) -> UserRule:
    """Register custom derivative rules for `fn` (see the module docstring)."""
    fn = getattr(fn, "py_func", fn)
    entry = _USER_RULES.setdefault(fn, UserRule(fn))
    if forward is not None:
        entry.forward_fn = forward
    if reverse is not None:
        entry.reverse_fn = reverse
    return entry


def user_rule(fn) -> UserRule | None:
    """The rule registered for `fn`, if any."""
    return _USER_RULES.get(getattr(fn, "py_func", fn))


def clear_rule(fn) -> None:
    """Forget the rules registered for `fn` (tests, notebooks re-running cells)."""
    _USER_RULES.pop(getattr(fn, "py_func", fn), None)
