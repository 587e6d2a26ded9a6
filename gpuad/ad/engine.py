"""One derivative job: the shared namespace, the generated functions, and the
per-function preparation pipeline (normalise → type → scalarise tuples →
activity) that the forward and reverse sweeps start from.
"""
from __future__ import annotations

import dataclasses
import math
import types as pytypes
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np
from numba.core import types

from gpuad.ad import ir, naming, primitives
from gpuad.ad.activity import analyse
from gpuad.ad.cache_key import derivative_key
from gpuad.ad.emit import Namespace, atom_text, emit_function, expr_text
from gpuad.ad.normalize import normalize, unwrap
from gpuad.ad.ssa import rename
from gpuad.ad.tuples import expand_tuples
from gpuad.ad.typing import infer, is_float
from gpuad.ad.views import resolve_views, view_text
from gpuad.errors import LoweringError, SourceLocation, UnsupportedConstruct
from gpuad.intrinsics import cuda_intrinsics

_typing_cache: dict = {}
_stub_cache: dict = {}


@dataclass
class Prepared:
    """A function ready for a sweep: scalarised IR, local types, active set."""

    fir: ir.FunctionIR
    types: dict
    active: set
    return_type: object
    own_arrays: frozenset = frozenset()  # shadows updated by one thread only (gpuad.ad.site_facts)
    no_store: frozenset = frozenset()  # DuplicatedNoNeed arrays whose primal stores are skipped
    views: dict = dataclasses.field(default_factory=dict)  # local array -> gpuad.ad.views.View
    # ints that differ in every lane of a warp (the thread id plus a constant: gpuad.ad.site_facts)
    distinct_lanes: frozenset = frozenset()

    def shadow(self, array: str, prefix: str = naming.ADJOINT) -> str:
        """The shadow (`d_`) or tangent (`t_`) of an array: a parameter's, or its view's expression."""
        if array in self.views:
            return view_text(self.views[array], prefix)
        return prefix + array

    def atomic_add(self, array: str, index: tuple) -> str:
        """The primitive that adds into `array`'s shadow at `index`: `atomic_add_distinct` when the
        lanes of a warp are provably on different elements (a parameter's shadow, some position
        of the index lane-distinct: different coordinates, different elements), else `atomic_add`
        (which combines lanes that agree)."""
        distinct = array in self.fir.params and array not in self.views and any(
            isinstance(a, ir.Var) and a.name in self.distinct_lanes for a in index)
        return primitives.atomic_add_distinct.__name__ if distinct else primitives.atomic_add.__name__


def array_dtype_is_float(ty) -> bool:
    return isinstance(ty, types.Array) and is_float(ty.dtype)


def type_of_atom(atom, localtypes: dict, namespace: dict):
    if isinstance(atom, ir.Var):
        return localtypes.get(atom.name, types.none)
    if isinstance(atom, ir.Const):
        return types.none if atom.value is None else numba.typeof(atom.value)
    return numba.typeof(namespace[atom.name])


