"""Reverse mode: a forward sweep that records, then a reverse sweep that replays backwards.

Each statement yields forward code (the primal, preceded by saving the value
it overwrites when the reverse sweep will need it) and reverse code (adjoint
accumulation from `rules.DERIVATIVES`, zeroing the consumed adjoint, restoring
the overwritten value). `If` decisions, loop trip counts and overwritten
values are recorded in locals (outside loops, entry function) or on the tape
(inside loops, and always in split callees, whose locals die between their
forward half `aug_g` and reverse half `rev_g`).

Which values to save is decided by generating the sweep twice: the first pass
collects the names the adjoint code reads, the second saves only those.
"""
from __future__ import annotations

import numpy as np
from numba.core import types

from gpuad import api
from gpuad.ad import checkpoint, ir, naming, recompute, tape
from gpuad.ad.capacity import poly_at
from gpuad.ad.emit import (
    atom_text,
    binds,
    cast_text,
    drop_dead_stores,
    expr_text,
    index_text,
    index_text_of,
    labelled,
    live_inits,
    loop_header,
    names_read,
    one_text,
    render,
    source_line,
    store_text,
    target_text,
    zero_text,
)
from gpuad.ad.engine import Prepared, Program, inert_call, type_of_atom
from gpuad.ad.ir import multi_assigned
from gpuad.ad.normalize import unwrap
from gpuad.ad.rules import DERIVATIVES, grouped_terms, guarded_term, repeated, rule_terms, user_rule
from gpuad.ad.tape import TapeUse
from gpuad.ad.typing import is_float


def assigned_names(fir: ir.FunctionIR) -> set:
    names = set()
    for s in ir.walk(fir.body):
        if isinstance(s, ir.Assign):
            names.update(ir.target_names(s.target))
        elif isinstance(s, ir.Loop) and s.var:
            names.add(s.var)
    return names


