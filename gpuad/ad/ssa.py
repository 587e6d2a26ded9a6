"""One binding, one name: user variables renamed so that each binding has its own name.

Runs on the normalised form, before typing. Outside loops every rebinding of
a user name gets a fresh version (`x`, then `_v1_x`, `_v2_x`...), so a name
keeps one value and one type: `v = v[0] * 2.0` no longer turns the array
parameter `v` into a float, and a value the reverse sweep reads cannot have
been overwritten. Where branches rebind a name differently, each branch ends
by copying its version into one merged version (a phi, as copies).

Inside a loop a name the loop assigns keeps one name for the whole loop (the
loop-carried value, like a phi at the loop header); the reverse sweep saves
and restores what each iteration overwrites. A loop variable that was bound
before the loop gets a version of its own.

A name first bound inside an `if` or a loop may be unbound on some paths
(a branch not taken, a loop run zero times), which Python allows as long as it
is not read there; a merge copy would read it. Such names keep one name, as
loop-carried ones do.

Generated names (temporaries, flags, `_ret`) start with `_` and are left as
they are; versions start with `_v`, which the normaliser keeps user names out of.
"""
from __future__ import annotations

import dataclasses
import itertools

from gpuad.ad import ir


def is_user_name(name: str) -> bool:
    return not name.startswith("_")


def bound_names(s) -> set:
    """The user names a statement (and what it contains) binds."""
    names = set()
    for t in ir.walk([s]):
        if isinstance(t, ir.Assign):
            names.update(ir.target_names(t.target))
        elif isinstance(t, ir.Loop) and t.var:
            names.add(t.var)
    return {n for n in names if is_user_name(n)}


def maybe_unbound(fir: ir.FunctionIR) -> set:
    """User names whose first binding is inside an `if` or a loop (see the module docstring)."""
    seen, names = set(fir.params), set()
    for s in fir.body:
        new = bound_names(s) - seen
        if not isinstance(s, ir.Assign):
            names |= new
        seen |= new
    return names


class Renamer:
    def __init__(self, fir: ir.FunctionIR):
        self.fir = fir
        self.used = set(fir.params)
        self.counter = itertools.count(1)
        self.one_name = maybe_unbound(fir)

    def fresh(self, name: str) -> str:
        if name not in self.used and name not in self.one_name:
            self.used.add(name)
            return name
        return f"_v{next(self.counter)}_{name}"

    # ------------------------------------------------------------ binding
    def bind(self, target, env: dict, loop_wide: set):
        if not isinstance(target, str):
            return tuple(self.bind(t, env, loop_wide) for t in target)
        if not is_user_name(target) or target in loop_wide:
            return env.get(target, target)
        if target in self.one_name:
            env[target] = target
            return target
        env[target] = self.fresh(target)
        return env[target]

    def block(self, stmts: list, env: dict, loop_wide: set, later: frozenset = frozenset()) -> list:
        """`later`: the user names read after these statements (only those need merged versions)."""
        out = []
        for k, s in enumerate(stmts):
            if isinstance(s, ir.Assign):
                value = rename_expr(s.value, env)  # read before the target is rebound
                out.append(ir.Assign(self.bind(s.target, env, loop_wide), value, s.line))
            elif isinstance(s, ir.Store):
                renamed = {"array": env.get(s.array, s.array), "index": rename_index(s.index, env),
                           "value": rename_atom(s.value, env)}
                out.append(dataclasses.replace(s, **renamed))
            elif isinstance(s, ir.If):
                out.append(self.if_(s, env, loop_wide, later | names_read(stmts[k + 1:])))
            else:
                out += self.loop(s, env, loop_wide, later | names_read(stmts[k + 1:]))
        return out

    def if_(self, s: ir.If, env: dict, loop_wide: set, later: frozenset) -> ir.If:
        test = rename_atom(s.test, env)
        env_body, env_else = dict(env), dict(env)
        body = self.block(s.body, env_body, loop_wide, later)
        orelse = self.block(s.orelse, env_else, loop_wide, later)
        for name in sorted(set(env_body) | set(env_else)):
            versions = (env_body.get(name), env_else.get(name))
            if versions == (env.get(name),) * 2:
                continue
            if name not in later or name in self.one_name:  # never read again, or one name anyway
                env[name] = versions[0] or versions[1]
                continue
            if name not in env and None in versions:  # bound on one path only: no merge needed
                env[name] = versions[0] or versions[1]
                continue
            merged = self.fresh(name)
            for branch, version in ((body, versions[0]), (orelse, versions[1])):
                branch.append(ir.Assign(merged, ir.Copy(ir.Var(version or env[name])), s.line))
            assert merged not in versions, "a merge must not copy a name into itself"
            env[name] = merged
        return ir.If(test, body, orelse, s.line)

    def loop(self, s: ir.Loop, env: dict, loop_wide: set, later: frozenset) -> list:
        """The loop, preceded by the copy that gives a rebound loop variable its old value when
        the loop runs no iteration (as Python leaves it)."""
        start, stop, step = (rename_atom(a, env) for a in (s.start, s.stop, s.step))
        var, before, prologue = s.var, [], []
        if var is not None and is_user_name(var) and var not in loop_wide and var not in self.one_name:
            # Bound before the loop: a version of its own, holding the old value until the first
            # iteration copies the count in (an integer: what it held before contributes no more).
            version = self.fresh(var)
            before.append(ir.Assign(version, ir.Copy(ir.Var(env[var])), s.line))
            var = f"_li{s.ident}"
            prologue.append(ir.Assign(version, ir.Copy(ir.Var(var)), s.line))
            env[s.var] = version
        assigned = {n for t in ir.walk(s.body) if isinstance(t, ir.Assign)
                    for n in ir.target_names(t.target) if is_user_name(n)} - loop_wide
        for name in sorted(assigned):  # the loop-carried name
            env[name] = env.get(name) or (name if name in self.one_name else self.fresh(name))
        body_later = later | names_read(s.body)  # the next iteration reads what the body reads
        body = prologue + self.block(s.body, env, loop_wide | assigned | ({s.var} if s.var else set()),
                                     body_later)
        return before + [ir.Loop(var, start, stop, step, body, s.line, s.ident, s.exit_flag, s.trips,
                                 s.checkpoint)]


