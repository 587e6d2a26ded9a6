"""Which variables carry derivatives.

A variable is active when its type is a float and some assignment to it reads
an active value (flow-insensitive fixpoint). Active parameters seed the
analysis; arrays are active as `Duplicated` parameters, and as per-thread
scratch arrays (`tape_alloc`, the tape of a generated adjoint differentiated
again in forward mode) once an active value is stored into them. Integers and
booleans are never active. Storing an active value into any other inactive
array would lose its derivative, so it is refused here.
"""
from __future__ import annotations

import types as pytypes

from numba.core import types

from gpuad.ad import ir, primitives
from gpuad.ad.normalize import unwrap
from gpuad.ad.typing import is_float
from gpuad.ad.views import bases
from gpuad.errors import SourceLocation, UnsupportedConstruct


def is_active_atom(atom, active: set) -> bool:
    return isinstance(atom, ir.Var) and atom.name in active


def reads_active(expr, active: set) -> bool:
    if isinstance(expr, ir.Attr):
        return False
    return any(is_active_atom(a, active) for a in ir.atoms_of(expr))


def analyse(fir: ir.FunctionIR, localtypes: dict, active_params: set, views: dict | None = None) -> set:
    """The set of active variable names (parameters included).

    A local array bound to a view (`gpuad.ad.views`) is active when the arrays it views are; a
    view that may be an active or an inactive array has no one shadow and is refused.
    """
    active = set(active_params)
    for name, view in (views or {}).items():
        viewed = bases(view)
        if viewed & active and not viewed <= active:
            line = next(s.line for s in ir.walk(fir.body) if isinstance(s, ir.Assign) and s.target == name)
            raise UnsupportedConstruct(
                f"`{name}` may be one of {', '.join(sorted(viewed))}, of which only "
                f"{', '.join(sorted(viewed & active))} has a shadow",
                SourceLocation(fir.filename, line, name, fir.func.__name__),
                f"pass {', '.join(sorted(viewed - active))} as Duplicated(array, shadow) too")
        if viewed & active:
            active.add(name)
    stmts = list(ir.walk(fir.body))
    scratch = scratch_arrays(stmts, localtypes)
    active |= scratch & passed_to_functions(stmts)  # the callee may store active values into them
    changed = True
    while changed:
        changed = False
        for s in stmts:
            if isinstance(s, ir.Assign) and reads_active(s.value, active):
                for name in ir.target_names(s.target):
                    if name not in active and is_float(localtypes.get(name, types.none)):
                        active.add(name)
                        changed = True
            elif ((store := stored(s)) and store[0] in scratch and store[0] not in active
                  and is_active_atom(store[1], active)):
                active.add(store[0])
                changed = True
    refuse_active_tuple_arguments(fir, stmts, active)
    for s in stmts:
        if (store := stored(s)) and is_active_atom(store[1], active) and store[0] not in active:
            array, value = store
            raise UnsupportedConstruct(
                f"an active value is stored into `{array}`, which has no shadow",
                SourceLocation(fir.filename, s.line, f"{array}[...] = {value.name}", fir.func.__name__),
                f"pass `{array}` as Duplicated(array, shadow) so its derivative is tracked",
            )
    return active


def stored(s) -> tuple[str, object] | None:
    """(array, value atom) of a statement that writes an element: a store, or the `atomic_add`
    of a generated adjoint (forward over reverse differentiates the inner adjoint's shadow
    updates like stores)."""
    if isinstance(s, ir.Store):
        return s.array, s.value
    if (isinstance(s, ir.Assign) and isinstance(s.value, ir.Call) and s.value.func in primitives.ATOMIC_ADDS
            and isinstance(s.value.args[0], ir.Var)):
        return s.value.args[0].name, s.value.args[2]
    return None


def passed_to_functions(stmts: list) -> set:
    return {a.name for s in stmts if isinstance(s, ir.Assign) and isinstance(s.value, ir.Call)
            and isinstance(unwrap(s.value.func), pytypes.FunctionType)
            for a in s.value.args if isinstance(a, ir.Var)}


def scratch_arrays(stmts: list, localtypes: dict) -> set:
    """Float arrays the function allocates itself with `tape_alloc`."""
    return {s.target for s in stmts
            if isinstance(s, ir.Assign) and isinstance(s.value, ir.Call)
            and s.value.func is primitives.tape_alloc and isinstance(s.target, str)
            and is_float(getattr(localtypes.get(s.target), "dtype", None))}


def refuse_active_tuple_arguments(fir: ir.FunctionIR, stmts: list, active: set) -> None:
    """A tuple holding active values passed whole to a call would lose their derivatives: refused.

    The tuple pass packs such an argument just before the call (`_pk0 = (a, b)`). A plain Python
    function's derivative takes the tuple's elements one by one instead (`ir.Call.leaves`); user
    rules, builtins and nested autodiff calls take them whole, so only scalars and arrays there.
    """
    from gpuad.ad.rules import user_rule

    packs = {s.target: s for s in stmts if isinstance(s, ir.Assign) and isinstance(s.value, ir.Pack)
             and isinstance(s.target, str)}

    def holds_active(name: str) -> bool:
        return any(is_active_atom(a, active) or (isinstance(a, ir.Var) and a.name in packs
                                                  and holds_active(a.name)) for a in packs[name].value.items)

    for s in stmts:
        e = s.value if isinstance(s, ir.Assign) else None
        if (isinstance(e, ir.Call) and e.leaves is not None and user_rule(e.func) is None
                and isinstance(unwrap(e.func), pytypes.FunctionType)):
            continue
        if isinstance(e, ir.Call | ir.AutodiffCall):
            for a in ir.atoms_of(e):
                if isinstance(a, ir.Var) and a.name in packs and holds_active(a.name):
                    raise UnsupportedConstruct(
                        "a tuple holding values to differentiate is passed whole to a function",
                        SourceLocation(fir.filename, s.line, "tuple argument", fir.func.__name__),
                        "pass the tuple's elements as separate arguments")