class AdjointSweep:
    """Forward and reverse code of one prepared function (one pass)."""

    def __init__(self, prog: Program, prep: Prepared, split: bool, needed: set | None,
                 first_read: dict | None = None, recomputed: dict | None = None):
        self.prog, self.prep, self.fir = prog, prep, prep.fir
        self.types, self.active = prep.types, prep.active
        self.split = split
        self.needed = needed  # None: first pass, save everything
        self.reads: set = set()
        # name -> {key of what reads it in the reverse sweep (the statement, or why): the first
        # top-level statement whose code reads it there} (first pass)
        self.read_by: dict = {}
        self.reader = None  # the key of the statement being generated
        # id(statement) -> id(statement before whose reverse code it is computed again)
        # (`recompute.plan`): its value is not saved
        self.recomputed: dict = {} if recomputed is None else recomputed
        self.recompute_at: dict = {}  # id(statement) -> the statements computed again before it
        # name -> the first top-level statement whose reverse code reads it (from the first pass's
        # read_by); the statement of the function's body being generated
        self.first_read: dict = {} if first_read is None else first_read
        self.top = 0
        self.multi = multi_assigned(self.fir)
        self.sites = assignment_sites(self.fir)
        self.assigned = set(self.fir.params)
        self.depth = 0
        self.preinit: set = set()
        self.nslot = 0
        self.dynamic_line: int | None = None
        self.dynamic_owner: tuple | None = None  # (file, function) of the loop at dynamic_line
        self.checkpoints: list[tuple[int, str, int]] = []  # (line, trip counter, most iterations)
        self.uses_tape = False

    # ------------------------------------------------------------- helpers
    def d(self, atom) -> str | None:
        if isinstance(atom, ir.Var) and atom.name in self.active:
            return naming.adjoint(atom.name)
        return None

    def adj(self, line: str) -> str:
        """An adjoint line; the names it reads must survive until the reverse sweep."""
        self.note_reads(names_read(line))
        return line

    def note_reads(self, names, reader=None) -> None:
        """The reverse sweep reads `names` (in the code of `reader`, default the current statement)."""
        reader = self.reader if reader is None else reader
        self.reads |= set(names)
        for n in names:
            self.read_by.setdefault(n, {}).setdefault(reader, self.top)

    def is_needed(self, name: str) -> bool:
        """Whether the value `name` had before the current statement is read once it is restored.

        The reverse sweep restores it after the adjoint of the statement (and of its whole
        top-level statement: a loop reads its values again every iteration); only the reverse code
        of that top-level statement and of those before it runs later."""
        if self.needed is None:
            return True
        return name in self.needed and self.first_read.get(name, 0) <= self.top

    def record_on_tape(self) -> bool:
        return self.split or self.depth > 0

    def refuse(self, s, construct, message, hint):
        self.prog.refuse(self.fir, s.line, construct, message, hint)

    def save(self, name: str) -> tuple[list, list, TapeUse]:
        """(forward, reverse, use) preserving `name` across the statement that overwrites it."""
        if not (self.is_needed(name) and (name in self.assigned or self.depth > 0)):
            return [], [], TapeUse()
        ty = self.types.get(name, types.float64)
        if isinstance(ty, types.Array):  # a view: the reverse sweep rebuilds it from its parts
            return [], [], TapeUse()
        if name not in self.fir.params:
            self.preinit.add(name)
        if self.record_on_tape():
            code, use = tape.push(name, ty)
            self.uses_tape = True
            return code, tape.pop(name, ty), use
        slot = f"_s{self.nslot}"
        self.nslot += 1
        return [f"{slot} = {name}"], [f"{name} = {slot}"], TapeUse()

    def record(self, name: str, ty=types.int64) -> tuple[list, list, TapeUse]:
        """Keep a decision or trip count for the reverse sweep."""
        if not self.record_on_tape():
            self.note_reads([name], "record")
            return [], [], TapeUse()
        code, use = tape.push(name, ty)
        self.uses_tape = True
        return code, tape.pop(name, ty), use

    # ---------------------------------------------------------- statements
    def block(self, stmts: list) -> tuple[list, list, TapeUse]:
        fwd, rev, use = [], [], TapeUse()
        top = stmts is self.fir.body
        for k, s in enumerate(stmts):
            if top:
                self.top = k
            outer, self.reader = self.reader, id(s)
            if isinstance(s, ir.Assign):
                f, r, u = self.assign(s)
            elif isinstance(s, ir.Store):
                f, r, u = self.store(s)
            elif isinstance(s, ir.If):
                f, r, u = self.if_(s)
            else:
                f, r, u = self.loop(s)
            self.reader = outer
            r = [recompute.line(t) for t in self.recompute_at.pop(id(s), [])] + r
            label = source_line(self.fir.filename, s.line)  # `# line N: <the user's line>`
            fwd += labelled(label, f)
            rev = labelled(label, r) + rev
            use = use + u
        return fwd, rev, use

    def assign(self, s: ir.Assign) -> tuple[list, list, TapeUse]:
        if s.value == ir.Copy(ir.Var(s.target)):  # `z = z` changes nothing; its adjoint would zero d_z
            return [], [], TapeUse()
        names = ir.target_names(s.target)
        fwd, restores, use = [], [], TapeUse()
        # A name this one statement binds to the same constant every time (`_t0 = float32(0.01)`
        # in a loop) keeps its value: nothing to save.
        same = isinstance(s.target, str) and self.sites.get(s.target) == 1 and constant_expr(s.value)
        if id(s) in self.recomputed:  # computed again before its first reader's reverse code
            same = True
            self.recompute_at.setdefault(self.recomputed[id(s)], []).insert(0, s)
        elif self.needed is None and self.depth > 0 and (operands := recompute.candidate(self, s)):
            self.note_reads(operands, recompute.key(s))  # kept only if the plan chooses `s`
        for n in [] if same else names:
            f, r, u = self.save(n)
            fwd += f
            restores = r + restores
            use = use + u
        e = s.value
        reads_active = (not isinstance(e, ir.Attr) and not inert_call(s, self.active)
                        and any(self.d(a) for a in ir.atoms_of(e)))
        if s.target in self.prep.views:  # its shadow is an expression over the parameters' shadows
            self.assigned.update(names)
            return fwd + [f"{s.target} = {expr_text(e)}"], restores, use
        if isinstance(e, ir.Call) and reads_active and e.func not in DERIVATIVES:
            f, adjoint, u = self.call(s)
            fwd += f
            use = use + u
        else:
            fwd.append(f"{target_text(s.target)} = {expr_text(e)}")
            adjoint = self.adjoint(s) if reads_active else []
        for n in names:
            if n in self.active and n in self.multi:
                adjoint.append(f"d_{n} = {zero_text(self.types[n])}")
        self.assigned.update(names)
        return fwd, adjoint + restores, use

    def adjoint(self, s: ir.Assign) -> list:
        e = s.value
        if isinstance(e, ir.AutodiffCall):
            self.refuse(s, "autodiff(...)", "differentiating through an active nested autodiff call in "
                        "reverse mode is not supported",
                        "pass its inputs as Const, or use forward over reverse")
        if not isinstance(s.target, str) or s.target not in self.active:
            return []
        out = s.target
        if isinstance(e, ir.Copy):
            return [self.adj(f"d_{e.a.name} += d_{out}")]
        if isinstance(e, ir.Load):
            shadow = self.prep.shadow(e.array.name)
            if e.array.name in self.prep.own_arrays:  # no other thread updates this element
                return [self.adj(f"{shadow}[{index_text(e.index)}] += d_{out}")]
            index = index_text(e.index)
            index = f"({index})" if len(e.index) > 1 else index
            return [self.adj(f"{self.prep.atomic_add(e.array.name, e.index)}({shadow}, {index}, d_{out})")]
        lines = []
        for da, partial, count in grouped_terms(rule_terms(self, s, out, self.d)):
            sign, text = guarded_term(repeated(f"d_{out}", count), partial)  # a zero adjoint adds nothing
            lines.append(self.adj(f"{da} {sign}= {text}"))
        return lines

    def store(self, s: ir.Store) -> tuple[list, list, TapeUse]:
        fwd = [store_text(s)]
        if s.array in self.prep.no_store:  # DuplicatedNoNeed and never read back
            fwd = []
        if s.array not in self.active:
            return fwd, [], TapeUse()
        rev = []
        where = f"{self.prep.shadow(s.array)}[{index_text(s.index)}]"
        dv = self.d(s.value)
        if dv:
            rev.append(self.adj(f"{dv} {s.increment or '+'}= {where}"))
        if not s.increment:  # an increment keeps the element's old value, and so its adjoint
            rev.append(self.adj(f"{where} = 0.0"))
        return fwd, rev, TapeUse()

    def if_(self, s: ir.If) -> tuple[list, list, TapeUse]:
        fb, rb, ub = self.block(s.body)
        fo, ro, uo = self.block(s.orelse)
        test = atom_text(s.test)
        if not (rb or ro):
            return [(f"if {test}:", fb)] + ([("else:", fo)] if fo else []), [], ub.max(uo)
        if not isinstance(s.test, ir.Var):  # a constant test needs no record
            branches = [(f"if {test}:", fb)] + ([("else:", fo)] if fo else [])
            return branches, [(f"if {test}:", rb)] + ([("else:", ro)] if ro else []), ub.max(uo)
        # The decision is recorded after the branch, so that the reverse sweep
        # pops it before the values the branch itself recorded (LIFO). A copy
        # keeps it safe from a branch that reassigns the tested variable; taking
        # it through bool() hides a constant test from numba's dead-branch pruning,
        # which would drop one sweep's branch but not the other's.
        decision = f"_c{self.nslot}"
        self.nslot += 1
        fr, rr, ur = self.record(decision)
        fwd = [f"{decision} = bool({test})", (f"if {decision}:", fb)] + ([("else:", fo)] if fo else []) + fr
        rev = rr + [(f"if {decision}:", rb)] + ([("else:", ro)] if ro else [])
        return fwd, rev, ub.max(uo) + ur

    def loop(self, s: ir.Loop) -> tuple[list, list, TapeUse]:
        if s.checkpoint:
            return checkpoint.checkpointed_loop(self, s)
        (fv, rv, uv), (fb, rb, ub) = self.loop_parts(s)
        exit_ = [(f"if {s.exit_flag}:", ["break"])] if s.exit_flag else []
        if not rb:
            return fv + [(loop_header(s), fb + exit_)], rv, uv + self.loop_room(s, ub)
        if self.unrolls(s, fb, rb):
            return self.unrolled(s, (fv, rv, uv), (fb, rb, ub))
        n = f"_n{s.ident}"
        fr, rr, ur = self.record(n)
        trips = self.trip_text(s)
        if trips is not None and not fr and tape.pushes_per_run(fb) is not None:
            # the trip count is known before the loop: its room on the tape is reserved there
            before, body = tape.reserved_loop(fb, n, s.ident)
            fwd = fv + [f"{n} = {trips}"] + before + [(loop_header(s), body)]
        else:
            fwd = fv + [f"{n} = 0", (loop_header(s), [f"{n} += 1"] + fb + exit_)] + fr
        k = f"_k{s.ident}"
        body = []
        if s.var:
            body.append(self.adj(f"{s.var} = {index_text_of(s, k)}"))
        # The reverse sweep runs only once the tape is known not to have overflowed: a loop that
        # pushes every iteration ran at most capacity times, and counts down in int32.
        bounded = (s.trips <= tape.INT32_MAX if s.trips is not None
                   else tape.pushes_every_iteration(fb))
        rev = rr + [(tape.countdown(k, n, bounded), body + rb)] + rv
        return fwd, rev, uv + self.loop_room(s, ub) + ur

    def unrolls(self, s: ir.Loop, fb: list, rb: list) -> bool:
        """Whether taped loop `s` is written out iteration by iteration in both sweeps: a `range` of
        the entry function with a static trip count whose iterations tape at most
        tape.REGISTER_ENTRIES in all, and come to at most tape.UNROLLED_LINES lines of code (the
        compile time grows with them). Every tape position is then a constant, and NVVM keeps the
        entries in registers instead of local memory."""
        if s.trips is None or s.exit_flag or s.var is None or self.split or self.depth > 0:
            return False
        use = tape.pushes_per_run(fb)
        return (use is not None and 0 < (use.floats + use.ints) * s.trips <= tape.REGISTER_ENTRIES
                and s.trips * (tape.code_lines(fb) + tape.code_lines(rb)) <= tape.UNROLLED_LINES)

    def unrolled(self, s: ir.Loop, var: tuple, body: tuple) -> tuple[list, list, TapeUse]:
        (fv, rv, uv), (fb, rb, ub) = var, body
        fwd, rev = list(fv), []
        for j in range(s.trips):
            at = f"{s.var} = {index_text_of(s, str(j))}"
            fwd += [at] + fb
            rev = [self.adj(at)] + rb + rev
        return fwd, rev + rv, uv + ub * s.trips

    def trip_text(self, s: ir.Loop) -> str | None:
        """The trip count of `s` as an expression evaluated before it, if that is known then: a
        `range` over signed integers with a positive constant step that no `break` leaves."""
        if s.trips is not None and not s.exit_flag:
            return str(s.trips)
        if s.var is None or s.exit_flag or not (isinstance(s.step, ir.Const) and type(s.step.value) is int
                                                 and s.step.value > 0):
            return None
        for a in (s.start, s.stop):
            ty = self.types.get(a.name) if isinstance(a, ir.Var) else None
            if not (isinstance(a, ir.Const) and type(a.value) is int
                    or isinstance(ty, types.Integer) and ty.signed):
                return None
        span = atom_text(s.stop) if s.start == ir.Const(0) else f"{atom_text(s.stop)} - {atom_text(s.start)}"
        step = s.step.value
        return f"max({span}, 0)" if step == 1 else f"max(({span} + {step - 1}) // {step}, 0)"

    def loop_parts(self, s: ir.Loop) -> tuple[tuple, tuple]:
        """(saving the loop variable, one iteration of the body), as (forward, reverse, use) each."""
        var = self.save(s.var) if s.var else ([], [], TapeUse())
        if s.var:
            self.assigned.add(s.var)
        self.depth += 1
        body = self.block(s.body)
        self.depth -= 1
        return var, body

    def trips(self, s: ir.Loop, body_use: TapeUse) -> int:
        """Iterations to size the tape for: static count, or the configured capacity."""
        if s.trips is not None:
            return s.trips
        if body_use.empty:
            return 0
        if self.dynamic_line is None:
            self.dynamic_line, self.dynamic_owner = s.line, loop_owner(self.fir)
        return self.prog.tape_capacity

    def loop_room(self, s: ir.Loop, body_use: TapeUse) -> TapeUse:
        """The tape room of loop `s` whose body pushes `body_use`: a static count's, or the
        configured capacity's (growing with it: `TapeUse.per_capacity`)."""
        trips = self.trips(s, body_use)
        if s.trips is None and trips:
            return body_use.per_capacity(trips)
        return body_use * trips

    # --------------------------------------------------------------- calls
    def call(self, s: ir.Assign) -> tuple[list, list, TapeUse]:
        """A call of a plain function (or of one with a user rule) with active arguments."""
        e = s.value
        argtypes = tuple(type_of_atom(a, self.types, self.prog.ns.objects) for a in e.args)
        flat = ir.call_arguments(e)  # tuple arguments pass their elements one by one
        flat_types = tuple(type_of_atom(a, self.types, self.prog.ns.objects) for a in flat)
        flags = tuple(self.d(a) is not None for a in flat)
        rule = user_rule(e.func)
        if rule is not None:
            return self.user_rule_call(s, rule, flags)
        self.prog.check_callee(self.fir, s, e.func, expr_text(e))
        info = split_functions(self.prog, unwrap(e.func), argtypes, flags, s, self.fir)
        if info.dynamic_line is not None and self.dynamic_line is None:
            # the callee's loop (its file and line) is the one the report names
            self.dynamic_line, self.dynamic_owner = info.dynamic_line, info.dynamic_owner
        self.uses_tape = True
        args = [atom_text(a) for a in flat]
        tape_args = "_tf, _ti, _spf, _spi, status"
        lhs = "_spf, _spi" if info.ret is None else f"{target_text(s.target)}, _spf, _spi"
        fwd = [f"{lhs} = {info.aug}({', '.join(args + [tape_args])})"]
        rev_args = []
        for a, flag, ty in zip(flat, flags, flat_types):
            if isinstance(a, ir.Var) and a.name in self.prep.views:  # rebuilt: it may have been rebound
                rev_args.append(self.prep.shadow(a.name, ""))
            else:
                rev_args.append(atom_text(a))
            if flag and isinstance(ty, types.Array):
                rev_args.append(self.prep.shadow(a.name))
        seeds = [f"d_{n}" if n in self.active else zero_text(ty) for n, ty in
                 zip(ir.target_names(s.target), info.ret_leaf_types) if is_float(ty)] if info.ret else []
        results = [f"_r{i}" for i in range(len(info.adjoint_args))]
        rev = [self.adj(f"{', '.join(results + ['_spf', '_spi'])} = "
                        f"{info.rev}({', '.join(rev_args + seeds + [tape_args])})")]
        for r, i in zip(results, info.adjoint_args):
            rev.append(f"{self.d(flat[i])} += {r}")
        return fwd, rev, info.use

    def user_rule_call(self, s: ir.Assign, rule, flags) -> tuple[list, list, TapeUse]:
        e = s.value
        if rule.reverse_fn is None:
            self.refuse(s, expr_text(e), f"{e.name} has a user rule without a reverse rule",
                        "register one with @gpuad.rule(f).reverse")
        if not isinstance(s.target, str):
            self.refuse(s, expr_text(e), "user rules must return a scalar", "return a float")
        name = self.prog.ns.bind(rule.reverse_fn.__name__, rule.reverse_fn)
        fwd = [f"{s.target} = {expr_text(e)}"]
        seed = f"d_{s.target}" if s.target in self.active else "0.0"
        r = f"_ur{self.nslot}"
        self.nslot += 1
        args = [atom_text(a) for a in e.args]
        rev = [self.adj(f"{r} = {name}({', '.join(args + [seed])})")]
        for i, (a, flag) in enumerate(zip(e.args, flags)):
            if flag and not isinstance(self.types.get(a.name), types.Array):
                rev.append(f"{self.d(a)} += {r}[{i}]")
        return fwd, rev, TapeUse()


