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

Lanes apart. Where the atomic stays, the cuda target first asks whether the
lanes of the warp add into one element, to combine them (`warp_atomics`): a
shuffle and a vote per update. Stage 1 also says which arguments differ in
every lane of a warp (`DeferredSite.distinct_lanes`, `KernelLanes`; in a 1-D
launch, as for the id): with `i` the thread id (`cuda.grid(1)`, distinct and
>= 0), `i + c`, `c + i`, `i - c` (c an int literal) and, at a call inside
`if i < n:` with `n` the same in every thread (a parameter, `a.shape[k]`,
`len(a)`, `a.size`, bound once), the periodic neighbours `(i + c) % n`,
`(i - c) % n`, `i + 1 if i < n - 1 else 0` and `i - 1 if i > 0 else n - 1`:
on 0 <= i < n each of those is a bijection of [0, n), so distinct ids give
distinct values. Each spelled directly or through a local bound once. Inside the
function, an int is *lane-distinct* when it is such a parameter, a plain copy,
or one of them plus or minus an int constant (`x + c`, `c + x`, `x - c`,
`c - x`, `-x`), each bound by one statement (in a loop, the same value every
iteration) and the parameter never rebound: then lanes
with different ids hold different values. An update of a parameter's shadow
one of whose index positions is lane-distinct reaches a different element in
every lane, so nothing can be combined and it is a plain atomic
(`atomic_add_distinct`). Anything else keeps the combining atomic: an index
from memory (`idx[i]`), computed otherwise (`i // 2`, `2 * i`, `i + k` with
`k` a variable), a loop variable, a view's shadow. The fact only chooses how
an atomic is issued, never whether: a wrong fact costs time, not values
(negative indices wrap, so `a[i - 1]` of an array shorter than a warp can
still meet `a[i + n - 1]`; the atomic keeps that right).

