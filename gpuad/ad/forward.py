"""Forward mode: each statement is followed by the statement computing its tangent.

Tangents (`t_x`) flow along the primal control flow unchanged; rule partials
come from `rules.DERIVATIVES`, calls of plain functions become calls of their
own tangent functions (`tan_g`), user rules are called as written.
"""
from __future__ import annotations

import ast

from numba.core import types

from gpuad import api
from gpuad.ad import ir, naming
from gpuad.ad.emit import (
    atom_text,
    cast_text,
    expr_text,
    index_text,
    labelled,
    live_inits,
    loop_header,
    render,
    source_line,
    store_text,
    target_text,
    zero_text,
)
from gpuad.ad.engine import Prepared, Program, inert_call, type_of_atom
from gpuad.ad.normalize import unwrap
from gpuad.ad.primitives import ATOMIC_ADDS, guarded_add_mul, guarded_mul
from gpuad.ad.rules import DERIVATIVES, grouped_terms, guarded_sum, repeated, rule_terms, user_rule
from gpuad.ad.typing import is_float
from gpuad.errors import UnsupportedConstruct

STATUS_TYPE = types.Array(types.int64, 1, "C")


class TangentSweep:
    """Generates the tangent function of one prepared function."""

    def __init__(self, prog: Program, prep: Prepared):
        self.prog = prog
        self.prep = prep
        self.fir = prep.fir
        self.active = prep.active
        self.ntemp = 0

    def t(self, atom) -> str | None:
        if isinstance(atom, ir.Var) and atom.name in self.active:
            return naming.tangent(atom.name)
        return None

    def refuse(self, s, construct: str, message: str, hint: str):
        self.prog.refuse(self.fir, s.line, construct, message, hint)

    # ------------------------------------------------------------ statements
    def block(self, stmts: list) -> list:
        code = []
        for s in stmts:
            # `# line N: <the user's line>` before what this statement generates
            code += labelled(source_line(self.fir.filename, s.line), self.statement(s))
        return code

    def statement(self, s) -> list:
        if isinstance(s, ir.Assign):
            return self.assign(s)
        if isinstance(s, ir.Store):
            code = [store_text(s)] if s.array not in self.prep.no_store else []
            if s.array in self.active and (tv := self.t(s.value) or ("" if s.increment else "0.0")):
                code.append(store_text(s, f"t_{s.array}", tv))
            return code
        if isinstance(s, ir.If):
            code = [(f"if {atom_text(s.test)}:", self.block(s.body))]
            return code + [("else:", self.block(s.orelse))] if s.orelse else code
        body = self.block(s.body)
        if s.exit_flag:
            body.append((f"if {s.exit_flag}:", ["break"]))
        return [(loop_header(s), body)]

    def assign(self, s: ir.Assign) -> list:
        names = ir.target_names(s.target)
        active_out = [n for n in names if n in self.active]
        e = s.value
        primal = f"{target_text(s.target)} = {expr_text(e)}"
        reads = (not isinstance(e, ir.Attr) and not inert_call(s, self.active)
                 and any(self.t(a) for a in ir.atoms_of(e)))
        if isinstance(e, ir.Call) and reads and e.func not in DERIVATIVES:
            return self.call(s)
        if isinstance(e, ir.Call) and e.func in ATOMIC_ADDS:  # an inner adjoint's shadow update
            return [primal] + self.atomic_add_tangent(e)
        if isinstance(e, ir.AutodiffCall) and reads:
            return self.nested_autodiff(s)
        if not active_out:
            return [primal]
        if len(active_out) > 1:  # a call returning a tuple: active outside only through a later merge
            if reads:
                self.refuse(s, expr_text(e), "no tangent rule for a builtin returning several values",
                            "compute the values one by one")
            return [primal] + [f"t_{n} = {zero_text(self.prep.types[n])}" for n in active_out]
        (out,) = active_out
        if out in self.prep.views:  # the same view of the source's tangent, bound beside it
            index = f"[{index_text(e.index)}]" if isinstance(e, ir.Load) else ""
            source = e.array.name if isinstance(e, ir.Load) else e.a.name
            return [primal, f"t_{out} = t_{source}{index}"]
        if isinstance(self.prep.types[out], types.Array):  # a scratch array: its tangent is one too
            return [primal, f"t_{out} = {expr_text(e)}"]
        if not reads:
            return [primal, f"t_{out} = {zero_text(self.prep.types[out])}"]
        if isinstance(e, ir.Copy):
            return [primal, f"t_{out} = {self.t(e.a)}"]
        if isinstance(e, ir.Load):
            return [primal, f"t_{out} = t_{e.array.name}[{index_text(e.index)}]"]
        return [primal, f"t_{out} = {self.rule_tangent(s, out)}"]

    def atomic_add_tangent(self, e: ir.Call) -> list:
        """`atomic_add(d_a, k, v)` adds v to d_a[k]: its tangent adds v's tangent to t_d_a[k] (the
        shadow's tangent; activity refuses an active v into a shadow without one)."""
        array, index, value = e.args
        tv = self.t(value)
        if tv is None or array.name not in self.active:
            return []
        return [f"{e.func.__name__}(t_{array.name}, {atom_text(index)}, {tv})"]  # same index, same lanes

    def rule_tangent(self, s: ir.Assign, out: str) -> str:
        zero = zero_text(self.prep.types[out])
        terms = rule_terms(self, s, out, self.t)
        if isinstance(s.value, ir.Call) and s.value.func in (guarded_mul, guarded_add_mul):
            terms = self.partial_guarded_by_factor(s.value, terms)
        terms = [(repeated(t, count), partial) for t, partial, count in grouped_terms(terms)]
        return guarded_sum(terms) if terms else zero  # a zero tangent contributes nothing

    def partial_guarded_by_factor(self, e: ir.Call, terms: list) -> list:
        """The tangent terms of `guarded_mul(factor, partial)` (or `acc + ` it, fused) with the
        partial's term guarded by the factor: where the factor (an adjoint) is 0 the product is 0
        whatever the partial, so the partial's tangent adds nothing even where it is inf or NaN
        (a dead `s = 1.0 / x` at x = 0: the second derivative came out NaN). The factor's term
        stays guarded by its own tangent, so an exactly zero adjoint's tangent still counts."""
        *_, factor, partial = ir.atoms_of(e)
        t_partial = self.t(partial)
        if t_partial is None or not terms or terms[-1][0] != t_partial:
            return terms
        return [*terms[:-1], (atom_text(factor), ast.Name(t_partial))]

    def call(self, s: ir.Assign) -> list:
        """A plain function (or one with a user rule) called with active arguments."""
        e = s.value
        argtypes = tuple(type_of_atom(a, self.prep.types, self.prog.ns.objects) for a in e.args)
        flags = tuple(self.t(a) is not None for a in e.args)
        rule = user_rule(e.func)
        if rule is not None:
            if rule.forward_fn is None:
                self.refuse(s, expr_text(e), f"{e.name} has a user rule without a forward rule",
                            "register one with @gpuad.rule(f).forward")
            name = self.prog.ns.bind(rule.forward_fn.__name__, rule.forward_fn)
            args = []
            for a in e.args:
                args += [atom_text(a), self.t(a) or "0.0"]
            out = [f"{target_text(s.target)} = {expr_text(e)}"]
            (tout,) = [n for n in ir.target_names(s.target)] if isinstance(s.target, str) else [None]
            if tout is None:
                self.refuse(s, expr_text(e), "user rules must return a scalar", "return a float")
            if tout in self.active:
                out.append(f"t_{tout} = {name}({', '.join(args)})")
            return out
        self.prog.check_callee(self.fir, s, e.func, expr_text(e))
        flat = ir.call_arguments(e)  # tuple arguments pass their elements one by one
        flags = tuple(self.t(a) is not None for a in flat)
        callee = tangent_function(self.prog, unwrap(e.func), argtypes, flags, s, self.fir)
        args = []
        for a, flag in zip(flat, flags):
            args.append(atom_text(a))
            if flag:
                args.append(self.t(a))
        args.append("status")
        tangent_target = self.tangent_pattern(s.target)
        lhs = f"{target_text(s.target)}, {target_text(tangent_target)}"
        return [f"{lhs} = {callee}({', '.join(args)})"]

    def nested_autodiff(self, s: ir.Assign) -> list:
        """Forward over reverse: the tangent of the generated adjoint of the inner function."""
        differentiate = self.prog.differentiate  # stage 2's entry, handed down (no import back up)

        e = s.value
        if not e.mode.reverse:
            self.refuse(s, "autodiff(...)", "forward over forward is not supported",
                        "differentiate the inner function in Reverse mode")
        ns = self.prog.ns.objects
        classes = tuple(c for c, _, _ in e.wrappers)
        primal_types = tuple(type_of_atom(atoms[0], self.prep.types, ns) for _, _, atoms in e.wrappers)
        deriv = differentiate(e.f, e.mode, classes, primal_types, tape_capacity=self.prog.tape_capacity)
        # Its tangent keeps the inner adjoint's overflow reports (they name the inner function's
        # lines, not this job's: not added to overflow_lines).
        self.prog.can_fail |= deriv.can_fail
        inner = unwrap(e.f).__code__
        for line in deriv.overflow_lines:  # the inner function's loops, named with its file
            self.prog.overflow_owners.setdefault(line, (inner.co_filename, inner.co_name))
        for line, filename, function in deriv.overflow_owners:
            self.prog.overflow_owners[line] = (filename, function)
        self.prog.tape_growth.update(deriv.tape_growth)
        flat = [a for _, _, atoms in e.wrappers for a in atoms]
        argtypes = tuple(type_of_atom(a, self.prep.types, ns) for a in flat) + (STATUS_TYPE,)
        flags = tuple(self.t(a) is not None for a in flat) + (False,)
        try:
            callee = tangent_function(self.prog, deriv.function, argtypes, flags, s, self.fir)
        except UnsupportedConstruct as exc:
            # a shadow the outer call gives no tangent: the inner sweep adds active adjoints into it
            untangented = [atoms[1] for c, _, atoms in e.wrappers if len(atoms) == 2 and issubclass(
                c, api.Duplicated) and self.t(atoms[1]) is None and isinstance(atoms[1], ir.Var)]
            if untangented and "which has no shadow" in exc.message:
                names = ", ".join(f"`{a.name}`" for a in untangented)
                self.refuse(s, expr_text(e), f"the reverse sweep of {e.f_name} adds derivatives into the "
                            f"shadow {names}, which has no tangent here",
                            "pass the shadow to the outer Forward call as Duplicated(shadow, its tangent)")
            self.refuse(s, expr_text(e), f"cannot differentiate the adjoint of {e.f_name} in forward mode "
                        f"({exc.message})", "the adjoint gpuad generated for the inner function uses "
                        "something forward mode cannot differentiate; give that function a gpuad.rule")
        args = []
        for a, flag in zip(flat, flags):
            args.append(atom_text(a))
            if flag:
                args.append(self.t(a))
        args += ["status", "status"]
        lhs = f"{target_text(s.target)}, {target_text(self.tangent_pattern(s.target))}"
        return [f"{lhs} = {callee}({', '.join(args)})"]

    def tangent_pattern(self, target):
        if isinstance(target, str):
            if target in self.active:
                return naming.tangent(target)
            self.ntemp += 1
            return f"_tt{self.ntemp}"
        return tuple(self.tangent_pattern(t) for t in target)