def assignment_sites(fir: ir.FunctionIR) -> dict:
    """name -> how many statements (parameters count as one) bind it."""
    sites = dict.fromkeys(fir.params, 1)
    for t in ir.walk(fir.body):
        names = ir.target_names(t.target) if isinstance(t, ir.Assign) else [t.var] if isinstance(
            t, ir.Loop) and t.var else []
        for n in names:
            sites[n] = sites.get(n, 0) + 1
    return sites


def constant_expr(e) -> bool:
    """Whether `e` has the same value at every evaluation: literals combined by operators, or a
    literal converted by a numeric type (`float32(0.01)`)."""
    if isinstance(e, ir.Copy | ir.UnaryOp | ir.BinOp | ir.Compare):
        return all(isinstance(a, ir.Const) for a in ir.atoms_of(e))
    if isinstance(e, ir.Call) and e.leaves is None and all(isinstance(a, ir.Const) for a in e.args):
        return isinstance(e.func, types.Number | types.NumberClass) or e.func in NUMPY_SCALARS
    return False


NUMPY_SCALARS = {np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                 np.uint8, np.uint16, np.uint32, np.uint64, np.bool_}


class SplitInfo:
    """What a caller needs to call a callee's forward and reverse halves."""

    def __init__(self, aug, rev, ret, ret_leaf_types, adjoint_args, use, dynamic_line, dynamic_owner=None):
        self.aug, self.rev, self.ret = aug, rev, ret
        self.ret_leaf_types, self.adjoint_args = ret_leaf_types, adjoint_args
        self.use, self.dynamic_line, self.dynamic_owner = use, dynamic_line, dynamic_owner