class Program:
    """The module being generated for one `differentiate` call.

    `differentiate` is stage 2's entry point, handed down by the caller (`gpuad.ad.differentiate`):
    a nested `autodiff` in the function differentiates its inner function through it, so no pass
    imports the entry point back (as GPUCompiler.jl's nested jobs recurse through the driver).
    """

    def __init__(self, tape_capacity: int, differentiate: Callable):
        self.tape_capacity = tape_capacity
        self.differentiate = differentiate
        self.ns = Namespace()
        self.ns.bind("np", np)
        self.ns.bind("math", math)
        for prim in (*primitives.ATOMIC_ADDS, primitives.guarded_mul, primitives.guarded_add_mul,
                     primitives.tape_alloc, primitives.report_tape_overflow,
                     primitives.report_checkpoint_overflow):
            self.ns.bind(prim.__name__, prim)
        self.defs: list[str] = []
        self.generated: dict = {}
        self.in_progress: list = []
        self.used_names: set = set()
        self.can_fail = False  # some generated code reports a failure through `status`
        self.overflow_lines: set = set()  # the loop lines the entry's own overflow reports name
        # line -> (file, function) of the loop there: a callee's or an inner adjoint's loop
        # reports its own line, which the entry's file does not hold
        self.overflow_owners: dict = {}
        # line -> how the entry's tape grows with the capacity (`TapeUse.growth`), for the hint
        self.tape_growth: dict = {}

    def enter_callee(self, fn, site, caller) -> None:
        """Start generating a callee's derivative; calling back into one in progress is recursion."""
        if any(f is fn for f in self.in_progress):
            cycle = self.in_progress[next(i for i, f in enumerate(self.in_progress) if f is fn):]
            chain = " -> ".join(getattr(f, "__name__", "?") for f in [*cycle, fn])
            self.refuse(caller, site.line, f"{getattr(fn, '__name__', 'call')}(...)",
                        f"recursion is not supported: {chain}", "rewrite the recursion as a loop")
        self.in_progress.append(fn)

    def unique(self, name: str) -> str:
        candidate, n = name, 0
        while candidate in self.used_names or candidate in self.ns.objects:
            n += 1
            candidate = f"{name}_{n}"
        self.used_names.add(candidate)
        return candidate

    def prepare(self, fn, argtypes: tuple, active_flags: tuple, flatten_tuples: bool = False) -> Prepared:
        """Normalise, type and analyse `fn` with `active_flags[i]` for parameter i.

        With `flatten_tuples` (callees), tuple parameters become one parameter per leaf, and
        `active_flags` is given per leaf.
        """
        fn = unwrap(fn)
        fir = rename(normalize(fn, self.ns))
        typing = self.type_normalised(fn, fir, argtypes)
        localtypes = dict(typing.locals)
        for p, ty in zip(fir.params, argtypes):
            localtypes[p] = ty
        refuse_complex(fir, localtypes)
        fir, localtypes = expand_tuples(fir, localtypes, flatten_tuples)
        fir, localtypes, views = resolve_views(fir, localtypes)
        active_params = {p for p, flag in zip(fir.params, active_flags)
                         if flag and (is_float(localtypes[p]) or array_dtype_is_float(localtypes[p]))}
        active = analyse(fir, localtypes, active_params, views)
        return Prepared(fir, localtypes, active, typing.return_type, views=views)

    def type_normalised(self, fn, fir: ir.FunctionIR, argtypes: tuple):
        # Keyed by what the normalised form depends on: a global read as a number is inlined.
        key = (derivative_key(fn), tuple(argtypes))
        if key not in _typing_cache:
            stubs: dict = {}

            def render(e):
                if is_thread_index(e, self.ns.objects):
                    return "0"  # an int, like the real value: numba's CPU typing knows no cuda.grid
                if isinstance(e, ir.AutodiffCall):
                    stub = autodiff_stub(self.differentiate, e.mode, e.f, tuple(c for c, _, _ in e.wrappers),
                                         tuple(len(a) for _, _, a in e.wrappers))
                    name = f"_adstub{len(stubs)}"
                    stubs[name] = stub
                    args = [atom_text(a) for _, _, atoms in e.wrappers for a in atoms]
                    return f"{name}({', '.join(args)})"
                return expr_text(e)

            source = emit_function(fir, render)
            scope = dict(self.ns.objects)
            scope.update(stubs)
            exec(compile(source, f"<gpuad-normalised {fn.__name__}>", "exec"), scope)
            try:
                _typing_cache[key] = infer(scope[fir.name], argtypes)
            except LoweringError as exc:  # point at the user's function, not at our normalised copy
                where = SourceLocation(fir.filename, fir.firstline, "def", fn.__name__)
                raise LoweringError(exc.message, where, exc.hint) from exc.__cause__
        return _typing_cache[key]

    def check_callee(self, fir: ir.FunctionIR, stmt, func, text: str) -> None:
        """Only plain Python functions (or numba dispatchers of them) can be differentiated."""
        if not isinstance(unwrap(func), pytypes.FunctionType):
            self.refuse(fir, stmt.line, text, f"no derivative rule for `{text}` and it is not a Python "
                        "function gpuad can differentiate",
                        "use a math function, add a rule to gpuad.ad.rules.DERIVATIVES "
                        "or register gpuad.rule(f)")

    def refuse(self, fir: ir.FunctionIR, line: int, construct: str, message: str, hint: str):
        where = SourceLocation(fir.filename, line, construct, fir.func.__name__)
        raise UnsupportedConstruct(message, where, hint)


