"""Types of a function's locals, from numba's CPU type inference of the primal.

This is the one module that touches numba internals for typing (the spine can
swap it for its interpreter). `infer(fn, argtypes)` runs numba's frontend and
type inference (no lowering) on a copy of `fn` whose plain Python callees are
replaced by `numba.njit` copies of themselves, so calls resolve. SSA versions
(`x.1`, `x.2`) of a variable are merged by numba's unification.
"""
from __future__ import annotations

import types as pytypes
from dataclasses import dataclass

import numba
from numba.core import types
from numba.core.compiler import CompilerBase, DefaultPassBuilder, Flags
from numba.core.registry import cpu_target
from numba.core.typed_passes import NopythonTypeInference
from numba.core.untyped_passes import DeadBranchPrune

from gpuad.ad.cache_key import derivative_key, global_names, read_line
from gpuad.compiler.compile_lock import locked
from gpuad.errors import LoweringError, SourceLocation, UnsupportedConstruct

_jit_copies: dict = {}  # id(python function) -> (function, derivative key, njit dispatcher); kept alive
_copying: list = []  # the functions whose jit copies are being made, outermost first
_typing_cache: dict = {}


class TypeOnly(CompilerBase):
    """numba's untyped passes (static getitem, SSA...) and type inference; no lowering.

    Dead-branch pruning is left out: the engine needs the type of every
    variable, also of those only assigned in a branch whose test numba can
    fold (`c = 0.25; if c > 0.0:`), since the generated code keeps both branches.
    """

    def define_pipelines(self):
        pm = DefaultPassBuilder.define_untyped_pipeline(self.state)
        pm.passes = [(cls, what) for cls, what in pm.passes if cls is not DeadBranchPrune]
        pm.add_pass(NopythonTypeInference, "nopython type inference")
        pm.finalize()
        return [pm]


@dataclass(frozen=True)
class Typing:
    """Local variable types and the return type of one typed function."""

    locals: dict
    return_type: object


def is_float(ty) -> bool:
    return isinstance(types.unliteral(ty), types.Float)


def is_int(ty) -> bool:
    return isinstance(types.unliteral(ty), types.Integer | types.Boolean)


def jit_value(value):
    """What a global means inside numba-compiled code: plain functions become njit copies."""
    value = cuda_device_py_func(value)
    if isinstance(value, pytypes.FunctionType) and not numba_knows(value):
        return jit_copy(value)
    return value


def cuda_device_py_func(value):
    """A `@cuda.jit(device=True)` function is typed through its Python function.

    numba's CPU typing cannot type a numba-cuda dispatcher (it asks for the
    CUDA driver); typing here only needs what the function computes.
    """
    from gpuad.compiler.numba_adapter import cuda_jit_options

    options = cuda_jit_options(value)
    return value.py_func if options is not None and options.get("device") else value


def numba_knows(fn) -> bool:
    """True for functions numba already types itself (`@overload` stubs, `register_jitable`)."""
    try:
        cpu_target.typing_context.refresh()
        cpu_target.typing_context.resolve_value_type(fn)
        return True
    except Exception:  # numba raises several error types for "untyped global"
        return False


def jit_copy(fn):
    """`numba.njit` of a copy of `fn` whose own callees are njit copies too.

    The copy binds the globals' values of now (numba freezes them anyway), so
    it is reused only while `fn`'s derivative key is unchanged.
    """
    key = derivative_key(fn)
    entry = _jit_copies.get(id(fn))
    if entry is not None and entry[0] is fn and entry[1] == key:
        return entry[2]
    if any(f is fn for f in _copying):
        refuse_recursion(fn)
    _copying.append(fn)
    try:
        copy = pytypes.FunctionType(fn.__code__, jit_namespace(fn.__globals__, global_names(fn.__code__)),
                                    fn.__name__, fn.__defaults__, jit_cells(fn))
    finally:
        _copying.pop()
    dispatcher = numba.njit(copy)
    _jit_copies[id(fn)] = (fn, key, dispatcher)
    return dispatcher