def loop_owner(fir) -> tuple[str, str]:
    """(file, function) of a loop of `fir`: what an overflow report at its line names."""
    return fir.filename, getattr(fir.func, "__name__", fir.name)


def two_pass(prog: Program, prep: Prepared, split: bool) -> AdjointSweep:
    """Generate once to learn what the adjoints read, then again saving only that."""
    first = AdjointSweep(prog, prep, split, None)
    first.block(prep.fir.body)
    locals_ = set(prep.types) | set(prep.fir.params)
    chosen = recompute.plan(first, prep.fir)
    dropped = {recompute.key(s) for s in ir.walk(prep.fir.body)} - {("recompute", i) for i in chosen}
    first_read = {n: min(top for reader, top in readers.items() if reader not in dropped)
                  for n, readers in first.read_by.items() if readers.keys() - dropped}
    sweep = AdjointSweep(prog, prep, split, set(first_read) & locals_, first_read, chosen)
    sweep.code = sweep.block(prep.fir.body)
    return sweep


def adjoint_inits(prep: Prepared) -> list:
    lines = []
    for name in sorted(prep.active):
        ty = prep.types.get(name)
        if ty is not None and not isinstance(ty, types.Array):
            lines.append(f"d_{name} = {zero_text(ty)}")
    return lines


