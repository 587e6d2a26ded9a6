"""Derivative rules as data, their lookup and templates, and the registry of user rules (`gpuad.rule`).

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

`rule_terms` is the one lookup both sweeps make: it fills a statement's
partials into the templates (`fill_template`, folding constant arguments and
keeping float32 code float32), and `guarded_term` renders each term.

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

import ast
import builtins
import math
import operator
from dataclasses import dataclass

import numpy as np
from numba.core import types

from gpuad.ad import ir
from gpuad.ad.emit import Namespace, expr_text, negated
from gpuad.ad.primitives import atomic_add, atomic_add_distinct, guarded_add_mul, guarded_mul


@dataclass(frozen=True)
class Derivative:
    """Partials of one primitive: parameter names and one expression per parameter."""

    params: tuple
    partials: tuple


def D(params: str, *partials) -> Derivative:
    return Derivative(tuple(p.strip() for p in params.split(",")), partials)


_LOG2, _LOG10, _2_SQRTPI = "0.6931471805599453", "2.302585092994046", "1.1283791670955126"

# At singular points the partials follow these conventions (README "Derivatives at
# singular points"; tests/test_ad_rule_edges.py checks every rule at its edge points):
# - a one-sided infinite slope is +-inf with the sign of the limit from inside the
#   domain, whatever the sign of a zero argument (sqrt(-0.0), log(-0.0): +inf);
# - outside a function's real domain (where the primal is NaN) the partial is NaN,
#   never a finite number a reverse-only caller could mistake for a gradient;
# - at a kink or a tie the partial is the symmetric choice: 0 for abs/fabs/copysign
#   at 0 and hypot/atan2 at the origin, 0.5 to each argument of min/max at a tie;
# - x ** 0 has derivative 0 everywhere and 0 ** y (y > 0) has y-partial 0.
# The templates never divide by zero where the primal does not, and never raise:
# numba's integer power raises ZeroDivisionError for 0.0 ** -1 (and for 1e-200 ** -2,
# where x * x underflows), so `y * x ** (y - 1)` is 0 at y == 0 and takes a float
# exponent (IEEE pow: +-inf, no exception) below it; positive integer exponents keep
# the integer power. Literals stay `0.0`/`1.0` as before (no new float64 values).
_POW_DX = "0.0 if y == 0 else (y * x ** (y - 1) if y > 0 else y * x ** (y - 1.0))"
_POW_DY = "(0.0 if out == 0.0 else out * math.log(x)) if x > 0.0 else (0.0 if x == 0.0 else math.nan)"


def _log_partial(scale: str) -> str:
    """1 / (x * scale) for x > 0, +inf at +-0, NaN below 0 (and at NaN)."""
    return f"1.0 / (x * {scale}) if x > 0.0 else (math.inf if x == 0.0 else math.nan)"


# min/max: a tie gives each argument half; otherwise the argument equal to the result
# gets 1 (read from `out`, not from a comparison: with a NaN argument numba's cpu
# target returns what Python does, numba-cuda may return the other one); NaN if the
# result is NaN.
_PICKED = "0.5 if x == y else (1.0 if out == {a} else (0.0 if out == out else math.nan))"
_SIGN_BUT_0 = "0.0 if x == 0.0 else math.copysign(1.0, x)"  # d|x|/dx, 0 at the kink
# atan2: x / (x^2 + y^2) computed as x / h / h (h = hypot), so neither tiny nor huge
# arguments underflow or overflow; 0 at the origin (a convention) and where h is inf.
_ATAN2_FLAT = "(x == 0.0 and y == 0.0) or math.isinf(x) or math.isinf(y)"

DERIVATIVES: dict = {
    # Python operators, keyed by the operator function they stand for
    operator.add: D("x, y", "1.0", "1.0"),
    operator.sub: D("x, y", "1.0", "-1.0"),
    operator.mul: D("x, y", "y", "x"),
    operator.truediv: D("x, y", "1.0 / y", "-out / y"),
    operator.floordiv: D("x, y", None, None),
    # x % y == x - (x // y) * y with the quotient Python (and numba) actually use:
    # math.floor(x / y) differs from it where x / y rounds up (1.0 % 0.1: 9, not 10).
    # NaN where x % y is NaN (y == 0, x infinite).
    operator.mod: D("x, y", "1.0 if out == out else math.nan", "-(x // y) if out == out else math.nan"),
    operator.pow: D("x, y", _POW_DX, _POW_DY),
    operator.neg: D("x", "-1.0"),
    operator.pos: D("x", "1.0"),
    # builtins
    abs: D("x", _SIGN_BUT_0),
    min: D("x, y", _PICKED.format(a="x"), _PICKED.format(a="y")),
    max: D("x, y", _PICKED.format(a="x"), _PICKED.format(a="y")),
    float: D("x", "1.0"),
    # numpy's float conversions (float32 code: `np.float32(x)`): the identity, rounding aside
    np.float32: D("x", "1.0"),
    np.float64: D("x", "1.0"),
    int: D("x", None),
    round: D("x", None),
    # math
    math.sin: D("x", "math.cos(x)"),
    math.cos: D("x", "-math.sin(x)"),
    math.tan: D("x", "1.0 + out * out"),
    # (1 - x)(1 + x) instead of 1 - x * x: no cancellation near +-1
    math.asin: D("x", "1.0 / math.sqrt((1.0 - x) * (1.0 + x))"),
    math.acos: D("x", "-1.0 / math.sqrt((1.0 - x) * (1.0 + x))"),
    math.atan: D("x", "1.0 / (1.0 + x * x)"),
    math.atan2: D("y, x", f"0.0 if {_ATAN2_FLAT} else x / math.hypot(x, y) / math.hypot(x, y)",
                  f"0.0 if {_ATAN2_FLAT} else -y / math.hypot(x, y) / math.hypot(x, y)"),
    math.sinh: D("x", "math.cosh(x)"),
    math.cosh: D("x", "math.sinh(x)"),
    math.tanh: D("x", "1.0 - out * out"),
    # hypot and split square roots: x * x would overflow for |x| > 1e154
    math.asinh: D("x", "1.0 / math.hypot(x, 1.0)"),
    math.acosh: D("x", "1.0 / (math.sqrt(x - 1.0) * math.sqrt(x + 1.0))"),
    math.atanh: D("x", "1.0 / ((1.0 - x) * (1.0 + x)) if math.fabs(x) <= 1.0 else math.nan"),
    math.exp: D("x", "out"),
    math.expm1: D("x", "out + 1.0"),
    math.log: D("x", _log_partial("1.0")),
    math.log1p: D("x", "1.0 / (1.0 + x) if x > -1.0 else (math.inf if x == -1.0 else math.nan)"),
    math.log2: D("x", _log_partial(_LOG2)),
    math.log10: D("x", _log_partial(_LOG10)),
    math.sqrt: D("x", "math.inf if out == 0.0 else 0.5 / out"),  # sqrt(-0.0) is -0.0
    math.pow: D("x, y", "0.0 if y == 0 else y * x ** (y - 1.0)", _POW_DY),
    # 0 at the origin (a subgradient; hypot(x, 0.0) == abs(x)); +-1 along an infinite x
    math.hypot: D("x, y", "0.0 if out == 0.0 else (math.copysign(1.0, x) if math.isinf(x) else x / out)",
                  "0.0 if out == 0.0 else (math.copysign(1.0, y) if math.isinf(y) else y / out)"),
    math.erf: D("x", f"{_2_SQRTPI} * math.exp(-x * x)"),
    math.erfc: D("x", f"-{_2_SQRTPI} * math.exp(-x * x)"),
    math.fabs: D("x", _SIGN_BUT_0),
    math.copysign: D("x, y", "0.0 if x == 0.0 else math.copysign(1.0, x) * math.copysign(1.0, y)", None),
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
    atomic_add_distinct: D("array, index, value", None, None, None),
    # the zero-guarded product of every adjoint and tangent update (each factor's term is
    # guarded by its own tangent, so the zero factor's tangent still counts)
    guarded_mul: D("factor, partial", "partial", "factor"),
    # `acc + guarded_mul(factor, partial)` fused: the same partials (forward over reverse of a
    # fused update is the tangent of the unfused one)
    guarded_add_mul: D("acc, factor, partial", "1.0", "partial", "factor"),
}

# How normalised operators map onto the table above.
BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
          "//": operator.floordiv, "%": operator.mod, "**": operator.pow}
UNARY = {"-": operator.neg, "+": operator.pos}

# Names a template may use besides its parameters and `out`.
TEMPLATE_GLOBALS = {"math": math, "builtins": builtins}


# ------------------------------------------------------------------ lookup and templates
def rule_key(e):
    if isinstance(e, ir.BinOp):
        return BINARY.get(e.op)
    if isinstance(e, ir.UnaryOp):
        return UNARY.get(e.op)
    if isinstance(e, ir.Call):
        return e.func
    return None


def rule_terms(sweep, s: ir.Assign, out: str, shadow_of) -> list[tuple[str, str]]:
    """(shadow, partial derivative) for each argument of `s`'s primitive that has both.

    Both sweeps use this one lookup of the rules table; `shadow_of` gives an
    argument's tangent (forward) or adjoint (reverse) name, or None.
    """
    e = s.value
    d = DERIVATIVES.get(rule_key(e))
    args = ir.atoms_of(e)
    if d is None or len(d.params) != len(args):
        sweep.refuse(s, expr_text(e), f"no derivative rule for `{expr_text(e)}`",
                     "add an entry to gpuad.ad.rules.DERIVATIVES or register gpuad.rule(f)")
    values = dict(zip(d.params, args))
    values["out"] = ir.Var(out)
    float32 = types.unliteral(sweep.prep.types.get(out, types.float64)) == types.float32
    terms = []
    for a, partial in zip(args, d.partials):
        shadow = shadow_of(a)
        if shadow is not None and partial is not None:
            terms.append((shadow, fill_template(partial, values, sweep.prog.ns, TEMPLATE_GLOBALS, float32)))
    return terms


def grouped_terms(terms: list[tuple[str, ast.expr]]) -> list[tuple[str, ast.expr, int]]:
    """(shadow, partial, count) for `terms` with the same shadow and the same partial counted once,
    in their order: `x * x`'s adjoint is one `guarded_mul((d + d), x)`, not `d * x` twice. The
    doubled factor is zero exactly where the factor is (the same guard) and exact below half the
    largest float (beyond, `d + d` overflows as `x ** 2`'s partial `2 * x` does); NVVM computes
    `d + d` once for the statements that read one adjoint (`dx * dx + dy * dy`), and the product
    fuses with the add that takes it into an fma. Number partials (`x + x`) stay apart: their
    adds keep their order."""
    grouped: list = []
    for shadow, partial in terms:
        same = next((g for g in grouped if not is_number(partial) and g[0] == shadow
                     and ast.dump(g[1]) == ast.dump(partial)), None)
        if same is None:
            grouped.append([shadow, partial, 1])
        else:
            same[2] += 1
    return [tuple(g) for g in grouped]


def repeated(factor: str, count: int) -> str:
    """The text of `factor` added to itself `count` times (`(d + d)`): the factor of a grouped term."""
    return factor if count == 1 else f"({' + '.join([factor] * count)})"


def fill_template(template: str, values: dict, namespace: Namespace, globals_: dict,
                  float32: bool = False) -> ast.expr:
    """Parse a rule expression and substitute its names.

    `values` maps parameter names (and `out`) to atoms; other names are
    globals of the rules module, bound in `namespace` by identity. With
    `float32`, float literals become `np.float32(...)`: a float64 literal would
    make numba promote the adjoint (and all it touches) to float64.
    """
    tree = ast.parse(template, mode="eval").body

    class Substitute(ast.NodeTransformer):
        def visit_Constant(self, node):
            if float32 and isinstance(node.value, float):
                return float32_node(node)
            return node

        def visit_BinOp(self, node):
            # With constant arguments a rule folds to constants (`x ** 2`: `2 * x ** 1`); an int
            # multiplier of a float32 value would promote it to float64, an exponent would not.
            node = fold_constants(self.generic_visit(node))
            if float32 and isinstance(node, ast.BinOp):
                if _is_int(node.left):
                    node.left = float32_node(node.left)
                if _is_int(node.right) and not isinstance(node.op, ast.Pow):
                    node.right = float32_node(node.right)
            return node

        def visit_Compare(self, node):
            return fold_constants(self.generic_visit(node))

        def visit_IfExp(self, node):
            return fold_constants(self.generic_visit(node))

        def visit_Attribute(self, node):  # math.inf, math.pi: float constants too
            root = node.value.id if isinstance(node.value, ast.Name) else None
            if float32 and isinstance(getattr(globals_.get(root), node.attr, None), float):
                return float32_node(self.generic_visit(node))
            return self.generic_visit(node)

        def visit_Name(self, node):
            if node.id in values:
                a = values[node.id]
                if isinstance(a, ir.Const):
                    return ast.Constant(a.value)
                return ast.Name(a.name, ast.Load())
            if node.id in globals_:
                return ast.Name(namespace.bind(node.id, globals_[node.id]), ast.Load())
            return node

    return Substitute().visit(tree)


_FOLDABLE = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Eq: operator.eq,
             ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
             ast.GtE: operator.ge}


def _is_int(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _number(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def fold_constants(node: ast.expr) -> ast.expr:
    """`2 - 1` -> `1`, `2 == 0` -> `False`, `a if True else b` -> `a`: what a rule template
    becomes when an argument is a constant. Only exact int/float operations with no error
    (+, -, * and comparisons) fold; anything else is left for numba."""
    if isinstance(node, ast.BinOp) and _number(node.left) and _number(node.right):
        op = _FOLDABLE.get(type(node.op))
        if op is not None and type(node.left.value) is type(node.right.value):
            return ast.Constant(op(node.left.value, node.right.value))
    if (isinstance(node, ast.Compare) and len(node.ops) == 1 and _number(node.left)
            and _number(node.comparators[0]) and type(node.ops[0]) in _FOLDABLE):
        return ast.Constant(_FOLDABLE[type(node.ops[0])](node.left.value, node.comparators[0].value))
    if isinstance(node, ast.IfExp) and isinstance(node.test, ast.Constant) and type(node.test.value) is bool:
        return node.body if node.test.value else node.orelse
    return node


def float32_node(value: ast.expr) -> ast.expr:
    return ast.Call(ast.Attribute(ast.Name("np", ast.Load()), "float32", ast.Load()), [value], [])


def typed_literal(node: ast.expr) -> ast.expr:
    """The literal inside `np.float32(...)` (what `float32_node` wraps), else `node`."""
    if isinstance(node, ast.Call) and ast.unparse(node.func) == "np.float32" and len(node.args) == 1:
        return node.args[0]
    return node


def is_number(node: ast.expr) -> bool:
    """A partial that is a finite constant (`3.0`, `-np.float32(0.5)`): times a zero seed it stays 0."""
    node = typed_literal(node)
    if isinstance(node, ast.UnaryOp):
        return is_number(node.operand)
    return (isinstance(node, ast.Constant) and isinstance(node.value, int | float)
            and math.isfinite(node.value))


def is_const(node: ast.expr, value: float) -> bool:
    node = typed_literal(node)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return is_const(node.operand, -value)
    return isinstance(node, ast.Constant) and node.value == value


def scaled(factor: str, partial: ast.expr) -> tuple[str, str]:
    """(`+`|`-`, text) of `factor * partial`, simplified when the partial is ±1."""
    if is_const(partial, 1.0):
        return "+", factor
    if is_const(partial, -1.0):
        return "-", factor
    if isinstance(partial, ast.UnaryOp) and isinstance(partial.op, ast.USub):
        return "-", ast.unparse(ast.BinOp(ast.Name(factor), ast.Mult(), partial.operand))
    return "+", ast.unparse(ast.BinOp(ast.Name(factor), ast.Mult(), partial))


def guarded_term(factor: str, partial: ast.expr) -> tuple[str, str]:
    """(`+`|`-`, text) of `factor * partial` where a zero factor adds nothing (no 0 * inf NaN):
    `guarded_mul(factor, partial)` (`gpuad.ad.primitives`), plain for a number partial."""
    if is_number(partial):
        return scaled(factor, partial)
    sign = "+"
    if isinstance(partial, ast.UnaryOp) and isinstance(partial.op, ast.USub):
        sign, partial = "-", partial.operand
    return sign, f"guarded_mul({factor}, {ast.unparse(partial)})"


def guarded_sum(terms: list[tuple[str, ast.expr]]) -> str:
    """The text of `Σ factor * partial` over `terms`, each zero factor adding nothing, from left to
    right: each guarded term after the first is added by `guarded_add_mul(sum, factor, ±partial)`,
    whose multiply-add NVVM fuses into an fma (a guarded product and a separate add it cannot)."""
    first_sign, text = guarded_term(*terms[0])
    if first_sign == "-":
        text = f"-{text}" if " " not in text else f"-({text})"
    for factor, partial in terms[1:]:
        if is_number(partial):
            sign, term = scaled(factor, partial)
            text += f" {sign} {term}"
            continue
        text = guarded_add_mul_text(text, "+", factor, partial)
    return text


def guarded_add_mul_text(acc: str, sign: str, factor: str, partial: ast.expr) -> str:
    """`acc ± guarded_mul(factor, partial)` as one `guarded_add_mul` (the sign moved onto the
    partial: `acc - f * p` is `acc + f * -p` exactly)."""
    if sign == "-":
        partial = negated(partial)
    return f"guarded_add_mul({acc}, {factor}, {ast.unparse(partial)})"


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
        _changed()
        return f

    def reverse(self, f):
        """Decorator: register `f(x, y, ..., d_out) -> (d_x, d_y, ...)`."""
        self.reverse_fn = f
        _changed()
        return f


_USER_RULES: dict = {}
# Bumped by every change to the registry: part of every derivative's cache key
# (gpuad.ad.cache_key), so derivatives compiled before a rule was registered or
# cleared are not reused after.
_version = 0


def _changed() -> None:
    global _version
    _version += 1


def rule_targets() -> tuple:
    """The functions that have user rules now."""
    return tuple(_USER_RULES)


def rules_version() -> int:
    """How many times the user-rule registry has changed."""
    return _version


def rule(fn, *, forward=None, reverse=None) -> UserRule:
    """Register custom derivative rules for `fn` (see the module docstring)."""
    fn = getattr(fn, "py_func", fn)
    entry = _USER_RULES.setdefault(fn, UserRule(fn))
    if forward is not None:
        entry.forward_fn = forward
    if reverse is not None:
        entry.reverse_fn = reverse
    _changed()
    return entry


def user_rule(fn) -> UserRule | None:
    """The rule registered for `fn`, if any."""
    return _USER_RULES.get(getattr(fn, "py_func", fn))


def clear_rule(fn) -> None:
    """Forget the rules registered for `fn` (tests, notebooks re-running cells)."""
    if _USER_RULES.pop(getattr(fn, "py_func", fn), None) is not None:
        _changed()
