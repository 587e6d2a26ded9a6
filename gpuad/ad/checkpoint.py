"""Checkpointed loops (`# gpuad: checkpoint`): recompute segments instead of taping every iteration.

A loop marked on its line is run without taping, snapshotting its state (`loop_state`) every
K = tape_capacity iterations: the part of it a segment's recomputation reads again (`read_again`;
an accumulated result only the primal reads needs none), on the tape, or in registers where the
segments times the snapshotted names are few (`register_snapshots`). The reverse sweep takes the
segments last to first:
restore the segment's snapshot, run its iterations again while taping, then reverse them. What
a recomputation must redo exactly is checked first (`check_checkpointable`): no stores, no
calls gpuad differentiates, no inner loops with run-time trip counts, and no later write into
memory the loop reads (`later_write`). Beside the tape (`gpuad.ad.tape`), which it uses.
"""
from __future__ import annotations

import re

from numba.core import types

from gpuad.ad import ir, tape
from gpuad.ad.emit import cast_text, expr_text, index_text_of, loop_header, primal_code
from gpuad.ad.engine import inert_call
from gpuad.ad.normalize import may_write_memory
from gpuad.ad.recompute import PURE_CALLS
from gpuad.ad.rules import DERIVATIVES, user_rule
from gpuad.ad.tape import TapeUse


def checkpointed_loop(sweep, s: ir.Loop) -> tuple[list, list, TapeUse]:
    """A loop run without taping, snapshotting its state every K iterations.

    K = tape_capacity. The reverse sweep takes the segments last to first:
    restore the segment's snapshot, run its (at most K) iterations again
    while taping, then reverse them. The tape holds K snapshots (unless they are in
    registers: `register_snapshots`) and one segment, so the loop may run K * K
    iterations; more is reported as an overflow before the reverse sweep reads anything.
    """
    check_checkpointable(sweep, s)
    k = sweep.prog.tape_capacity
    (fv, rv, uv), (fb, rb, ub) = sweep.loop_parts(s)
    # The reverse sweep runs the body again: what it reads must be restored by then, like
    # what adjoints read (values the code after the loop overwrites are saved).
    # Names the body assigns are not among them: a segment's recomputation takes those from its
    # snapshot or assigns them before reading them (`loop_state`).
    sweep.note_reads(loop_reads(s) - body_assigned(s), "checkpoint")
    snap_f, snap_r, snap_use = [], [], TapeUse()
    state = loop_state(s, sweep.types, outside_assigned(sweep.fir, s))
    for name in sorted(state):
        if name not in sweep.fir.params:
            sweep.preinit.add(name)
    kept = state & read_again(sweep, s)
    n, g, m, j, r = (f"{v}{s.ident}" for v in ("_n", "_g", "_m", "_j", "_r"))
    held = register_snapshots(sweep, s, kept)
    if held is not None:
        snap_f, snap_r = held
    else:
        for name in sorted(kept):
            code, u = tape.push(name, sweep.types[name])
            snap_f += code
            snap_r = tape.pop(name, sweep.types[name]) + snap_r
            snap_use = snap_use + u
    sweep.uses_tape = True
    sweep.types[n] = types.int64
    sweep.preinit.add(n)  # the overflow check after the forward sweep reads it on every path
    exit_ = [(f"if {s.exit_flag}:", ["break"])] if s.exit_flag else []
    primal = primal_code(s.body, filename=sweep.fir.filename)
    # Without snapshots to time, a trip count known before the loop needs no counting in it.
    trips = None if snap_f else sweep.trip_text(s)
    counting = [f"{n} = 0"] if trips is None else [f"{n} = {trips}"]
    body = ([(f"if {n} % {k} == 0:", snap_f)] if snap_f else []) + (
        [f"{n} += 1"] if trips is None else []) + primal + exit_
    fr, rr, ur = sweep.record(n)
    # The reverse sweep pushes a segment on top of the snapshots: its room is reserved in the
    # forward sweep, so that the overflow check counts it (a run-time loop before this one may
    # have filled more than its share), and the segment's pushes need no test of their own.
    hold, release = tape.reserve(ub * k)
    fwd = fv + counting + [(loop_header(s), body)] + hold + fr

    def at(i: str) -> list:  # the loop variable of iteration i of the segment
        return [sweep.adj(f"{s.var} = {index_text_of(s, f'{g} * {k} + {i}')}")] if s.var else []

    # The reverse sweep runs only for n <= K * K: its counters are int32 where that fits.
    small = k * k <= tape.INT32_MAX
    length = f"min({k}, {n} - {g} * {k})"
    unread = (state - kept) | (pushed_names(fb) - state)
    segment = snap_r + unread_reset(sweep, unread) + [
        f"{m} = np.int32({length})" if small else f"{m} = {length}",
        (f"for {j} in range({m}):", at(j) + tape.unchecked(fb)),
        (tape.countdown(r, m, small), at(r) + rb)]
    rev = rr + release + [(tape.countdown(g, f"({n} + {k - 1}) // {k}", small), segment)] + rv
    sweep.checkpoints.append((s.line, n, k * k))
    segment_snapshots = TapeUse(snapshots=((snap_use.floats, snap_use.ints),))  # none in registers
    return fwd, rev, uv + snap_use.per_capacity(k) + ub.per_capacity(k).rerun() + ur + segment_snapshots