def preinits(sweep: AdjointSweep, names) -> list:
    return [f"{n} = {zero_text(sweep.types.get(n, types.float64))}" for n in sorted(names)
            if n not in sweep.fir.params]


def split_functions(prog: Program, fn, argtypes, flags, site, caller) -> SplitInfo:
    """Generate (once) `aug_g` (forward half) and `rev_g` (reverse half) of a callee."""
    key = ("split", fn, argtypes, flags)
    if key in prog.generated:
        return prog.generated[key]
    prog.enter_callee(fn, site, caller)
    prep = prog.prepare(fn, argtypes, flags, flatten_tuples=True)
    fir = prep.fir
    argtypes = tuple(prep.types[p] for p in fir.params)  # one per parameter, tuples flattened
    sweep = two_pass(prog, prep, split=True)
    fwd, rev, use = sweep.code
    snapshot = sorted((sweep.needed & assigned_names(fir)) - set(fir.params)) + sorted(
        sweep.needed & assigned_names(fir) & set(fir.params))
    snap_fwd, snap_rev = [], []
    for n in snapshot:
        code, u = tape.push(n, prep.types.get(n, types.float64))
        snap_fwd += code
        snap_rev = tape.pop(n, prep.types.get(n, types.float64)) + snap_rev
        use = use + u
    aug, revname = prog.unique(naming.AUGMENTED + fir.name), prog.unique(naming.REVERSE_HALF + fir.name)
    tape_params = ["_tf", "_ti", "_spf", "_spi", "status"]
    caps = ["_capf = len(_tf)", "_capi = len(_ti)"]
    ret_text = target_text(fir.ret) if fir.ret is not None else None
    aug_code = fwd + snap_fwd + [f"return {ret_text}, _spf, _spi" if ret_text else "return _spf, _spi"]
    aug_inits = caps + preinits(sweep, sweep.preinit | set(snapshot))
    aug_body = live_inits(aug_inits, aug_code) + aug_code
    params, adjoint_args = [], []
    for i, (p, flag, ty) in enumerate(zip(fir.params, flags, argtypes)):
        params.append(p)
        if flag and isinstance(ty, types.Array):
            params.append(naming.adjoint(p) if p in prep.active else naming.UNUSED + naming.adjoint(p))
        elif flag and is_float(ty):
            adjoint_args.append(i)
    leaves = ir.target_names(fir.ret) if fir.ret is not None else []
    leaf_types = [prep.types.get(n, types.none) for n in leaves]
    seeds = [f"_seed{k}" for k, ty in enumerate(leaf_types) if is_float(ty)]
    seed_lines = [f"d_{n} += _seed{k}" for k, (n, ty) in enumerate(zip(leaves, leaf_types))
                  if is_float(ty) and n in prep.active]
    outs = [naming.adjoint(fir.params[i]) if fir.params[i] in prep.active else zero_text(argtypes[i])
            for i in adjoint_args]
    ret = [f"return {', '.join(outs + ['_spf', '_spi'])}"]
    rev_code = drop_dead_stores(seed_lines + rev, ret) + ret
    rev_body = (live_inits(caps, snap_rev + rev_code) + snap_rev + live_inits(adjoint_inits(prep), rev_code)
                + rev_code)
    prog.defs.append("\n".join(render([(f"def {aug}({', '.join(fir.params + tape_params)}):", aug_body)])))
    prog.defs.append("\n".join(render([(f"def {revname}({', '.join(params + seeds + tape_params)}):",
                                        rev_body)])))
    info = SplitInfo(aug, revname, fir.ret, leaf_types, adjoint_args, use, sweep.dynamic_line,
                     sweep.dynamic_owner)
    prog.generated[key] = info
    prog.in_progress.pop()
    return info