def holds_complex(ty) -> bool:
    """A complex number, an array of them, or a tuple holding one (numba types)."""
    if isinstance(ty, types.Array):
        ty = ty.dtype
    if isinstance(ty, types.BaseTuple):
        return any(holds_complex(t) for t in ty)
    return isinstance(ty, types.Complex)


def refuse_complex(fir: ir.FunctionIR, localtypes: dict) -> None:
    """No derivative rule knows complex numbers: refuse the first value numba types as complex."""
    def refuse(line, construct, name):
        raise UnsupportedConstruct(
            f"this computes a complex value ({localtypes[name]}): gpuad does not support complex values",
            SourceLocation(fir.filename, line, construct, fir.func.__name__),
            "compute with real and imaginary parts as separate floats")

    for p in fir.params:
        if holds_complex(localtypes.get(p)):
            refuse(fir.firstline, "def", p)
    for s in ir.walk(fir.body):
        if isinstance(s, ir.Assign):
            for name in ir.target_names(s.target):
                if holds_complex(localtypes.get(name)):
                    refuse(s.line, expr_text(s.value), name)


def is_thread_index(e, objects: dict) -> bool:
    """`cuda.grid(1)`, `gpuad.thread_index()` or a `cuda.threadIdx.x`-like read."""
    owners, thread_index, _ = cuda_intrinsics()
    if isinstance(e, ir.Call):
        return e.func in thread_index
    if isinstance(e, ir.Copy) and isinstance(e.a, ir.Global) and "." in e.a.name:
        owner_text, _, attr = e.a.name.rpartition(".")
        root, *path = owner_text.split(".")
        owner = objects.get(root)
        for name in path:
            owner = getattr(owner, name, None)
        return owner in owners and attr in "xyz"
    return False


def inert_call(s: ir.Assign, active: set) -> bool:
    """A call of a builtin (`len(a)`, `int(x)`) whose results are all inactive: no derivative flows."""
    from gpuad.ad.rules import user_rule

    e = s.value
    return (isinstance(e, ir.Call) and not isinstance(unwrap(e.func), pytypes.FunctionType)
            and user_rule(e.func) is None and not set(ir.target_names(s.target)) & active)


def autodiff_stub(differentiate: Callable, mode, f, classes: tuple, arities: tuple):
    """A numba-typable stand-in for a nested `autodiff(mode, f, ...)` call (typing only).

    Typing it differentiates `f` for the argument types seen and returns the
    result type of the generated derivative; it is never lowered.
    """
    from numba.extending import type_callable

    key = (mode, unwrap(f), classes, arities)
    if key in _stub_cache:
        return _stub_cache[key]
    n = sum(arities)
    params = ", ".join(f"a{i}" for i in range(n))
    scope: dict = {}
    exec(f"def stub({params}):\n    raise NotImplementedError\n", scope)
    stub = scope["stub"]

    def result_type(*argtys):
        primal, i = [], 0
        for arity in arities:
            primal.append(types.unliteral(argtys[i]))
            i += arity
        deriv = differentiate(f, mode, classes, tuple(primal))
        flat = tuple(types.unliteral(t) for t in argtys) + (types.Array(types.int64, 1, "C"),)
        return infer(deriv.function, flat).return_type

    type_callable(stub)(lambda context: result_type)
    _stub_cache[key] = stub
    return stub