# At most this many segments keep their snapshots in registers. Each push and pop moves the whole
# stack (segments x names moves, segments times a sweep), and the stack stays live across the
# loop: on an H200 the ODE case's 16 segments x (q, p) made the gradient 1.54 -> 1.99 ms
# (hand-written, with local arrays: 1.51 ms), so only small segment counts gain from it.
REGISTER_SEGMENTS = 4


def register_snapshots(sweep, s: ir.Loop, kept: set) -> tuple[list, list] | None:
    """(forward, reverse) code keeping the snapshots of checkpointed loop `s` in scalars, a stack of
    one per segment and name (`_snap0_3_q`: the `q` of the fourth segment from the top), or None
    where there are more than REGISTER_SEGMENTS segments, they would not fit in
    tape.REGISTER_ENTRIES, or a name is not a number.

    On the tape, a snapshot's position is the segment's, known only at run time: the entries live
    in local memory. Here the forward sweep pushes a segment's snapshot by moving the stack's
    scalars one place down, and the reverse sweep, which takes the segments last to first, pops
    it by moving them back up: every name is a constant one, and NVVM keeps them in registers.
    Moves rather than a choice of the scalar by the segment's number (`if g == 3: q = _snap0_3_q`):
    numba's compile time grows with the blocks of every `if`, the moves are straight-line code.
    A loop runs at most K segments (more is an overflow, reported before the reverse sweep); a
    static trip count may need fewer. The code grows with segments times snapshots, at most
    REGISTER_ENTRIES lines a sweep, not with the loop's body, which is not written out."""
    k = sweep.prog.tape_capacity
    depth = k if s.trips is None else max(1, min(k, -(-s.trips // k)))
    kinds = types.Float, types.Integer, types.Boolean
    if not kept or depth > REGISTER_SEGMENTS or depth * len(kept) > tape.REGISTER_ENTRIES or not all(
            isinstance(types.unliteral(sweep.types.get(name)), kinds) for name in kept):
        return None
    fwd, rev = [], []
    for name in sorted(kept):
        slots = [f"_snap{s.ident}_{at}_{name}" for at in range(depth)]
        for slot in slots:
            sweep.types[slot] = types.unliteral(sweep.types[name])
            sweep.preinit.add(slot)  # numba: defined on every path
        fwd += [f"{lower} = {upper}" for lower, upper in zip(slots[:0:-1], slots[-2::-1])]
        fwd.append(f"{slots[0]} = {name}")
        rev.append(f"{name} = {slots[0]}")
        rev += [f"{upper} = {lower}" for upper, lower in zip(slots, slots[1:])]
    return fwd, rev


def read_again(sweep, s: ir.Loop) -> set:
    """The names whose values matter once the loop runs again: a carried name outside this set needs no
    snapshot (a segment's recomputation of it, from whatever value it holds, is read by nothing).

    Read again are what some reverse code reads (the second pass's `needed`: the body's adjoints, the
    code before the loop), what decides what runs (tests, loop bounds, exit flags) or reaches memory or
    a call (an index), and the operands of a statement assigning any of these. So a name left out is
    read only by arithmetic and pure math functions, which give some number from any number and fail
    on none: a loop's accumulated result (`e += term`, read after the loop only by the forward sweep)
    then costs neither its snapshots nor, once nothing reads them, the forward sweep computing it.
    In the first pass (`needed` is None) everything is read again."""
    if sweep.needed is None:
        return set(loop_reads(s)) | body_assigned(s)
    live = set(sweep.needed) | {t.exit_flag for t in ir.walk([s]) if isinstance(t, ir.Loop) and t.exit_flag}
    grown = True
    while grown:
        grown = False
        for t in ir.walk(s.body):
            if isinstance(t, ir.Assign) and pure(t.value) and not live & set(ir.target_names(t.target)):
                continue
            reads = {a.name for a in own_atoms(t) if isinstance(a, ir.Var)} - live
            if reads:
                live |= reads
                grown = True
    return live


def unread_reset(sweep, names: set) -> list:
    """Assignments of a constant to `names` before a segment runs again: values nothing reads then
    (carried ones without a snapshot, and the body's temporaries, whose value before the segment
    its first iteration tapes and its reverse restores for nobody). Otherwise they would come from
    the forward sweep's last iteration (or the later segment's restore), which keeps that sweep's
    work alive: the compiler cannot see that the tape entry holding it is never read."""
    out = []
    for name in sorted(names):
        ty = types.unliteral(sweep.types.get(name))
        if isinstance(ty, types.Boolean):
            out.append(f"{name} = False")
        elif isinstance(ty, types.Number) and not isinstance(ty, types.Complex):
            out.append(f"{name} = {cast_text('0.0' if isinstance(ty, types.Float) else '0', ty)}")
    return out


PUSH = re.compile(r"_t[fi]\[_sp[fi]\] = (\w+)")


def pushed_names(code: list) -> set:
    """The names generated `code` pushes onto the tape (`tape.push`)."""
    names = set()
    for line in code:
        if isinstance(line, tuple):
            names |= pushed_names(line[1])
        elif isinstance(line, str) and (hit := PUSH.fullmatch(line)):
            names.add(hit.group(1))
    return names


def own_atoms(t) -> list:
    """The atoms statement `t` reads itself (an `if` its test, a loop its bounds: not their bodies)."""
    if isinstance(t, ir.Assign):
        return ir.atoms_of(t.value)
    if isinstance(t, ir.Store):
        return [*ir.index_atoms(t.index), t.value]
    if isinstance(t, ir.If):
        return [t.test]
    return [t.start, t.stop, t.step]


def pure(e) -> bool:
    """Whether expression `e` gives a number from any operands without touching memory or failing
    (numba's numpy error model: an integer division by zero gives 0, a float one inf or nan)."""
    if isinstance(e, ir.BinOp):
        return e.op != "**"  # an integer power of a negative exponent raises
    if isinstance(e, ir.Call):
        return e.leaves is None and e.func in PURE_CALLS
    return isinstance(e, ir.Copy | ir.UnaryOp | ir.Compare | ir.Pack | ir.TupleGet)


def check_checkpointable(sweep, s: ir.Loop) -> None:
    """Recomputing must redo exactly what the first run did, and tape no more than a segment."""
    if sweep.depth > 0 or sweep.split:
        sweep.refuse(s, "# gpuad: checkpoint", "only loops of the differentiated function itself, "
                    "outside other loops, can be checkpointed", "move the comment to the outer loop")
    for t in ir.walk(s.body):
        if isinstance(t, ir.Store):
            sweep.refuse(t, f"{t.array}[...] = ...", "a checkpointed loop cannot write arrays: running "
                        "it again would see the values it wrote", "drop the checkpoint comment")
        elif isinstance(t, ir.Loop) and t.trips is None:
            sweep.refuse(t, "loop", "a checkpointed loop cannot contain loops with run-time trip counts",
                        "drop the checkpoint comment, or give the inner loop constant bounds")
        elif isinstance(t, ir.Assign) and isinstance(t.value, ir.AutodiffCall | ir.Call) and not (
                isinstance(t.value, ir.Call) and (t.value.func in DERIVATIVES or user_rule(t.value.func)
                                                  or inert_call(t, sweep.active))):
            sweep.refuse(t, expr_text(t.value), "a checkpointed loop cannot call functions gpuad "
                        "differentiates", "inline the call, or drop the checkpoint comment")
    write = later_write(sweep, s)
    if write is not None:
        line, what = write
        sweep.refuse(s, "# gpuad: checkpoint", f"line {line}, after the checkpointed loop, {what}: "
                    "memory the loop may read, and the reverse sweep runs the loop again and would read "
                    "the new values", "drop the checkpoint comment, or write only arrays the loop cannot "
                    "read (and only before the loop)")

def later_write(sweep, s: ir.Loop) -> tuple[int, str] | None:
    """(line, what it does) of a write, after checkpointed loop `s`, into memory the loop reads.

    After `s` run the statements that follow it in its block and in the blocks around it
    (not the other branch of an enclosing `if`); were `s` inside a loop, everything outside
    `s` would, as the next iteration runs the statements before `s` after it. A write is a
    store, or passing the array to a function that may write memory (`may_write_memory`).
    Arrays bound from one another (`w = a`, `row = m[1]`, a choice, a call's result) are one
    memory; arrays from parameters or globals may be one memory if their
    dtypes agree (a caller may pass one buffer twice).
    """
    def following(stmts):
        for k, t in enumerate(stmts):
            if t is s:
                return stmts[k + 1:]
            for branch in (t.body, t.orelse) if isinstance(t, ir.If) else ():
                if (rest := following(branch)) is not None:
                    return rest + stmts[k + 1:]
        return None

    parent: dict = {}

    def find(key):
        while parent.get(key, key) != key:
            key = parent[key]
        return key

    def memory(atom):  # the memory an array-holding atom refers to, else None
        if isinstance(atom, ir.Global):
            dtype = getattr(sweep.prog.ns.objects.get(atom.name), "dtype", None)
            return find(("outside", str(dtype))) if dtype is not None else None
        if not isinstance(atom, ir.Var):
            return None
        ty = sweep.types.get(atom.name)
        arrays = [t for t in (ty if isinstance(ty, types.BaseTuple) else [ty])
                  if isinstance(t, types.Array)]
        for t in arrays if atom.name in sweep.fir.params else ():
            parent[find(atom.name)] = find(("outside", str(t.dtype)))
        return find(atom.name) if arrays else None

    for t in ir.walk(sweep.fir.body):  # one memory for arrays bound from one another
        if isinstance(t, ir.Assign) and not isinstance(t.value, ir.Attr):
            atoms = [ir.Var(n) for n in ir.target_names(t.target)] + ir.atoms_of(t.value)
            arrays = [m for a in atoms if (m := memory(a)) is not None]
            for m in arrays[1:]:
                parent[find(m)] = find(arrays[0])
    read = {memory(a) for t in ir.walk(s.body) if isinstance(t, ir.Assign)
            and not isinstance(t.value, ir.Attr) for a in ir.atoms_of(t.value)} - {None}
    rest = following(sweep.fir.body)
    inside = {id(u) for u in ir.walk([s])}
    outside = (u for u in ir.walk(sweep.fir.body) if id(u) not in inside)
    for t in ir.walk(rest) if rest is not None else outside:
        if isinstance(t, ir.Store):
            written = [ir.Var(t.array)]
        elif isinstance(t, ir.Assign) and (isinstance(t.value, ir.AutodiffCall) or isinstance(
                t.value, ir.Call) and may_write_memory(t.value.func)):
            written = ir.atoms_of(t.value)
        else:
            continue
        for a in written:
            if (m := memory(a)) is not None and m in {find(r) for r in read}:
                named = [source_name(k) for k in [a.name, *parent] if isinstance(k, str)
                         and source_name(k) and find(k) == m]  # a temporary view: its array's name
                name = f"`{named[0]}`" if named else "an array"
                if isinstance(t, ir.Store):
                    return t.line, f"writes {name}"
                callee = getattr(t.value, "name", "autodiff")
                return t.line, f"passes {name} to `{callee}`, which may write it"
    return None


def loop_state(s: ir.Loop, localtypes: dict, outside: set) -> set:
    """The scalars a segment's recomputation must start from: those the body assigns and reads
    before assigning them in the same iteration (carried from the previous one), and those assigned
    outside the loop too (the code before the loop, reversed after it, reads their values as the
    loop found them). The others, the body's own temporaries, are assigned before any read in every
    iteration: recomputing a segment recreates them, so they need no snapshot."""
    assigned = body_assigned(s)
    carried = assigned & (upward_exposed(s.body) | outside)
    return {n for n in carried if not isinstance(localtypes.get(n), types.Array)}


def body_assigned(s: ir.Loop) -> set:
    """The names the statements of a loop's body (nested ones included) assign."""
    return {n for t in ir.walk(s.body) if isinstance(t, ir.Assign) for n in ir.target_names(t.target)}


def outside_assigned(fir: ir.FunctionIR, s: ir.Loop) -> set:
    """Parameters and the names a statement outside loop `s` assigns (or a loop outside it binds)."""
    inside = {id(t) for t in ir.walk([s])}
    names = set(fir.params)
    for t in ir.walk(fir.body):
        if id(t) in inside:
            continue
        if isinstance(t, ir.Assign):
            names.update(ir.target_names(t.target))
        elif isinstance(t, ir.Loop) and t.var:
            names.add(t.var)
    return names


def upward_exposed(body: list) -> set:
    """Names some statement of `body` may read before the body itself assigned them.

    Only assignments at the body's top level count as made: one inside an `if` or an inner loop
    may not happen, so a later read of its name counts as exposed (safe: one snapshot too many)."""
    made, exposed = set(), set()
    for t in body:
        exposed |= loop_reads(ir.Loop(None, None, None, None, [t], t.line, -1)) - made
        if isinstance(t, ir.Assign):
            made.update(ir.target_names(t.target))
    return exposed


def source_name(name: str) -> str | None:
    """The user's name behind an engine name (`_v3_x`, `_w0_x`, `u__k`), None for a temporary."""
    if name.startswith(("_v", "_w")) and "_" in name[2:]:
        return name[2:].split("_", 1)[1]
    if name.startswith("u_"):
        return name[2:]
    return None if name.startswith("_") else name


def loop_reads(s: ir.Loop) -> set:
    """Every variable a loop's body (and its nested loops' bounds) reads."""
    names = set()
    for t in ir.walk(s.body):
        if isinstance(t, ir.Assign):
            atoms = ir.atoms_of(t.value)
        elif isinstance(t, ir.Store):
            atoms = [*ir.index_atoms(t.index), t.value]
        elif isinstance(t, ir.If):
            atoms = [t.test]
        else:
            atoms = [t.start, t.stop, t.step]
        names.update(a.name for a in atoms if isinstance(a, ir.Var))
    return names
