"""Values the reverse sweep computes again instead of reading them from the tape.

A loop's temporary `x = sin(q)` is taped so that the adjoints reading it (`d_k += d_t * x`) see the
value of their own iteration. When its operands are themselves available to the reverse sweep
(restored like every value an adjoint reads, or never reassigned in the loop), computing `x` again
just before its first reader's adjoint costs one math call where the tape costs a store and a load
per iteration of local memory (the hand-written adjoints recompute `sin(q)` from the taped `q`).

What qualifies (`plan`): a pure operation (arithmetic, a comparison, a math function: nothing that
reads memory, which may have been written since, nothing with side effects) binding a scalar that
only this statement assigns, inside a loop, whose readers in the reverse sweep are that statement
and statements after it in the same block, with no operand assigned between it and them.
"""
from __future__ import annotations

import numpy as np
from numba.core import types

from gpuad.ad import ir
from gpuad.ad.emit import expr_text
from gpuad.ad.rules import DERIVATIVES

# Pure functions of their arguments: recomputing one gives the value the forward sweep had.
PURE_CALLS = frozenset(f for f in DERIVATIVES if getattr(f, "__module__", None) == "math") | {
    abs, min, max, float, np.float32, np.float64}


def key(stmt) -> tuple:
    """The reader key the first pass notes a recomputation's operands under."""
    return ("recompute", id(stmt))


def candidate(sweep, s) -> list | None:
    """The operand names of `s` if it may be recomputed in the reverse sweep, else None."""
    if not (isinstance(s, ir.Assign) and isinstance(s.target, str)):
        return None
    x, e = s.target, s.value
    if sweep.sites.get(x) != 1 or x in sweep.fir.params or x in sweep.prep.views:
        return None
    if not isinstance(sweep.types.get(x), types.Number | types.Boolean):
        return None
    pure = isinstance(e, ir.BinOp | ir.UnaryOp | ir.Compare) or (
        isinstance(e, ir.Call) and e.leaves is None and e.func in PURE_CALLS)
    if not pure:
        return None
    names = []
    for a in ir.atoms_of(e):
        if isinstance(a, ir.Var):
            if a.name == x or not isinstance(sweep.types.get(a.name), types.Number | types.Boolean):
                return None
            names.append(a.name)
        elif isinstance(a, ir.Global) and not isinstance(sweep.prog.ns.objects.get(a.name), int | float):
            return None
    return names


def plan(first, fir: ir.FunctionIR) -> dict:
    """id(statement recomputed) -> id(statement before whose reverse code it is recomputed), from
    the first pass's readers (`first.read_by`)."""
    chosen, operands_of = {}, {}
    free = available_operands(first, fir)

    def visit(stmts, in_loop):
        for k, s in enumerate(stmts):
            if isinstance(s, ir.If):
                visit(s.body, in_loop)
                visit(s.orelse, in_loop)
            elif isinstance(s, ir.Loop):
                visit(s.body, True)
            elif in_loop and (operands := candidate(first, s)) is not None and all(
                    free(n, s) for n in operands):
                # another candidate's recomputation reading it is settled below
                readers = {r for r in first.read_by.get(s.target, ()) if not isinstance(r, tuple)}
                last = last_reader(stmts, k, set(operands), readers)
                if last is not None:
                    chosen[id(s)], operands_of[id(s)] = id(last), (s.target, set(operands))

    visit(fir.body, False)
    # A recomputation reading a recomputed value would read it where that one may not be computed
    # yet: keep the first, save the other.
    targets = {operands_of[i][0] for i in chosen}
    for i in list(chosen):
        if operands_of[i][1] & targets:
            del chosen[i]
    return chosen


def available_operands(first, fir: ir.FunctionIR):
    """free(name, s): whether the reverse sweep has `name` at `s` without saving it for `s`'s
    recomputation (which would tape the operand in place of the value: no entry saved, a
    computation added). So: something else there reads it already (and it is restored), or no
    statement in a loop assigns it (nothing to save), or it is a loop's variable (the reverse
    sweep sets it every iteration)."""
    in_loops, loop_vars = set(), set()
    for loop in ir.walk(fir.body):
        if isinstance(loop, ir.Loop):
            loop_vars.add(loop.var)
            in_loops |= {n for t in ir.walk(loop.body) if isinstance(t, ir.Assign)
                         for n in ir.target_names(t.target)}

    def free(name: str, s) -> bool:
        readers = first.read_by.get(name, {})
        top = readers.get(key(s))
        read = any(at <= top for reader, at in readers.items() if not isinstance(reader, tuple))
        return read or name not in in_loops or name in loop_vars

    return free


def last_reader(stmts: list, k: int, operands: set, readers: set):
    """The last of the statements stmts[k:] reading stmts[k]'s target, if they are all its readers
    and none of stmts[k + 1:] up to it assigns an operand; else None."""
    if not readers:
        return None
    last, left = None, set(readers)
    for j in range(k, len(stmts)):
        t = stmts[j]
        if j > k and assigns_any(t, operands):
            break
        if id(t) in left and isinstance(t, ir.Assign | ir.Store):
            left.discard(id(t))
            last = t
        if not left:
            return last
    return None


def assigns_any(t, names: set) -> bool:
    for u in ir.walk([t]):
        if isinstance(u, ir.Assign) and names & set(ir.target_names(u.target)):
            return True
        if isinstance(u, ir.Loop) and u.var in names:
            return True
    return False


def line(s: ir.Assign) -> str:
    return f"{s.target} = {expr_text(s.value)}"