Stores. `DuplicatedNoNeed(a, da)` says the caller does not need what `f`
writes into `a` (Enzyme). Where `f` never reads `a` back, its stores are
skipped; the shadow is still seeded and zeroed as for `Duplicated`.
"""
from __future__ import annotations

import ast
import dataclasses

from gpuad import api
from gpuad.ad import ir
from gpuad.ad.engine import Prepared
from gpuad.ad.views import bases


class KernelLanes:
    """Which arguments of a function's `autodiff` calls differ in every lane of a warp (see the
    module docstring), read from its source before stage 1 rewrites it."""

    def __init__(self, tree: ast.FunctionDef, thread_ids: set[str]):
        self.ids = set(thread_ids)
        self.stores: dict[str, int] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                self.stores[node.id] = self.stores.get(node.id, 0) + 1
        params = {a.arg for a in tree.args.args}
        self.uniform = {p for p in params if p not in self.stores}  # parameters never rebound
        self.shift_of: dict[str, str] = {i: i for i in self.ids}  # local -> the id it shifts
        self.periodic: dict[str, tuple] = {}  # local -> (id, bound) of a periodic neighbour
        self.bind_once(tree)
        self.guards: dict[tuple, set] = {}  # a call's position -> the (id, bound) of `if id < bound:`
        self.find_guards(tree.body, frozenset())

    def bind_once(self, tree: ast.FunctionDef) -> None:
        singles = [(n.targets[0].id, n.value) for n in ast.walk(tree)
                   if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
                   and self.stores.get(n.targets[0].id) == 1 and n.targets[0].id not in self.ids]
        changed = True
        while changed:
            changed = False
            for name, value in singles:
                if name in self.uniform or name in self.shift_of or name in self.periodic:
                    continue
                if self.is_uniform(value):
                    self.uniform.add(name)
                elif (base := self.shifted(value)) is not None:
                    self.shift_of[name] = base
                elif (neighbour := self.neighbour(value)) is not None:
                    self.periodic[name] = neighbour
                else:
                    continue
                changed = True

    def is_uniform(self, e: ast.expr) -> bool:
        """The same value in every thread: a uniform name, `a.shape[k]`, `a.size` or `len(a)`."""
        if isinstance(e, ast.Name):
            return e.id in self.uniform
        if isinstance(e, ast.Subscript) and isinstance(e.slice, ast.Constant):
            e = e.value
            return isinstance(e, ast.Attribute) and e.attr == "shape" and self.is_uniform(e.value)
        if isinstance(e, ast.Attribute):
            return e.attr == "size" and self.is_uniform(e.value)
        return (isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id == "len"
                and e.func.id not in self.stores and len(e.args) == 1 and self.is_uniform(e.args[0]))

    def shifted(self, e: ast.expr) -> str | None:
        """The id that `e` is, plus or minus an int literal; None if it is not."""
        if isinstance(e, ast.Name):
            return self.shift_of.get(e.id)
        if not (isinstance(e, ast.BinOp) and isinstance(e.op, (ast.Add, ast.Sub))):
            return None
        if int_literal(e.right):
            return self.shifted(e.left)
        return self.shifted(e.right) if isinstance(e.op, ast.Add) and int_literal(e.left) else None

    def neighbour(self, e: ast.expr) -> tuple | None:
        """(id, bound) when `e` is a periodic neighbour of the id in [0, bound), else None."""
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Mod) and isinstance(e.right, ast.Name) \
                and e.right.id in self.uniform and (base := self.shifted(e.left)) is not None:
            return base, e.right.id
        if not (isinstance(e, ast.IfExp) and isinstance(e.test, ast.Compare) and len(e.test.ops) == 1):
            return None
        i, op, right = e.test.left, e.test.ops[0], e.test.comparators[0]
        if not (isinstance(i, ast.Name) and i.id in self.ids):
            return None
        up = (isinstance(op, ast.Lt) and is_offset(e.body, i.id, ast.Add) and is_offset(right, None, ast.Sub)
              and int_literal(e.orelse, 0))  # i + 1 if i < n - 1 else 0
        down = (isinstance(op, ast.Gt) and is_offset(e.body, i.id, ast.Sub) and int_literal(right, 0)
                and is_offset(e.orelse, None, ast.Sub))  # i - 1 if i > 0 else n - 1
        bound = (right if up else e.orelse).left if up or down else None
        return (i.id, bound.id) if bound is not None and isinstance(bound, ast.Name) \
            and bound.id in self.uniform else None

    def find_guards(self, stmts: list, guards: frozenset) -> None:
        for s in stmts:
            if isinstance(s, ast.If):
                self.find_guards(s.body, guards | self.bounds(s.test))
                self.find_guards(s.orelse, guards)
            elif isinstance(s, (ast.For, ast.While, ast.With)):
                self.find_guards(s.body, guards)
                self.find_guards(getattr(s, "orelse", []), guards)
            elif isinstance(s, (ast.FunctionDef, ast.ClassDef, ast.Try)):
                continue
            else:
                for node in ast.walk(s):
                    if isinstance(node, ast.Call):
                        self.guards[(node.lineno, node.col_offset)] = guards

    def bounds(self, test: ast.expr) -> frozenset:
        """The (id, bound) pairs a true `test` proves `0 <= id < bound` of: `i < n`, `n > i`, and
        those among the operands of an `and`."""
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            return frozenset().union(*(self.bounds(v) for v in test.values))
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
            return frozenset()
        i, n = test.left, test.comparators[0]
        if isinstance(test.ops[0], ast.Gt):
            i, n = n, i
        elif not isinstance(test.ops[0], ast.Lt):
            return frozenset()
        if isinstance(i, ast.Name) and i.id in self.ids and isinstance(n, ast.Name) and n.id in self.uniform:
            return frozenset({(i.id, n.id)})
        return frozenset()

    def distinct(self, arg: ast.expr, call: ast.Call) -> bool:
        """Whether `arg`, passed at `call`, differs in every lane of a warp."""
        if self.shifted(arg) is not None:
            return True
        if isinstance(arg, ast.Name) and arg.id in self.periodic:
            neighbour = self.periodic[arg.id]
        else:
            neighbour = self.neighbour(arg)
        return neighbour is not None and neighbour in self.guards.get((call.lineno, call.col_offset), ())


def int_literal(e: ast.expr, value: int | None = None) -> bool:
    return isinstance(e, ast.Constant) and type(e.value) is int and (value is None or e.value == value)


def is_offset(e: ast.expr, name: str | None, op: type) -> bool:
    """`name op 1` (any name when `name` is None)."""
    return (isinstance(e, ast.BinOp) and isinstance(e.op, op) and isinstance(e.left, ast.Name)
            and (name is None or e.left.id == name) and int_literal(e.right, 1))


def entry_facts(prep: Prepared, activities: tuple, thread_ids, exclusive,
                private=frozenset(), distinct=frozenset()) -> Prepared:
    """`prep` with `own_arrays`, `distinct_lanes` and `no_store` set; `thread_ids`, `exclusive`,
    `private`, `distinct` (the id shifted by a constant): parameter positions."""
    fir = prep.fir
    reassigned = ir.multi_assigned(fir)
    by_position = dict(enumerate(fir.params))
    lanes = distinct_lanes(fir, {by_position[k] for k in set(thread_ids) | set(distinct)} - reassigned)
    own = own_arrays(fir, {by_position[k] for k in thread_ids},
                     {by_position[k] for k in exclusive} & prep.active, reassigned)
    own |= private_arrays(prep, {by_position[k] for k in private} - reassigned)
    no_need = {p for p, a in zip(fir.params, activities) if a is api.DuplicatedNoNeed} - reassigned
    write_only = frozenset(a for a in no_need if only_indexed_by(fir.body, a, None, loads=False))
    return dataclasses.replace(prep, own_arrays=own, no_store=write_only, distinct_lanes=lanes)


def distinct_lanes(fir: ir.FunctionIR, params: set) -> frozenset:
    """The lane-distinct ints (module docstring): `params` and what shifts them by a constant.

    A name bound by one statement, in a loop too: it holds the same shift of the same parameter
    (never rebound) wherever it is read."""
    sites: dict = {}
    for s in ir.walk(fir.body):
        if isinstance(s, ir.Assign):
            for n in ir.target_names(s.target):
                sites[n] = sites.get(n, 0) + 1
        elif isinstance(s, ir.Loop) and s.var:
            sites[s.var] = 2  # bound anew by every iteration
    reassigned = {n for n, k in sites.items() if k > 1} | set(fir.params)
    return frozenset(bound_from(fir, params, reassigned, shifted))


def bound_from(fir: ir.FunctionIR, names, reassigned: set, derives) -> set:
    """`names` and, to a fixed point, every name assigned once (not in `reassigned`) from a value
    that `derives(value, names so far)` accepts."""
    names = set(names)
    changed = True
    while changed:
        changed = False
        for s in ir.walk(fir.body):
            if (isinstance(s, ir.Assign) and isinstance(s.target, str) and s.target not in names
                    and s.target not in reassigned and derives(s.value, names)):
                names.add(s.target)
                changed = True
    return names


def shifted(e, names: set) -> bool:
    """`e` is one of `names` plus or minus an int constant (or negated, or copied)."""
    def lane(a) -> bool:
        return isinstance(a, ir.Var) and a.name in names

    def offset(a) -> bool:
        return isinstance(a, ir.Const) and type(a.value) is int

    if isinstance(e, ir.Copy):
        return lane(e.a)
    if isinstance(e, ir.UnaryOp):
        return e.op in ("+", "-") and lane(e.a)
    if isinstance(e, ir.BinOp) and e.op in ("+", "-"):
        return (lane(e.a) and offset(e.b)) or (offset(e.a) and lane(e.b))
    return False


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
    def copied(value, ids: set) -> bool:
        return isinstance(value, ir.Copy) and isinstance(value.a, ir.Var) and value.a.name in ids

    return bound_from(fir, params, reassigned, copied)


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