def overflow_report(sweep: AdjointSweep, use: TapeUse):
    """`report(kind, line)`: the call reporting an overflow of `kind` ("tape" or "checkpoint") at
    loop `line`, after the forward sweep. Every report gives all the host needs for a capacity that
    fits (`gpuad.targets.status`), whichever check failed first: the iterations of the longest
    checkpointed loop and both stacks' entries needed (the forward sweep counts every push, also
    past the capacity; what they hold the host knows from `TapeUse.growth`)."""
    trips = [t for _, t, _ in sweep.checkpoints]
    ran = "0" if not trips else trips[0] if len(trips) == 1 else f"max({', '.join(trips)})"
    floats = "_spf" if use.floats else "0"
    ints = "_spi" if use.ints else "0"

    def report(kind: str, line: int) -> str:
        return f"report_{kind}_overflow(status, {line}, {ran}, {floats}, {ints})"
    return report


def note_overflow_line(prog: Program, line: int, owner: tuple, use: TapeUse) -> None:
    """The entry can report an overflow at loop `line` of `owner`, its tape sized by `use`."""
    prog.can_fail = True
    prog.overflow_lines.add(line)
    prog.overflow_owners[line] = owner
    size_f, size_i = use.size_f, use.size_i
    if poly_at(size_f, prog.tape_capacity) == use.floats and poly_at(
            size_i, prog.tape_capacity) == use.ints:  # else the hint says "at least"
        prog.tape_growth[line] = use.growth()


