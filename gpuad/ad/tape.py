"""The per-thread tape: where the forward sweep records what the reverse sweep needs.

Two stacks, one of float64 (`_tf`) and one of int64 (`_ti`, decisions, trip
counts, integer values), each with a stack pointer (`_spf`, `_spi`) and a
capacity (`_capf`, `_capi`). A push past the capacity writes nothing but
still counts, so the entry function can report exactly how many entries were
needed (`report_tape_overflow`) and return before the reverse sweep reads
anything. Outside loops, the joint (entry) function records into plain local
variables instead: nothing is pushed where nothing is overwritten.
"""
from __future__ import annotations

from dataclasses import dataclass

from numba.core import types

from gpuad.ad.capacity import poly_add, poly_max, poly_scale
from gpuad.ad.emit import cast_text
from gpuad.ad.typing import is_float


@dataclass
class TapeUse:
    """Upper bound of entries pushed by one execution of some code.

    `floats` and `ints` are the entries at the capacity the code is generated for. Beside them,
    how they grow with the capacity C, as polynomials in C (coefficients, lowest degree first), so
    that an overflow report can say which capacity fits (`gpuad.targets.status`): `size_f` and
    `size_i` are at most the entries at every C (a branch's `max` keeps the larger branch's at the
    generated C) and equal to them there; `rerun_f` and `rerun_i` are at least the entries a
    checkpointed loop reserves for running a segment again (K = C iterations), which the forward
    sweep pushes whatever the trip count, so a run needs more of them at a larger capacity.
    `snapshots`: (floats, ints) each checkpointed loop snapshots per segment on the tape (one
    segment per K iterations: a run needs fewer of them at a larger capacity)."""

    floats: int = 0
    ints: int = 0
    f64: bool = False  # some float entry is a float64: the float tape must be float64
    size_f: tuple = None
    size_i: tuple = None
    rerun_f: tuple = ()
    rerun_i: tuple = ()
    snapshots: tuple = ()

    def __post_init__(self):
        if self.size_f is None:  # a constant count
            self.size_f = (self.floats,) if self.floats else ()
        if self.size_i is None:
            self.size_i = (self.ints,) if self.ints else ()

    def __add__(self, other: TapeUse) -> TapeUse:
        return TapeUse(self.floats + other.floats, self.ints + other.ints, self.f64 or other.f64,
                       poly_add(self.size_f, other.size_f), poly_add(self.size_i, other.size_i),
                       poly_add(self.rerun_f, other.rerun_f), poly_add(self.rerun_i, other.rerun_i),
                       self.snapshots + other.snapshots)

    def __mul__(self, n: int) -> TapeUse:
        """`n` runs, `n` a static count (see `per_capacity` for C runs)."""
        return TapeUse(self.floats * n, self.ints * n, self.f64, poly_scale(self.size_f, n),
                       poly_scale(self.size_i, n), poly_scale(self.rerun_f, n), poly_scale(self.rerun_i, n),
                       self.snapshots if n else ())

    def per_capacity(self, capacity: int) -> TapeUse:
        """Room for `capacity` runs, where `capacity` is the configured tape_capacity."""
        return TapeUse(self.floats * capacity, self.ints * capacity, self.f64, (0, *self.size_f),
                       (0, *self.size_i), (0, *self.rerun_f), (0, *self.rerun_i), self.snapshots)

    def rerun(self) -> TapeUse:
        """This use, all of it reserved for a checkpointed segment run again."""
        return TapeUse(self.floats, self.ints, self.f64, self.size_f, self.size_i,
                       poly_add(self.rerun_f, self.size_f), poly_add(self.rerun_i, self.size_i),
                       self.snapshots)

    def max(self, other: TapeUse) -> TapeUse:
        """Either branch: the sizes of the one larger at the generated capacity (at most the larger
        at any capacity), the reruns of both (at least either's)."""
        size_f = self.size_f if self.floats >= other.floats else other.size_f
        size_i = self.size_i if self.ints >= other.ints else other.size_i
        return TapeUse(max(self.floats, other.floats), max(self.ints, other.ints), self.f64 or other.f64,
                       size_f, size_i, poly_max(self.rerun_f, other.rerun_f),
                       poly_max(self.rerun_i, other.rerun_i), self.snapshots + other.snapshots)

    @property
    def empty(self) -> bool:
        return self.floats == 0 and self.ints == 0

    def growth(self) -> tuple:
        """(size_f, size_i, rerun_f, rerun_i, snapshots): what an overflow report's hint needs."""
        return self.size_f, self.size_i, self.rerun_f, self.rerun_i, tuple(sorted(set(self.snapshots)))


def stack(ty) -> tuple[str, str, str]:
    """(tape, pointer, capacity) names for values of type `ty`."""
    return ("_tf", "_spf", "_capf") if is_float(ty) else ("_ti", "_spi", "_capi")


def push(value: str, ty) -> tuple[list, TapeUse]:
    tape, sp, cap = stack(ty)
    code = [(f"if {sp} < {cap}:", [f"{tape}[{sp}] = {value}"]), f"{sp} += 1"]
    if tape == "_tf":
        return code, TapeUse(1, 0, types.unliteral(ty) != types.float32)
    return code, TapeUse(0, 1)


INT32_MAX = 2**31 - 1
# A static loop taping at most this many entries is written out iteration by iteration (both sweeps):
# its tape positions are constants, and NVVM keeps the entries in registers.
REGISTER_ENTRIES = 32
UNROLLED_LINES = 2048


def code_lines(code: list) -> int:
    """The statements of generated `code` (comments aside)."""
    return sum(1 + code_lines(line[1]) if isinstance(line, tuple) else isinstance(line, str)
               for line in code)


