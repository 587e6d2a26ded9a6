"""What a call site lets the entry function skip: atomics, and stores nobody reads.

Atomics. The reverse sweep accumulates `d_a[...] += ...` atomically, since
other threads may update the same element. Stage 1 tells the engine which
parameters hold the thread's global id (`cuda.grid(1)`: distinct in every
thread of the 1-D launch the kernel checks for) and which Duplicated arrays'
shadows no other call of the kernel can reach
(`gpuad.interpreter.site_ownership`). The shadow updates of such an array `a`
skip the atomic only when `a` is *thread-own*:

  there is one index position p such that EVERY access of `a` (load or store)
  holds a thread id at position p: the id parameter itself or a plain copy of
  it, each bound once and never changed (`a[i, k]`, `j = i; a[j, 0]`).

Then every element this thread touches has coordinate p equal to its own id,
and every other thread's elements have coordinate p equal to a different id:
the sets are disjoint, whatever the other positions hold (`a[i, k]` for `k`
in a loop touches only row i: the row is the thread's). The rule fails, and
the atomics stay, when
  - the id is at different positions in different accesses (`a[i, k]` and
    `a[k, i]`: threads i and k both update `(i, k)`),
  - some access does not hold the id at all (`a[i, 0]` and `a[0, 0]`, `a[k]`),
  - the id is changed or computed (`a[i + 1]`, `i = i + 1`, `j = 2 * i`),
  - `a` is passed on, copied, packed or aliased (other code could index it).
An id at several positions (`a[i, i]`) is fine: position 0 still holds it.

Private shadows. A shadow in the calling thread's `cuda.local.array`
(stage 1's `DeferredSite.private`) is the thread's own memory whatever the
index: its updates are plain, and must be, since NVVM turns an atomic on local
memory into a trap. So are those of local aliases and views of it
(`w = a`, `row = a[k]`) — not those of an array a helper is passed: a helper's
derivative keeps its atomics (emission then refuses the trap, see
`gpuad.compiler.emit`).

Stores. `DuplicatedNoNeed(a, da)` says the caller does not need what `f`
writes into `a` (Enzyme). Where `f` never reads `a` back, its stores are
skipped; the shadow is still seeded and zeroed as for `Duplicated`.
"""
from __future__ import annotations

import dataclasses

from gpuad import api
from gpuad.ad import ir
from gpuad.ad.engine import Prepared
from gpuad.ad.views import bases


def entry_facts(prep: Prepared, activities: tuple, thread_ids, exclusive,
                private=frozenset()) -> Prepared:
    """`prep` with `own_arrays` and `no_store` set; `thread_ids`, `exclusive`, `private`: parameter
    positions."""
    fir = prep.fir
    reassigned = ir.multi_assigned(fir)
    by_position = dict(enumerate(fir.params))
    own = own_arrays(fir, {by_position[k] for k in thread_ids},
                     {by_position[k] for k in exclusive} & prep.active, reassigned)
    own |= private_arrays(prep, {by_position[k] for k in private} - reassigned)
    no_need = {p for p, a in zip(fir.params, activities) if a is api.DuplicatedNoNeed} - reassigned
    write_only = frozenset(a for a in no_need if only_indexed_by(fir.body, a, None, loads=False))
    return dataclasses.replace(prep, own_arrays=own, no_store=write_only)


def own_arrays(fir: ir.FunctionIR, thread_id_params: set, exclusive_params: set,
               reassigned: set) -> frozenset:
    """The exclusive array parameters that `fir` only indexes by the thread id."""
    ids = thread_ids(fir, thread_id_params - reassigned, reassigned)
    candidates = exclusive_params - reassigned
    return frozenset(a for a in candidates if only_indexed_by(fir.body, a, ids))


def private_arrays(prep: Prepared, private_params: set) -> frozenset:
    """The private array parameters and the local views all of whose arrays are private."""
    views = {name for name, view in prep.views.items() if bases(view) <= private_params}
    return frozenset(private_params | views)


def thread_ids(fir: ir.FunctionIR, params: set, reassigned: set) -> set:
    """The id parameters and plain copies of them (assigned once)."""
    ids = set(params)
    changed = True
    while changed:
        changed = False
        for s in ir.walk(fir.body):
            if (isinstance(s, ir.Assign) and isinstance(s.target, str) and s.target not in ids
                    and s.target not in reassigned and isinstance(s.value, ir.Copy)
                    and isinstance(s.value.a, ir.Var) and s.value.a.name in ids):
                ids.add(s.target)
                changed = True
    return ids


def only_indexed_by(stmts: list, array: str, ids: set | None, loads: bool = True) -> bool:
    """Every use of `array` is a store (or with `loads`, a load) and, unless `ids` is None, one
    index position holds one of `ids` in all of them (the rule in the module docstring)."""
    common = None  # the positions holding an id in every access so far
    for index in accesses(stmts, array, loads):
        if index is None:
            return False
        if ids is None:
            continue
        here = {p for p, a in enumerate(index) if isinstance(a, ir.Var) and a.name in ids}
        common = here if common is None else common & here
        if not common:
            return False
    return True


def accesses(stmts: list, array: str, loads: bool):
    """The index of every store to (and load of) `array`; None for any other use of it."""
    for s in ir.walk(stmts):
        if isinstance(s, ir.Store) and s.array == array:
            yield s.index
        if not isinstance(s, ir.Assign):
            continue
        e = s.value
        if isinstance(e, ir.Load) and e.array.name == array:
            yield e.index if loads else None
        elif isinstance(e, ir.Attr):
            continue  # a.shape / a.size
        elif any(isinstance(a, ir.Var) and a.name == array for a in ir.atoms_of(e)):
            yield None  # copied, packed or passed on: other code could index it
