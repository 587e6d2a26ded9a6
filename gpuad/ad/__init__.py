"""gpuad's source-to-source differentiation engine (pipeline stage 2).

`differentiate(fn, mode, activities, argtypes)` turns a plain Python function
into the Python source of its derivative (an adjoint for reverse modes, a
tangent for forward modes), plus the namespace that source runs in.

Modules, one job each: `normalize` (AST → three-address statements), `typing`
(numba type inference of locals), `tuples` (scalarise tuples), `activity`
(which values carry derivatives), `rules` (derivative rules as data, their
lookup and templates, user rules), `forward` / `reverse` (the two sweeps),
`tape` (per-thread tape), `checkpoint` (checkpointed loops), `emit` (source
rendering and namespace), `naming` (the legend of generated names),
`primitives` (target-specific operations the compiler overlays), `engine`
(one job's shared state).

Entry calling convention (what the compiler spine calls): flattened arguments
(`Active(x)` → x, `Const(y)` → y, `Duplicated(a, da)` → a, da) followed by one
`status` int64 array (its layout: `gpuad.ad.primitives`). Reverse returns `(derivs,)` (or
`(derivs, primal)`), `derivs` holding the derivative of each `Active` argument
and None for the others; forward returns `(df,)` (or `(df, primal)`).
"""
from __future__ import annotations

import hashlib
import linecache
import warnings
from dataclasses import dataclass

from numba.core import types

from gpuad import api
from gpuad.ad.engine import Program, array_dtype_is_float, holds_complex
from gpuad.ad.normalize import unwrap
from gpuad.ad.rules import rule
from gpuad.ad.site_facts import entry_facts
from gpuad.ad.typing import is_float, local_types
from gpuad.compiler.compile_lock import locked
from gpuad.errors import AutodiffCallError, GpuadWarning, SourceLocation

__all__ = ["Derivative", "differentiate", "rule", "local_types", "DEFAULT_TAPE_CAPACITY"]

DEFAULT_TAPE_CAPACITY = 64


@dataclass(frozen=True)
class Derivative:
    """A generated derivative: source text, its namespace, and the entry function."""

    entry: str
    source: str
    namespace: dict
    function: object
    mode: api.Mode
    activities: tuple
    argtypes: tuple
    filename: str
    own_arrays: frozenset = frozenset()  # Duplicated arrays whose shadow is updated without atomics
    # The code can report a failure through `status` (a tape or checkpoint overflow): only then
    # does a launch read the status back.
    can_fail: bool = False
    # The lines its own overflow reports name (the loops' lines), to say whose loop overflowed.
    overflow_lines: frozenset = frozenset()
    # (line, file, function) of every loop its overflow reports can name, callees' and inner
    # adjoints' included (their lines are in other files)
    overflow_owners: tuple = ()
    # (line, growth) of every loop line its tape overflow reports can name: how the tape of the
    # function reporting there grows with the capacity (`gpuad.ad.tape.TapeUse.growth`)
    tape_growth: tuple = ()


def check_call(fn, mode, activities, argtypes, where: SourceLocation | None = None) -> None:
    """Reject malformed requests before generating anything; `where` is the autodiff call, if known."""
    code = unwrap(fn).__code__
    where = where or SourceLocation(code.co_filename, code.co_firstlineno, "autodiff", unwrap(fn).__name__)
    if mode not in api.MODES:
        raise AutodiffCallError(f"unknown mode {mode!r}", where, "use Reverse, ReverseWithPrimal, Forward "
                                "or ForwardWithPrimal")
    if len(activities) != code.co_argcount or len(argtypes) != code.co_argcount:
        raise AutodiffCallError(
            f"{code.co_name} takes {code.co_argcount} arguments, got {len(activities)} activities and "
            f"{len(argtypes)} types", where, "wrap every argument in an activity")
    for i, (act, ty) in enumerate(zip(activities, argtypes)):
        if not (isinstance(act, type) and issubclass(act, api.Activity)):
            raise AutodiffCallError(f"argument {i} has activity {act!r}", where,
                                    "use Active, Const, Duplicated or DuplicatedNoNeed")
        if act is api.Active and not mode.reverse:
            raise AutodiffCallError(f"Active argument {i} in forward mode", where,
                                    "use Duplicated(x, dx) to give a tangent in forward mode")
        if act is api.Active and isinstance(ty, types.Array):
            raise AutodiffCallError(
                f"Active(...) wraps an array (argument {i}, `{code.co_varnames[i]}`): Active is for "
                "scalars", where, "pass the array as Duplicated(a, da) to receive its gradient in da, "
                "or one element per thread as Active(a[i])")
        if act is api.Active and isinstance(types.unliteral(ty), types.Integer | types.Boolean):
            # Integers are inactive (their derivative is None), as documented; but this is likely a
            # mistake, and storing the None into a float array is what fails next.
            warn_at(where, f"Active argument {i} (`{code.co_varnames[i]}`) is an integer ({ty}): its "
                    "derivative is None; pass it as Const(...), or as float(...) to differentiate with "
                    "respect to it")
        if act is not api.Const and isinstance(ty, types.BaseTuple):
            raise AutodiffCallError(f"{act.__name__} tuple argument {i} (`{code.co_varnames[i]}`): tuples "
                                    "are not differentiated as arguments", where,
                                    "pass the tuple's elements as separate arguments")
        if issubclass(act, api.Duplicated) and mode.reverse and not isinstance(ty, types.Array):
            raise AutodiffCallError(f"Duplicated scalar argument {i} in reverse mode", where,
                                    "use Active(x) for scalars in reverse mode")
        if holds_complex(ty):
            raise AutodiffCallError(
                f"argument {i} (`{code.co_varnames[i]}`) is complex ({ty}): gpuad does not support "
                "complex values", where, "pass real and imaginary parts as separate float arguments "
                "(or float arrays)")
    if activities and all(act is api.Const for act in activities):
        # A Const array meant as Duplicated is the likely mistake: its gradient silently stays zero.
        warn_at(where, f"every argument of {code.co_name} is Const: nothing is differentiated and every "
                "derivative is zero; mark what to differentiate as Active(x) or Duplicated(a, da)")


