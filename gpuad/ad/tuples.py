"""Scalarising tuples: every tuple-typed local becomes one variable per leaf.

After typing, `p = (a, b)` becomes `p_0 = a; p_1 = b`, `u = p[1]` becomes
`u = p_1`, a call returning a tuple assigns a pattern `(p_0, p_1) = g(x)`,
and a tuple passed whole to a call is packed again just before it. The
derivative code then only ever sees scalars, so adjoints stay scalars.
"""
from __future__ import annotations

from dataclasses import replace

from numba.core import types

from gpuad.ad import ir
from gpuad.errors import SourceLocation, UnsupportedConstruct


class TupleExpander:
    def __init__(self, fir: ir.FunctionIR, localtypes: dict, flatten_params: bool = False):
        self.fir = fir
        self.flatten_params = flatten_params
        self.types = dict(localtypes)
        self.patterns: dict = {}
        self.ntemp = 0
        for name, ty in localtypes.items():
            if isinstance(ty, types.BaseTuple) and name not in fir.params:
                self.patterns[name] = self.leaves(name, ty)

    def leaves(self, name: str, ty):
        """Nested tuple of leaf names for a tuple-typed variable (types recorded)."""
        if not isinstance(ty, types.BaseTuple):
            while name in self.types and self.types[name] != ty:
                name += "_"
            self.types[name] = ty
            return name
        return tuple(self.leaves(f"{name}_{k}", t) for k, t in enumerate(ty.types))

    def pattern_of(self, atom):
        if isinstance(atom, ir.Var) and atom.name in self.patterns:
            return self.patterns[atom.name]
        return None

    def refuse(self, stmt, what: str, hint: str):
        raise UnsupportedConstruct(
            f"cannot differentiate {what}",
            SourceLocation(self.fir.filename, stmt.line, what, self.fir.func.__name__), hint)

    def run(self) -> tuple[ir.FunctionIR, dict]:
        body, params = [], []
        for p in self.fir.params:  # tuple parameters: unpack once at entry, or take their leaves
            ty = self.types.get(p)
            if isinstance(ty, types.BaseTuple):
                self.patterns[p + "_"] = self.leaves(p, ty)
                if self.flatten_params:
                    params += ir.target_names(self.patterns[p + "_"])
                else:
                    body.append(ir.Assign(self.patterns[p + "_"], ir.Copy(ir.Var(p)), self.fir.firstline))
                    params.append(p)
                self.patterns[p] = self.patterns.pop(p + "_")
            else:
                params.append(p)
        body += self.block(self.fir.body)
        ret = self.fir.ret
        if ret is not None and ret in self.patterns:
            ret = self.patterns[ret]
        out = ir.FunctionIR(self.fir.name, params, body, ret, self.fir.filename,
                            self.fir.firstline, self.fir.func, self.fir.globals)
        return out, self.types

    def block(self, stmts: list) -> list:
        out = []
        for s in stmts:
            if isinstance(s, ir.Assign):
                out += self.assign(s)
            elif isinstance(s, ir.Store):
                index = self.flat_index(s.index)
                out.append(replace(s, index=index))
            elif isinstance(s, ir.If):
                out.append(ir.If(s.test, self.block(s.body), self.block(s.orelse), s.line))
            elif isinstance(s, ir.Loop):
                out.append(ir.Loop(s.var, s.start, s.stop, s.step, self.block(s.body), s.line,
                                   s.ident, s.exit_flag, s.trips, s.checkpoint))
        return out

    def flat_index(self, index: tuple) -> tuple:
        flat = []
        for a in index:
            pat = self.pattern_of(a)
            flat += [ir.Var(n) for n in ir.target_names(pat)] if pat else [a]
        return tuple(flat)

    def copy_pattern(self, dst, src, line) -> list:
        if isinstance(dst, str):
            src_atom = src if isinstance(src, ir.Const) else ir.Var(src)
            return [ir.Assign(dst, ir.Copy(src_atom), line)]
        return [s for d, x in zip(dst, src) for s in self.copy_pattern(d, x, line)]

    def component(self, s, var: str, k: int):
        pat = self.patterns.get(var)
        if pat is None:
            return None
        if not -len(pat) <= k < len(pat):
            self.refuse(s, f"tuple index {k}", "index tuples within their length")
        return pat[k]

    def assign(self, s: ir.Assign) -> list:
        pre, value = self.repack_args(s)
        e = value
        target = s.target
        if isinstance(target, str) and target in self.patterns:
            target = self.patterns[target]
        if isinstance(e, ir.Load) and isinstance(e.array, ir.Var) and e.array.name in self.patterns:
            if len(e.index) != 1 or not isinstance(e.index[0], ir.Const):
                self.refuse(s, "indexing a tuple with a run-time index", "index tuples with constants")
            e = ir.TupleGet(e.array.name, e.index[0].value)
        if isinstance(e, ir.Load):
            e = ir.Load(e.array, self.flat_index(e.index))
        if isinstance(e, ir.TupleGet):
            part = self.component(s, e.var, e.k)
            if part is not None:
                return pre + self.copy_pattern(target, part, s.line)
        if isinstance(e, ir.Copy) and self.pattern_of(e.a) is not None and not isinstance(target, str):
            return pre + self.copy_pattern(target, self.pattern_of(e.a), s.line)
        if isinstance(e, ir.Pack) and not isinstance(target, str):
            out = list(pre)
            for dst, item in zip(target, e.items):
                src = self.pattern_of(item)
                if src is None and isinstance(item, ir.Const) and isinstance(item.value, tuple):
                    src = const_pattern(item.value)  # e.g. `return ((0.0, None),)`
                if src is not None:
                    out += self.copy_pattern(dst, src, s.line)
                elif isinstance(dst, str):
                    out.append(ir.Assign(dst, ir.Copy(item), s.line))
                else:
                    self.refuse(s, "packing a non-tuple into a nested tuple", "pack scalars")
            return out
        return pre + [ir.Assign(target, e, s.line)]

    def repack_args(self, s: ir.Assign):
        """Tuples passed whole to a call are rebuilt from their leaves just before it."""
        e = s.value
        if not isinstance(e, ir.Call | ir.AutodiffCall):
            return [], e
        pre = []

        def packed(a):
            pat = self.pattern_of(a)
            return a if pat is None else self.pack(pat, pre, s.line)

        if isinstance(e, ir.Call):
            leaves = tuple(self.leaf_atoms(a) for a in e.args)
            return pre, ir.Call(e.func, e.name, tuple(packed(a) for a in e.args),
                                leaves if any(p is not None for p in leaves) else None)
        wrappers = tuple((c, n, tuple(packed(a) for a in atoms)) for c, n, atoms in e.wrappers)
        return pre, ir.AutodiffCall(e.func, e.name, e.mode, e.mode_name, e.f, e.f_name, wrappers)

    def leaf_atoms(self, atom):
        """The nested tuple of atoms a tuple-typed argument holds, or None."""
        pat = self.pattern_of(atom)
        return None if pat is None else ir_pattern(pat)

    def pack(self, pat, pre: list, line: int) -> ir.Var:
        items = tuple(ir.Var(p) if isinstance(p, str) else self.pack(p, pre, line) for p in pat)
        name = f"_pk{self.ntemp}"
        self.ntemp += 1
        self.types[name] = types.Tuple([self.types[i.name] for i in items])
        pre.append(ir.Assign(name, ir.Pack(items), line))
        return ir.Var(name)


def ir_pattern(pat):
    """A pattern of leaf names as the same nesting of `ir.Var`s."""
    return tuple(ir_pattern(p) for p in pat) if isinstance(pat, tuple) else ir.Var(pat)


def const_pattern(value):
    """A constant tuple as a nested tuple of `ir.Const` leaves."""
    return tuple(const_pattern(v) if isinstance(v, tuple) else ir.Const(v) for v in value)


def expand_tuples(fir: ir.FunctionIR, localtypes: dict, flatten_params: bool = False
                  ) -> tuple[ir.FunctionIR, dict]:
    """Scalarise the tuples of a typed function; returns the new IR and the extended types.

    With `flatten_params`, a tuple parameter becomes one parameter per leaf (callees: their
    derivatives take and return tuple elements one by one, so each carries its own derivative).
    """
    return TupleExpander(fir, localtypes, flatten_params).run()