def reverse_entry(prog: Program, mode, prep: Prepared, activities, argtypes, name: str) -> None:
    """The entry adjoint function: forward sweep, reverse sweep, `(derivs,)` [+ primal]."""
    fir = prep.fir
    if fir.ret is not None and not isinstance(fir.ret, str):
        prog.refuse(fir, fir.firstline, "return (...)", "reverse mode of a function returning a tuple is "
                    "not supported", "return one scalar (sum the outputs you want to differentiate)")
    sweep = two_pass(prog, prep, split=False)
    fwd, rev, use = sweep.code
    params = []
    for p, act in zip(fir.params, activities):
        params.append(p)
        if issubclass(act, api.Duplicated):
            params.append(naming.adjoint(p) if p in prep.active else naming.UNUSED + naming.adjoint(p))
    params.append("status")
    derivs = []
    for p, act, ty in zip(fir.params, activities, argtypes):
        if act is api.Active and is_float(ty):
            derivs.append(cast_text(naming.adjoint(p), ty) if p in prep.active else zero_text(ty))
        else:
            derivs.append("None")
    zero_derivs = [zero_text(ty) if d != "None" else "None" for d, ty in zip(derivs, argtypes)]
    # The primal is returned as the forward sweep left it: copied aside only if the reverse sweep
    # assigns its variable again (restoring an overwritten value).
    keep_primal = mode.with_primal and fir.ret is not None and binds(rev, fir.ret)
    primal = "_primal" if keep_primal else fir.ret if fir.ret is not None else "None"

    def result(ds):
        tup = f"({', '.join(ds)},)" if len(ds) == 1 else f"({', '.join(ds)})"
        return f"return ({tup}, {primal})" if mode.with_primal else f"return ({tup},)"

    forward = fwd + ([f"_primal = {fir.ret}"] if keep_primal else [])
    report = overflow_report(sweep, use)
    for line, trips, most in sweep.checkpoints:
        forward.append((f"if {trips} > {most}:", [report("checkpoint", line), result(zero_derivs)]))
        note_overflow_line(prog, line, loop_owner(prep.fir), use)
    stacks = [(sp, cap) for sp, cap, used in (("_spf", "_capf", use.floats), ("_spi", "_capi", use.ints))
              if used]
    if sweep.dynamic_line is not None and stacks:
        test = " or ".join(f"{sp} > {cap}" for sp, cap in stacks)
        forward.append((f"if {test}:", [report("tape", sweep.dynamic_line), result(zero_derivs)]))
        note_overflow_line(prog, sweep.dynamic_line, sweep.dynamic_owner, use)
    reverse = [f"d_{fir.ret} += {one_text(prep.types[fir.ret])}"] if fir.ret in prep.active else []
    reverse = drop_dead_stores(reverse + rev, [result(derivs)]) + [result(derivs)]
    reverse = live_inits(adjoint_inits(prep), reverse) + reverse
    tapes, counters = tape.alloc(use) if sweep.uses_tape else ([], [])
    body = tapes + live_inits(counters, forward + reverse)
    body += ["# forward sweep: the function's own statements, taping what the reverse sweep needs"]
    body += live_inits(preinits(sweep, sweep.preinit), forward + reverse) + forward
    body += ["# reverse sweep: adjoints, from the last statement back to the first"] + reverse
    prog.defs.append("\n".join(render([(f"def {name}({', '.join(params)}):", body)])))