def names_read(stmts: list) -> frozenset:
    """Every name the statements read (loop bounds and branch tests included)."""
    names = set()
    for t in ir.walk(stmts):
        if isinstance(t, ir.Assign):
            atoms = ir.atoms_of(t.value)
        elif isinstance(t, ir.Store):
            atoms = [ir.Var(t.array), *ir.index_atoms(t.index), t.value]
        elif isinstance(t, ir.If):
            atoms = [t.test]
        else:
            atoms = [t.start, t.stop, t.step, ir.Var(t.exit_flag) if t.exit_flag else None]
        names.update(a.name for a in atoms if isinstance(a, ir.Var))
    return frozenset(names)


def rename_atom(a, env: dict):
    return ir.Var(env.get(a.name, a.name)) if isinstance(a, ir.Var) else a


def rename_index(index: tuple, env: dict) -> tuple:
    return tuple(ir.Slice(*(rename_atom(a, env) for a in i.atoms)) if isinstance(i, ir.Slice)
                 else rename_atom(i, env) for i in index)


def rename_pattern(pattern, env: dict):
    if pattern is None:
        return None
    if isinstance(pattern, tuple):
        return tuple(rename_pattern(p, env) for p in pattern)
    return rename_atom(pattern, env)


def rename_expr(e, env: dict):
    """`e` reading `env[name]` for each name it reads (names not in `env` unchanged)."""
    at = lambda a: rename_atom(a, env)  # noqa: E731
    if isinstance(e, ir.Copy | ir.UnaryOp):
        return dataclasses.replace(e, a=at(e.a))
    if isinstance(e, ir.BinOp | ir.Compare):
        return dataclasses.replace(e, a=at(e.a), b=at(e.b))
    if isinstance(e, ir.Call):
        return dataclasses.replace(e, args=tuple(map(at, e.args)), leaves=rename_pattern(e.leaves, env))
    if isinstance(e, ir.Load):
        return ir.Load(at(e.array), rename_index(e.index, env))
    if isinstance(e, ir.Attr):
        return ir.Attr(env.get(e.var, e.var), e.attr)
    if isinstance(e, ir.Pack):
        return ir.Pack(tuple(map(at, e.items)))
    if isinstance(e, ir.TupleGet):
        return ir.TupleGet(env.get(e.var, e.var), e.k)
    if isinstance(e, ir.AutodiffCall):
        wrappers = tuple((c, n, tuple(map(at, atoms))) for c, n, atoms in e.wrappers)
        return dataclasses.replace(e, wrappers=wrappers)
    raise TypeError(e)


def rename(fir: ir.FunctionIR) -> ir.FunctionIR:
    """`fir` with every user binding outside loops given its own name (see the module docstring)."""
    renamer = Renamer(fir)
    env = {p: p for p in fir.params}
    body = renamer.block(fir.body, env, set())
    return dataclasses.replace(fir, body=body)