def tangent_function(prog: Program, fn, argtypes: tuple, flags: tuple, site, caller) -> str:
    """Name of the generated tangent function of `fn` (generated once per signature)."""
    key = ("tangent", fn, argtypes, flags)
    if key in prog.generated:
        return prog.generated[key]
    prog.enter_callee(fn, site, caller)
    prep = prog.prepare(fn, argtypes, flags, flatten_tuples=True)
    name = prog.unique(naming.TANGENT_FUNCTION + prep.fir.name)
    prog.generated[key] = name
    params = []
    for p, flag in zip(prep.fir.params, flags):
        params.append(p)
        if flag and p in prep.active:
            params.append(naming.tangent(p))
        elif flag:
            params.append(naming.UNUSED + naming.tangent(p))
    params.append("status")
    code = TangentSweep(prog, prep).block(prep.fir.body)
    if prep.fir.ret is None:
        code.append("return None, None")
    else:
        code.append(f"return {target_text(prep.fir.ret)}, {target_text(tangent_ret(prep, prep.fir.ret))}")
    body = live_inits(init_tangents(prep, flags), code) + code
    prog.defs.append("\n".join(render([(f"def {name}({', '.join(params)}):", body)])))
    prog.in_progress.pop()
    return name


def tangent_ret(prep: Prepared, ret):
    if isinstance(ret, str):
        if ret in prep.active:
            return naming.tangent(ret)
        return zero_text(prep.types.get(ret, types.float64)) if is_float(prep.types.get(ret)) else "0.0"
    return tuple(tangent_ret(prep, r) for r in ret)


