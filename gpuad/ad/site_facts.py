"""What a call site lets the entry function skip: atomics, and stores nobody reads.

Atomics. The reverse sweep accumulates `d_a[i] += ...` atomically, since other threads
may update the same element. Stage 1 tells the engine which parameters hold
the thread's global id and which Duplicated arrays' shadows no other call of
the kernel can reach (`gpuad.interpreter.site_ownership`). An array is then
thread-own here when every access to it indexes it by such an id, unchanged
(no arithmetic that could alias a neighbour), and it reaches no other
function: its shadow elements are updated by exactly one thread.

Stores. `DuplicatedNoNeed(a, da)` says the caller does not need what `f`
writes into `a` (Enzyme). Where `f` never reads `a` back, its stores are
skipped; the shadow is still seeded and zeroed as for `Duplicated`.
"""
from __future__ import annotations

import dataclasses

from gpuad import api
from gpuad.ad import ir
from gpuad.ad.engine import Prepared


def entry_facts(prep: Prepared, activities: tuple, thread_ids, exclusive) -> Prepared:
    """`prep` with `own_arrays` and `no_store` set; `thread_ids`, `exclusive`: parameter positions."""
    fir = prep.fir
    reassigned = ir.multi_assigned(fir)
    by_position = dict(enumerate(fir.params))
    own = own_arrays(fir, {by_position[k] for k in thread_ids},
                     {by_position[k] for k in exclusive} & prep.active, reassigned)
    no_need = {p for p, a in zip(fir.params, activities) if a is api.DuplicatedNoNeed} - reassigned
    write_only = frozenset(a for a in no_need if only_indexed_by(fir.body, a, None, loads=False))
    return dataclasses.replace(prep, own_arrays=own, no_store=write_only)


def own_arrays(fir: ir.FunctionIR, thread_id_params: set, exclusive_params: set,
               reassigned: set) -> frozenset:
    """The exclusive array parameters that `fir` only indexes by the thread id."""
    ids = thread_ids(fir, thread_id_params - reassigned, reassigned)
    candidates = exclusive_params - reassigned
    return frozenset(a for a in candidates if only_indexed_by(fir.body, a, ids))


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
    """Every use of `array` is a store (or with `loads`, a load) whose index holds one of `ids`.

    `ids=None` accepts any index.
    """
    def own(index) -> bool:
        return ids is None or any(isinstance(a, ir.Var) and a.name in ids for a in index)

    for s in ir.walk(stmts):
        if isinstance(s, ir.Store) and s.array == array and not own(s.index):
            return False
        if not isinstance(s, ir.Assign):
            continue
        e = s.value
        if isinstance(e, ir.Load) and e.array.name == array:
            if not (loads and own(e.index)):
                return False
        elif isinstance(e, ir.Attr):
            continue  # a.shape / a.size
        elif any(isinstance(a, ir.Var) and a.name == array for a in ir.atoms_of(e)):
            return False  # copied, packed or passed on: other code could index it
    return True