def warn_at(where: SourceLocation, message: str) -> None:
    """A GpuadWarning shown at the user's line (not at the gpuad frame that noticed it)."""
    warnings.warn_explicit(GpuadWarning(f"{where}: {message}"), GpuadWarning, where.filename, where.line)


def entry_name(fn, mode) -> str:
    snake = {"Reverse": "reverse", "ReverseWithPrimal": "reverse_with_primal", "Forward": "forward",
             "ForwardWithPrimal": "forward_with_primal"}[mode.name]
    return f"{snake}_{unwrap(fn).__name__}"


@locked  # its caches and numba's typing are shared by every thread
def differentiate(fn, mode: api.Mode, activities: tuple, argtypes: tuple, *,
                  tape_capacity: int = DEFAULT_TAPE_CAPACITY, thread_ids=frozenset(),
                  exclusive=frozenset(), private=frozenset(), distinct_lanes=frozenset(),
                  where: SourceLocation | None = None) -> Derivative:
    """Generate the derivative of `fn` (see the module docstring for the calling convention).

    `tape_capacity` bounds the iterations each loop with a run-time trip count
    may record on the per-thread tape; running more reports a tape overflow.
    `thread_ids` and `exclusive` are argument positions stage 1 proved to be
    the thread's global id and exclusive shadows: reverse mode then updates
    shadows indexed only by the id without atomics (`gpuad.ad.site_facts`).
    `private`: positions whose shadow is the thread's own local memory,
    updated without atomics however it is indexed. `distinct_lanes`: positions of ints that are the
    id plus or minus a constant, whose shadow updates need no combining across lanes. `where`: the
    autodiff call, for warnings.
    """
    from gpuad.ad.forward import forward_entry
    from gpuad.ad.reverse import reverse_entry

    activities, argtypes = tuple(activities), tuple(argtypes)
    check_call(fn, mode, activities, argtypes, where)
    prog = Program(tape_capacity, differentiate)  # nested autodiff recurses through it
    flags = tuple(a is api.Active or issubclass(a, api.Duplicated) for a in activities)
    prep = prog.prepare(fn, argtypes, flags)
    name = prog.unique(entry_name(fn, mode))
    prog.in_progress.append(unwrap(fn))
    prep = entry_facts(prep, activities, thread_ids, exclusive, private, distinct_lanes)
    if mode.reverse:
        reverse_entry(prog, mode, prep, activities, argtypes, name)
    else:
        forward_entry(prog, fn, mode, prep, flags, argtypes, name)
    source = "\n\n\n".join(prog.defs) + "\n"
    namespace = {k: prog.ns.objects[k] for k in sorted(prog.ns.objects)}
    letters = ",".join({"Active": "A", "Const": "C", "Duplicated": "D", "DuplicatedNoNeed": "N"}
                       .get(a.__name__, a.__name__) for a in activities)
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    filename = f"<gpuad-derivative {unwrap(fn).__qualname__} {mode.name} {letters} {digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope = dict(namespace)
    exec(compile(source, filename, "exec"), scope)
    return Derivative(name, source, namespace, scope[name], mode, activities, argtypes, filename,
                      prep.own_arrays if mode.reverse else frozenset(), prog.can_fail,
                      frozenset(prog.overflow_lines),
                      tuple(sorted((line, *owner) for line, owner in prog.overflow_owners.items())),
                      tuple(sorted(prog.tape_growth.items())))



del is_float, array_dtype_is_float