def pushes_every_iteration(body: list) -> bool:
    """Whether code `body` pushes onto a tape on every path (a push outside its branches and loops):
    then a loop running it cannot run more iterations than the tape has entries."""
    return any(line in ("_spf += 1", "_spi += 1") for line in body)


def countdown(k: str, n: str, bounded: bool) -> str:
    """The header of a loop running `k` from `n` - 1 down to 0; int32 (numba's 32-bit range, a
    32-bit counter) when `bounded`: `n` is known to be at most INT32_MAX by the time it runs."""
    if bounded:
        return f"for {k} in range(np.int32({n} - 1), np.int32(-1), np.int32(-1)):"
    return f"for {k} in range({n} - 1, -1, -1):"


def reserve(use: TapeUse) -> tuple[list, list]:
    """(forward, reverse) code that moves the stack pointers past `use` entries and back.

    For what the reverse sweep pushes (a checkpointed segment run again): the forward sweep's
    overflow check then counts it on top of what lies below it on the tape."""
    fwd, rev = [], []
    for count, ty in ((use.floats, types.float64), (use.ints, types.int64)):
        if count:
            _, sp, _ = stack(ty)
            fwd.append(f"{sp} += {count}")
            rev.append(f"{sp} -= {count}")
    return fwd, rev


def unchecked(code: list) -> list:
    """`code` with its pushes writing without the capacity test: for code that runs only once the
    forward sweep's overflow checks have passed and whose pushes the capacity counts (a checkpointed
    segment run again in the reverse sweep), the test can never fail."""
    out = []
    tests = {f"if {sp} < {cap}:": (tape, sp) for tape, sp, cap in (stack(types.float64), stack(types.int64))}
    for line in code:
        if isinstance(line, tuple):
            header, body = line
            if header in tests:  # unsigned, as in `pop`
                tape, sp = tests[header]
                out += [text.replace(f"{tape}[{sp}]", f"{tape}[np.uint64({sp})]", 1) for text in body]
            else:
                out.append((header, unchecked(body)))
        else:
            out.append(line)
    return out


def pop(var: str, ty) -> list:
    """The pointer is never negative here: unsigned, the index needs no wraparound of a negative
    one (numba's `a[-1]`: a compare and a select at every pop)."""
    tape, sp, _ = stack(ty)
    return [f"{sp} -= 1", f"{var} = {cast_text(f'{tape}[np.uint64({sp})]', ty)}"]


def alloc(use: TapeUse) -> tuple[list, list]:
    """Entry-function tape allocation, sized at generation time; float32 code gets a float32 tape.

    (the tapes, their capacities and stack pointers): the caller drops the counters of a tape
    nothing pushes to (`emit.live_inits`)."""
    capf, capi = max(use.floats, 1), max(use.ints, 1)
    dtype = "np.float64" if use.f64 else "np.float32"
    return ([f"_tf = tape_alloc({capf}, {dtype})", f"_ti = tape_alloc({capi}, np.int64)"],
            [f"_capf = {use.floats}", f"_capi = {use.ints}", "_spf = 0", "_spi = 0"])


def pushes_per_run(body: list) -> TapeUse | None:
    """The entries `body` pushes each time it runs, when all its pushes are at its top level (none
    in a branch, an inner loop or a callee), else None."""
    use = TapeUse()
    for line in body:
        if isinstance(line, tuple):
            if line[0] not in _TESTS and _mentions_tape(line[1]):
                return None
        elif line in ("_spf += 1", "_spi += 1"):
            use = use + (TapeUse(1, 0) if line == "_spf += 1" else TapeUse(0, 1))
        elif isinstance(line, str) and ("_spf" in line or "_spi" in line):
            return None
    return use


def _mentions_tape(code: list) -> bool:
    return any(_mentions_tape(line[1]) if isinstance(line, tuple)
               else isinstance(line, str) and ("_spf" in line or "_spi" in line) for line in code)


_TESTS = {f"if {sp} < {cap}:": (t, sp) for t, sp, cap in (stack(types.float64), stack(types.int64))}


def reserved_loop(body: list, trips: str, ident: int) -> tuple[list, list]:
    """(code before the loop, its body) for a loop whose `trips` iterations each push the same
    entries (`pushes_per_run`): their room is reserved once before the loop and every push writes
    without a capacity test, at a 32-bit position.

    The stack pointer moves past them all before the loop, so the overflow check after the forward
    sweep counts them. When they do not fit, the reverse sweep will not run: the loop writes its
    entries over one another at the bottom of the tape (which holds at least one iteration's)."""
    use = pushes_per_run(body)
    before, advance, base = [], [], {}
    for count, ty in ((use.floats, types.float64), (use.ints, types.int64)):
        if not count:
            continue
        tape, sp, cap = stack(ty)
        b, z = f"_base{sp[-1]}{ident}", f"_step{sp[-1]}{ident}"
        base[tape] = b
        room = trips if count == 1 else f"{trips} * {count}"
        before += [f"{b} = np.int32({sp})", f"{sp} += {room}", f"{z} = np.int32({count})",
                   (f"if {sp} > {cap}:", [f"{b} = np.int32(0)", f"{z} = np.int32(0)"])]
        advance.append(f"{b} = np.int32({b} + {z})")
    out, offset = [], {tape: 0 for tape in base}
    for line in body:
        if isinstance(line, tuple) and line[0] in _TESTS:
            tape, sp = _TESTS[line[0]]
            at = f"{base[tape]} + np.int32({offset[tape]})" if offset[tape] else base[tape]
            out += [text.replace(f"{tape}[{sp}]", f"{tape}[np.uint32({at})]", 1) for text in line[1]]
            offset[tape] += 1
        elif line not in ("_spf += 1", "_spi += 1"):
            out.append(line)
    return before, out + advance
