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

from dataclasses import dataclass
from typing import Union

from numba.core import types

from gpuad.ad import ir
from gpuad.ad.emit import atom_text, index_text
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
    def __init__(self, fir: ir.FunctionIR, localtypes: dict):
        self.fir, self.types = fir, localtypes
        self.env: dict = {p: Base(p) for p in fir.params if self.is_array(p)}
        self.others: set = set()  # local arrays of their own (scratch tapes, module arrays)
        self.views: dict = {}
        self.ncapture = 0

    def is_array(self, name) -> bool:
        return isinstance(self.types.get(name), types.Array)

    def refuse(self, s, construct: str, message: str, hint: str):
        raise UnsupportedConstruct(message, SourceLocation(self.fir.filename, s.line, construct,
                                                           self.fir.func.__name__), hint)

    def check_use(self, s, atoms) -> None:
        for a in atoms:
            if (isinstance(a, ir.Var) and self.is_array(a.name) and a.name not in self.env
                    and a.name not in self.others):
                self.refuse(s, a.name, f"the array `{a.name}` is used where gpuad cannot tell which array "
                            "it is (bound later in a loop, or on another path)",
                            "bind the array before using it, in the same iteration")

    def block(self, stmts: list) -> list:
        out = []
        for s in stmts:
            if isinstance(s, ir.Assign):
                out += self.assign(s)
            elif isinstance(s, ir.Store):
                self.check_use(s, [ir.Var(s.array)])
                if any(isinstance(i, ir.Slice) for i in s.index):
                    self.refuse(s, f"{s.array}[...] = ...", "cannot differentiate assigning to a slice",
                                "assign the elements one by one in a loop")
                out.append(s)
            elif isinstance(s, ir.If):
                out.append(self.if_(s))
            else:
                out.append(ir.Loop(s.var, s.start, s.stop, s.step, self.block(s.body), s.line, s.ident,
                                   s.exit_flag, s.trips, s.checkpoint))
        return out

    def assign(self, s: ir.Assign) -> list:
        e, target = s.value, s.target
        if not isinstance(e, ir.Attr):
            self.check_use(s, ir.atoms_of(e))
        if not (isinstance(target, str) and self.is_array(target)):
            return [s]
        if isinstance(e, ir.Copy) and isinstance(e.a, ir.Var) and e.a.name in self.env:
            self.bind(target, self.env[e.a.name])
            return [s]
        if isinstance(e, ir.Load) and isinstance(e.array, ir.Var) and e.array.name in self.env:
            captures, index = self.capture(e.index, s.line)
            self.bind(target, Sub(self.env[e.array.name], index))
            return captures + [ir.Assign(target, ir.Load(e.array, index), s.line)]
        if any(isinstance(a, ir.Var) and a.name in self.env for a in ir.atoms_of(e)):
            self.refuse(s, target, "cannot differentiate an array computed from another array by a call",
                        "pass the arrays to the function and index them there")
        self.others.add(target)
        return [s]

    def bind(self, name: str, view: View) -> None:
        self.env[name] = view
        self.views[name] = view

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

    def if_(self, s: ir.If) -> ir.If:
        before = dict(self.env)
        body = self.block(s.body)
        after_body, self.env = self.env, dict(before)
        orelse = self.block(s.orelse)
        after_else = self.env
        self.env = dict(before)
        for name in set(after_body) | set(after_else):
            a, b = after_body.get(name), after_else.get(name)
            if a == b or None in (a, b):
                self.env[name] = a or b
            else:
                self.bind(name, Choice(s.test, a, b))
        return ir.If(s.test, body, orelse, s.line)


def resolve_views(fir: ir.FunctionIR, localtypes: dict) -> tuple[ir.FunctionIR, dict, dict]:
    """(fir with view indices captured, types, {local array: View}); see the module docstring."""
    resolver = ViewResolver(fir, dict(localtypes))
    body = resolver.block(fir.body)
    out = ir.FunctionIR(fir.name, fir.params, body, fir.ret, fir.filename, fir.firstline, fir.func,
                        fir.globals)
    return out, resolver.types, resolver.views