def refuse_recursion(fn):
    """`fn` is reached again while its copy is being made: a cycle of calls, which gpuad refuses."""
    cycle = _copying[next(i for i, f in enumerate(_copying) if f is fn):]
    caller = _copying[-1]
    code = caller.__code__
    name = next((n for n in global_names(code) if caller.__globals__.get(n) is fn), fn.__name__)
    chain = " -> ".join(f.__name__ for f in [*cycle, fn])
    raise UnsupportedConstruct(
        f"recursion is not supported: {chain}",
        SourceLocation(code.co_filename, read_line(code, name), f"{name}(...)", caller.__name__),
        "rewrite the recursion as a loop",
    )


def jit_cells(fn):
    if not fn.__closure__:
        return None
    cells = []
    for cell in fn.__closure__:
        try:
            cells.append(pytypes.CellType(jit_value(cell.cell_contents)))
        except ValueError:
            cells.append(cell)
    return tuple(cells)


def jit_namespace(namespace: dict, names=None) -> dict:
    """A copy of `namespace` ready for numba: the globals in `names` (all when None) become what
    numba-compiled code needs. `names` are the globals a function loads, never its attribute
    names (`sqrt` of `math.sqrt` is not the global `sqrt`)."""
    out = dict(namespace)
    for name in names if names is not None else list(namespace):
        if name in namespace:
            out[name] = jit_value(namespace[name])
    return out


@locked  # numba's typing context and these caches are shared by every thread
def infer(fn, argtypes) -> Typing:
    """Type `fn` (a plain function) for `argtypes` with numba's CPU type inference."""
    key = (derivative_key(fn), tuple(argtypes))
    if key in _typing_cache:
        return _typing_cache[key]
    copy = pytypes.FunctionType(fn.__code__, jit_namespace(fn.__globals__, global_names(fn.__code__)),
                                fn.__name__, fn.__defaults__, jit_cells(fn))
    typingctx, targetctx = cpu_target.typing_context, cpu_target.target_context
    typingctx.refresh()
    targetctx.refresh()
    flags = Flags()
    flags.nrt = True
    pipeline = TypeOnly(typingctx, targetctx, None, tuple(argtypes), None, flags, {})
    try:
        try:
            pipeline.compile_extra(copy)
        except AttributeError:
            if pipeline.state.typemap is None:  # asking for the compile result of a typing-only pipeline
                raise
        result = pipeline.state
    except numba.core.errors.NumbaError as exc:
        code = fn.__code__
        raise LoweringError(
            f"numba cannot type {fn.__name__} for {tuple(map(str, argtypes))}: {str(exc).splitlines()[0]}",
            SourceLocation(code.co_filename, code.co_firstlineno, "def", fn.__name__),
            "check that the function only uses what numba compiles (scalars, tuples, math, arrays)",
        ) from exc
    merged: dict = {}
    for name, ty in result.typemap.items():
        if name.startswith(("$", "arg.")):
            continue
        base = name.split(".")[0]
        ty = types.unliteral(ty)
        if base in merged and merged[base] != ty:
            unified = typingctx.unify_pairs(merged[base], ty)
            ty = unified if unified is not None else ty
        merged[base] = ty
    typing = Typing(merged, types.unliteral(result.return_type))
    _typing_cache[key] = typing
    return typing


def local_types(fn, argtypes) -> dict:
    """`{name: numba type}` for every local of `fn` typed with `argtypes`."""
    return infer(fn, argtypes).locals


def jit_derivative(deriv):
    """`numba.njit` the entry of a `gpuad.ad.Derivative` for the CPU (helpers and callees too)."""
    scope = dict(deriv.namespace)
    exec(compile(deriv.source, deriv.filename, "exec"), scope)
    return jit_copy(scope[deriv.entry])
