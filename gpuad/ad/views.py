"""Shadows follow array values: aliases, views and choices of arrays.

Runs after typing. A local array bound to (part of) another array's memory —
an alias `w = v`, a row `row = m[2]`, a slice `s = v[1:4]`, a choice
`u = p if c else q` — is described by a `View`: an expression over array
parameters built from atoms the view captured when it was bound. The shadow
of such a local is the same expression over the parameters' shadows
(`d_m[_vi0]`, `(d_p if _t3 else d_q)`), as Enzyme's shadow pointers follow
the primal pointer. The reverse sweep writes the shadow expression where it
needs it (it may run long after the local was rebound, in a loop or in a
split callee's reverse half); forward mode binds `t_row = t_m[_vi0]` next to
the primal.

Index variables a view reads are copied when it is bound (`_vi0 = i`), so a
later rebinding of `i` cannot move the view. What is not followed is refused
at its line: arrays returned by calls, stores into slices, and locals used
where no single binding reaches them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

from numba.core import types

from gpuad.ad import ir
from gpuad.ad.emit import atom_text, index_text
from gpuad.ad.ssa import names_read, rename_atom, rename_expr, rename_index
from gpuad.errors import SourceLocation, UnsupportedConstruct


@dataclass(frozen=True)
class Base:
    """An array parameter."""

    name: str


@dataclass(frozen=True)
class Sub:
    """`view[index]` selecting a sub-array (fewer indices than dimensions, or slices)."""

    view: "View"
    index: tuple


@dataclass(frozen=True)
class Choice:
    """`a if test else b`."""

    test: object
    a: "View"
    b: "View"


View = Union[Base, Sub, Choice]


def view_text(view: View, prefix: str = "") -> str:
    """Source of the view over the parameters named `prefix + name` (`d_` gives the shadow)."""
    if isinstance(view, Base):
        return prefix + view.name
    if isinstance(view, Sub):
        return f"{view_text(view.view, prefix)}[{index_text(view.index)}]"
    return f"({view_text(view.a, prefix)} if {atom_text(view.test)} else {view_text(view.b, prefix)})"


def bases(view: View) -> set:
    if isinstance(view, Base):
        return {view.name}
    if isinstance(view, Sub):
        return bases(view.view)
    return bases(view.a) | bases(view.b)


class ViewResolver:
    """Binds every local array to a View. A name bound to arrays at several places gets a runtime
    name per binding (`_w1_r`), so that each use reads the view that reaches it; where branches bind
    it differently and it is read later, each branch ends by copying into a merged name."""

    def __init__(self, fir: ir.FunctionIR, localtypes: dict):
        self.fir, self.types = fir, localtypes
        self.env: dict = {p: Base(p) for p in fir.params if self.is_array(p)}  # runtime name -> View
        self.names: dict = {p: p for p in self.env}  # user's array name -> its runtime name now
        self.others: set = set()  # local arrays of their own (scratch tapes, module arrays)
        self.views: dict = {}
        self.ncapture = 0
        self.nname = 0
        self.depth = 0  # loops around the statement being resolved

    def is_array(self, name) -> bool:
        return isinstance(self.types.get(name), types.Array)

    def refuse(self, s, construct: str, message: str, hint: str):
        raise UnsupportedConstruct(message, SourceLocation(self.fir.filename, s.line, construct,
                                                           self.fir.func.__name__), hint)

    def check_use(self, s, atoms) -> None:
        for a in atoms:
            if isinstance(a, ir.Var) and self.is_array(a.name) and a.name not in self.names:
                self.refuse(s, a.name, f"the array `{a.name}` is used where gpuad cannot tell which array "
                            "it is (bound later in a loop, or on another path)",
                            "bind the array before using it, in the same iteration")

    def block(self, stmts: list, later: frozenset = frozenset()) -> list:
        out = []
        for k, s in enumerate(stmts):
            if isinstance(s, ir.Assign):
                out += self.assign(s)
            elif isinstance(s, ir.Store):
                self.check_use(s, [ir.Var(s.array)])
                if any(isinstance(i, ir.Slice) for i in s.index):
                    self.refuse(s, f"{s.array}[...] = ...", "cannot differentiate assigning to a slice",
                                "assign the elements one by one in a loop")
                names = self.names
                out.append(replace(s, array=names.get(s.array, s.array), index=rename_index(s.index, names),
                                   value=rename_atom(s.value, names)))
            elif isinstance(s, ir.If):
                out.append(self.if_(s, later | names_read(stmts[k + 1:])))
            else:
                out.append(self.loop(s, later | names_read(stmts[k + 1:])))
        return out

    def loop(self, s: ir.Loop, later: frozenset) -> ir.Loop:
        """A view bound in a loop must not be read where an earlier iteration's binding reaches:
        one static view per name and iteration, or a refusal."""
        entry = dict(self.names)
        self.depth += 1
        # No merge needs what the next iteration reads: a read before the iteration binds the name
        # meets no binding here (refused by check_use) or one from before the loop (refused below).
        body = self.block(s.body, later)
        self.depth -= 1
        for name, runtime in self.names.items():
            if name in entry and entry[name] != runtime:
                self.refuse(s, name, f"the array name `{name}` is bound before this loop and again inside "
                            "it, so which array it holds depends on the iteration",
                            "use a new name for the array bound inside the loop")
        return ir.Loop(s.var, s.start, s.stop, s.step, body, s.line, s.ident, s.exit_flag, s.trips,
                       s.checkpoint)

    def assign(self, s: ir.Assign) -> list:
        target = s.target
        if not isinstance(s.value, ir.Attr):
            self.check_use(s, ir.atoms_of(s.value))
        e = rename_expr(s.value, self.names)
        if not (isinstance(target, str) and self.is_array(target)):
            return [ir.Assign(target, e, s.line)]
        if isinstance(e, ir.Copy) and isinstance(e.a, ir.Var) and e.a.name in self.env:
            return [ir.Assign(self.bind(target, self.env[e.a.name]), e, s.line)]
        if isinstance(e, ir.Load) and isinstance(e.array, ir.Var) and e.array.name in self.env:
            captures, index = self.capture(e.index, s.line)
            name = self.bind(target, Sub(self.env[e.array.name], index))
            return captures + [ir.Assign(name, ir.Load(e.array, index), s.line)]
        if any(isinstance(a, ir.Var) and a.name in self.env for a in ir.atoms_of(e)):
            self.refuse(s, target, "cannot differentiate an array computed from another array by a call",
                        "pass the arrays to the function and index them there")
        name = self.bind(target, None)
        return [ir.Assign(name, e, s.line)]

    def runtime_name(self, name: str) -> str:
        """`name` itself at its first binding, a fresh name at every other."""
        if name not in self.names and name not in self.views and name not in self.others:
            return name
        self.nname += 1
        fresh = f"_w{self.nname}_{name}"
        self.types[fresh] = self.types[name]
        return fresh

    def bind(self, name: str, view: View | None, runtime: str | None = None) -> str:
        runtime = runtime or self.runtime_name(name)
        self.names[name] = runtime
        if view is None:
            self.others.add(runtime)
        else:
            self.env[runtime] = view
            self.views[runtime] = view
        return runtime

    def capture(self, index: tuple, line: int) -> tuple[list, tuple]:
        """Copies of the variables an index reads, so that the view stays where it was taken."""
        captures = []

        def fixed(a):
            if not isinstance(a, ir.Var):
                return a
            name = f"_vi{self.ncapture}"
            self.ncapture += 1
            self.types[name] = self.types[a.name]
            captures.append(ir.Assign(name, ir.Copy(a), line))
            return ir.Var(name)

        index = tuple(ir.Slice(*map(fixed, i.atoms)) if isinstance(i, ir.Slice) else fixed(i) for i in index)
        return captures, index

    def if_(self, s: ir.If, later: frozenset) -> ir.If:
        before = dict(self.names)
        body = self.block(s.body, later)
        after_body, self.names = self.names, dict(before)
        orelse = self.block(s.orelse, later)
        after_else, self.names = self.names, dict(before)
        for name in sorted(set(after_body) | set(after_else)):
            a, b = after_body.get(name), after_else.get(name)
            if None in (a, b) and self.depth and name in later and name not in before:
                self.refuse(s, name, f"the array `{name}` is bound on one path only inside a loop, so a "
                            "later iteration may read the array an earlier one bound",
                            "bind it on every path of the iteration")
            if a == b or None in (a, b) or name not in later:
                if a or b:
                    self.names[name] = a or b  # bound on one path only, or never read again
                continue
            views = (self.env.get(a), self.env.get(b))
            if None in views and views != (None, None):
                self.refuse(s, name, f"`{name}` is a view of an argument on one path and an array of "
                            "its own on the other", "give the two arrays different names")
            view = None if views == (None, None) else views[0] if views[0] == views[1] else \
                Choice(s.test, *views)
            merged = self.bind(name, view, self.runtime_name(name))
            body.append(ir.Assign(merged, ir.Copy(ir.Var(a)), s.line))
            orelse.append(ir.Assign(merged, ir.Copy(ir.Var(b)), s.line))
        return ir.If(s.test, body, orelse, s.line)


def resolve_views(fir: ir.FunctionIR, localtypes: dict) -> tuple[ir.FunctionIR, dict, dict]:
    """(fir with view indices captured, types, {local array: View}); see the module docstring."""
    resolver = ViewResolver(fir, dict(localtypes))
    body = resolver.block(fir.body)
    out = ir.FunctionIR(fir.name, fir.params, body, fir.ret, fir.filename, fir.firstline, fir.func,
                        fir.globals)
    return out, resolver.types, resolver.views