def init_tangents(prep: Prepared, flags: tuple) -> list:
    """Zero tangents so every path defines them: active locals, and parameters given no tangent
    (`Const` ones that become active by being reassigned)."""
    given = {p for p, flag in zip(prep.fir.params, flags) if flag}
    lines = []
    for name in sorted(prep.active - given):
        ty = prep.types.get(name)
        if ty is not None and not isinstance(ty, types.Array):
            lines.append(f"t_{name} = {zero_text(ty)}")
    return lines


def forward_entry(prog: Program, fn, mode, prep: Prepared, flags: tuple, argtypes: tuple, name: str) -> None:
    """The entry tangent function: returns `(df,)` or `(df, primal)`."""
    params = []
    for p, flag in zip(prep.fir.params, flags):
        params.append(p)
        if flag:
            params.append(naming.tangent(p) if p in prep.active else naming.UNUSED + naming.tangent(p))
    params.append("status")
    code = TangentSweep(prog, prep).block(prep.fir.body)
    ret = prep.fir.ret
    if ret is None:
        df, primal = "None", "None"
    elif not isinstance(ret, str):
        prog.refuse(prep.fir, prep.fir.firstline, "return (...)", "forward mode of a function returning a "
                    "tuple is not supported", "return one scalar")
    else:
        zero = zero_text(prep.return_type)
        df = cast_text(naming.tangent(ret), prep.return_type) if ret in prep.active else zero
        primal = ret
    code.append(f"return ({df}, {primal})" if mode.with_primal else f"return ({df},)")
    inits = live_inits(init_tangents(prep, flags), code)
    body = ["# forward sweep: each statement, then its tangent"] + inits + code
    prog.defs.append("\n".join(render([(f"def {name}({', '.join(params)}):", body)])))
