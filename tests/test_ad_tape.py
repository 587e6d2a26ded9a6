"""The tape of a loop: what the forward sweep records for the reverse sweep, and only that."""
from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
from numba import float32
from numba.core import types
from test_ad_helpers import fd, status

import gpuad
from gpuad import Active
from gpuad.ad import differentiate, recompute
from gpuad.ad.primitives import LINE, NEEDED, NEEDED_INTS
from gpuad.ad.typing import jit_derivative
from gpuad.api import Const, Reverse, autodiff

F32, F64, I64 = types.float32, types.float64, types.int64


def pendulum(q, p, k, steps):
    for _ in range(steps):
        q, p = q + 0.01 * p, p - 0.01 * (k * math.sin(q) + 0.1 * p)
    return q * q + p * p


def pendulum_by_hand(q, p, k, steps):
    """The adjoint of `pendulum`, taping q only."""
    qs = []
    for _ in range(steps):
        qs.append(q)
        q, p = q + 0.01 * p, p - 0.01 * (k * math.sin(q) + 0.1 * p)
    aq, ap, ak = 2 * q, 2 * p, 0.0
    for qt in reversed(qs):
        s = ap * 0.01
        aq, ap, ak = aq - s * k * math.cos(qt), aq * 0.01 + ap - s * 0.1, ak - s * math.sin(qt)
    return aq, ap, ak


def pushes(source: str) -> int:
    """Float tape writes in `source` (checked, or into room reserved before the loop)."""
    return len(re.findall(r"^\s*_tf\[[^\n]*\] = ", source, re.M))


def test_a_loop_tapes_only_the_values_its_reverse_sweep_reads():
    # p is read by the reverse sweep only after the loop's (at `return`): its values inside the
    # loop are never read again, so only q (cos q) is taped; sin(q) (the partial in k) is computed
    # again from it in the reverse sweep, as the hand-written adjoint does.
    d = differentiate(pendulum, Reverse, (Active, Active, Active, Const), (F64, F64, F64, I64),
                      tape_capacity=64)
    assert pushes(d.source) == 1
    assert "_tf = tape_alloc(64, np.float64)" in d.source
    for steps in (0, 1, 5, 64):
        (dq, dp, dk, _), = jit_derivative(d)(0.3, -0.2, 1.5, steps, status())
        assert (dq, dp, dk) == pytest.approx(pendulum_by_hand(0.3, -0.2, 1.5, steps), rel=1e-12, abs=1e-15)


def read_before_the_loop(x, n):
    p = x * x
    y = p * x  # its adjoint reads p as it was before the loop overwrote it
    for i in range(n):
        p = p * 0.5 + math.sin(x * i)
    return p * y


def read_only_in_the_loop_and_after(x, n):
    t = x + 1.0
    for _ in range(n):
        t = t * x  # the adjoint reads t's value before this iteration
    s = t * t
    for _ in range(n):
        s = s * 0.5 + x
    return s


@pytest.mark.parametrize("f", [read_before_the_loop, read_only_in_the_loop_and_after])
def test_values_read_before_their_loop_are_still_restored(f):
    d = differentiate(f, Reverse, (Active, Const), (F64, I64), tape_capacity=32)
    for n in (0, 1, 3, 20):
        (dx, _), = jit_derivative(d)(0.7, n, status())
        assert dx == pytest.approx(fd(f, (0.7, n), 0), rel=1e-7), n


def grad_pendulum(qs, ps, ks, steps, dqs):
    i = gpuad.thread_index()
    if i < qs.shape[0]:
        (dq, _, _, _), = autodiff(Reverse, pendulum32, Active(qs[i]), Active(ps[i]), Active(ks[i]), steps)
        dqs[i] = dq


def pendulum32(q, p, k, steps):
    for _ in range(steps):
        q, p = q + float32(0.01) * p, p - float32(0.01) * (k * math.sin(q) + float32(0.1) * p)
    return q * q + p * p


@functools.cache
def pendulum_record():
    a = np.zeros(4, np.float32)
    return gpuad.kernel(grad_pendulum, tape_capacity=256).compile(a, a, a, 256, a)


def reverse_loops(ptx: str) -> list[str]:
    """The text of each loop (a label and the branch back to it) that ends after the reverse sweep
    began (the first float read from the local tape)."""
    lines = ptx.splitlines()
    first_pop = next(i for i, line in enumerate(lines) if "ld.local.f32" in line)
    labels = {line.strip()[:-1]: i for i, line in enumerate(lines)
              if re.fullmatch(r"\$L__BB\d+_\d+:", line.strip())}
    found = []
    for i, line in enumerate(lines):
        back = re.search(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);", line)
        if back and labels.get(back.group(1), i) < i and i > first_pop:
            found.append("\n".join(lines[labels[back.group(1)]:i + 1]))
    return found


WIDE_INDEX = re.compile(r"\bsetp\.\w+\.[su]64|\bselp\.b64")  # a 64-bit compare, a wraparound select


def test_the_taped_reverse_loop_counts_in_32_bits_and_pops_without_wraparound():
    # The reverse sweep runs once the tape did not overflow: the trip count fits int32, the stack
    # pointer is never negative. The old loop compared its int64 counter and selected a wrapped index.
    loops = reverse_loops(pendulum_record().ptx)
    assert loops and not [WIDE_INDEX.findall(body) for body in loops if WIDE_INDEX.search(body)]


def test_the_taped_kernels_frame_holds_one_float_per_step():
    record = pendulum_record()
    # one float32 entry per step (q: 1 KiB) and the frame of sin's slow path; taping sin(q) as well
    # made it 2 KiB, and p 3 KiB
    assert 256 * 4 <= record.local_memory_bytes < 2 * 256 * 4


def operand_changes_before_the_reader(x, n):
    s = x
    for _ in range(n):
        t = math.sin(s)
        s = s * 0.5 + x  # sin(s) of the new s is not t: t stays on the tape
        s = s + t * s
    return s


def recomputed_in_a_branch(x, n):
    s = x
    for i in range(n):
        if i % 2 == 0:
            t = math.exp(s)  # its own adjoint reads it (exp' = exp): computed again from s
            s = s * t - x
        s = s * 0.5 + 0.1 * x
    return s


def chained_temporaries(x, n):
    s = x
    for _ in range(n):
        u = math.cos(s)
        v = u * u  # reads u; the reverse sweep reads v in the product below
        s = v * s + x
    return s


@pytest.mark.parametrize("f", [operand_changes_before_the_reader, recomputed_in_a_branch,
                               chained_temporaries])
def test_values_computed_again_in_the_reverse_sweep_give_the_taped_gradient(f, monkeypatch):
    d = differentiate(f, Reverse, (Active, Const), (F64, I64), tape_capacity=32)
    monkeypatch.setattr(recompute, "plan", lambda first, fir: {})  # tape every value instead
    taped = differentiate(f, Reverse, (Active, Const), (F64, I64), tape_capacity=32)
    assert taped.source != d.source or f is operand_changes_before_the_reader
    for n in (0, 1, 2, 7, 20):
        (dx, _), = jit_derivative(d)(0.7, n, status())
        assert dx == jit_derivative(taped)(0.7, n, status())[0][0], n  # the same operations
        assert dx == pytest.approx(fd(f, (0.7, n), 0), rel=1e-6), n


def exp_of_a_temporary(x, n):
    s = x
    for _ in range(n):
        b = -(s * x)
        c = math.exp(b)  # its adjoint reads c; only recomputing it would read b
        s = s + c
    return s


def test_a_value_is_not_computed_again_where_its_operand_would_be_taped_instead():
    # Recomputing c would tape b in its place: an entry for an entry, plus an exp per iteration.
    d = differentiate(exp_of_a_temporary, Reverse, (Active, Const), (F64, I64), tape_capacity=8)
    code = [line.strip() for line in d.source.splitlines()]
    assert code.count("c = math.exp(b)") == 1 and pushes(d.source) == 2  # c, s
    for n in (0, 3):
        (dx, _), = jit_derivative(d)(0.3, n, status())
        assert dx == pytest.approx(fd(exp_of_a_temporary, (0.3, n), 0), rel=1e-6)


def test_only_values_whose_operands_are_unchanged_are_computed_again():
    source = differentiate(operand_changes_before_the_reader, Reverse, (Active, Const), (F64, I64),
                           tape_capacity=8).source
    assert pushes(source) == 3  # t, and s before each of its two reassignments
    source = differentiate(recomputed_in_a_branch, Reverse, (Active, Const), (F64, I64),
                           tape_capacity=8).source
    code = [line.strip() for line in source.splitlines()]
    assert not [c for c in code if c.startswith("_tf[") and c.endswith("= t")]
    assert code.count("t = math.exp(s)") == 2  # forward, reverse


def two_loops(x, n, m):
    s = x
    for _ in range(n):
        s = math.sin(s) * x + s
    for _ in range(m):
        s = s * math.cos(x) + s * s * 0.1
    return s


@pytest.mark.parametrize("jit", [False, True])
def test_room_reserved_before_a_loop_is_counted_and_written_in_bounds(jit):
    # Each loop's room is reserved before it (n + m floats in all, capacity 2 x 4): an overflow of
    # either is reported after the forward sweep with what both needed, and a loop whose entries do
    # not fit writes them in bounds (in Python an index past the tape raises).
    d = differentiate(two_loops, Reverse, (Active, Const, Const), (F64, I64, I64), tape_capacity=4)
    assert "if _spf < _capf:" not in d.source
    fn = jit_derivative(d) if jit else d.function
    line = two_loops.__code__.co_firstlineno + 2
    for n, m in ((3, 5), (0, 8), (8, 0), (9, 2), (2, 9), (12, 12), (-3, 4)):
        st = status()
        (dx, _, _), = fn(0.4, n, m, st)
        if max(n, 0) + max(m, 0) <= 8:
            assert st[0] == 0 and dx == pytest.approx(fd(two_loops, (0.4, n, m), 0), rel=1e-6), (n, m)
        else:
            assert list(st[:4]) == [1, line, 0, max(n, 0) + max(m, 0)] and dx == 0.0, (n, m)


def strided(x, a, b):
    s = x
    for i in range(a, b, 3):
        s = math.sin(s) * x + i * 0.01
    return s


def leaves_early(x, n):
    s = x
    for _ in range(n):
        s = math.sin(s) * x + 0.1
        if s > 0.9:
            break
    return s


@pytest.mark.parametrize("args", [(2, 11), (2, 12), (2, 13), (-4, 5), (5, 2), (0, 0), (-7, -1)])
def test_a_strided_loops_reserved_room_is_its_trip_count(args):
    d = differentiate(strided, Reverse, (Active, Const, Const), (F64, I64, I64), tape_capacity=4)
    assert "_n0 = max((b - _t0 + 2) // 3, 0)" in d.source  # _t0: a, bound before the loop
    st = status()
    (dx, _, _), = jit_derivative(d)(0.5, *args, st)
    assert st[0] == 0 and dx == pytest.approx(fd(strided, (0.5, *args), 0), rel=1e-6)


def test_a_loop_that_may_break_is_not_reserved():
    d = differentiate(leaves_early, Reverse, (Active, Const), (F64, I64), tape_capacity=64)
    assert "if _spf < _capf:" in d.source  # its trip count is not known before it
    for x in (0.3, 0.95, 2.0):
        (dx, _), = jit_derivative(d)(x, 40, status())
        assert dx == pytest.approx(fd(leaves_early, (x, 40), 0), rel=1e-6)


def forward_loops(ptx: str) -> list[str]:
    """The text of each loop that ends before the reverse sweep's first read of the tape."""
    lines = ptx.splitlines()
    first_pop = next(i for i, line in enumerate(lines) if "ld.local.f32" in line)
    return [body for body in all_loops(lines) if body[1] < first_pop and "st.local.f32" in body[0]]


def all_loops(lines: list[str]) -> list[tuple[str, int]]:
    labels = {line.strip()[:-1]: i for i, line in enumerate(lines)
              if re.fullmatch(r"\$L__BB\d+_\d+:", line.strip())}
    found = []
    for i, line in enumerate(lines):
        back = re.search(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);", line)
        if back and labels.get(back.group(1), i) < i:
            found.append(("\n".join(lines[labels[back.group(1)]:i + 1]), i))
    return found


def test_the_taped_forward_loop_stores_without_a_capacity_test():
    # Its room is reserved before the loop: the only 64-bit compare left in it is the range's own
    # counter (the old loop compared the stack pointer with the capacity at every store).
    loops = forward_loops(pendulum_record().ptx)
    assert len(loops) == 1
    assert len(re.findall(r"\bsetp\.\w+\.[su]64", loops[0][0])) == 1


def pendulum24(q, p, k):
    for _ in range(24):
        q, p = q + float32(0.01) * p, p - float32(0.01) * (k * math.sin(q) + float32(0.1) * p)
    return q * q + p * p



def static_pendulum(q, p, k):
    for _ in range(24):
        q, p = q + 0.01 * p, p - 0.01 * (k * math.sin(q) + 0.1 * p)
    return q * q + p * p


def grad_pendulum24(qs, ps, ks, dqs):
    i = gpuad.thread_index()
    if i < qs.shape[0]:
        (dq, _, _), = autodiff(Reverse, pendulum24, Active(qs[i]), Active(ps[i]), Active(ks[i]))
        dqs[i] = dq


def test_a_small_static_tape_lives_in_registers():
    # 24 steps, one float each: the loop is written out step by step in both sweeps, every tape
    # position is a constant and NVVM promotes the tape to registers (the loop kept 24 floats of
    # local memory: st.local.f32 / ld.local.f32 in the PTX). What local memory remains is sin's.
    a = np.zeros(4, np.float32)
    record = gpuad.kernel(grad_pendulum24).compile(a, a, a, a)
    assert "st.local.f32" not in record.ptx and "ld.local.f32" not in record.ptx
    assert record.local_memory_bytes < 24 * 4


def test_an_unrolled_static_loop_gives_the_looped_gradient():
    d = differentiate(static_pendulum, Reverse, (Active, Active, Active), (F64, F64, F64))
    assert "for u__" not in d.source  # written out
    (dq, dp, dk), = jit_derivative(d)(0.3, -0.2, 1.5, status())
    assert (dq, dp, dk) == pytest.approx(pendulum_by_hand(0.3, -0.2, 1.5, 24), rel=1e-12, abs=1e-15)


# --- TapeOverflow's hint: the capacity it names fits the run that overflowed (fuzz_findings F12) ---

def while_sines(x, y, a, m, n):
    # the int stack (the loop's n + 1 decisions) needs more than the float stack (n values)
    s = x
    k = 0
    while k < n:
        k += 1
        s = math.sin(s)
    return s


def growing_helper(b, u, p):
    j = 0
    s = u
    while j < p and (s < 0.9):
        j += 1
        s = s + 0.25 + 0.1 * math.tanh(b[j % 3] * s)
    return s * b[1]


def calls_a_looping_helper(x, b, n):
    # the helper's while loop holds k * capacity + a constant (its static entries)
    return growing_helper(b, x, 2 * n) + x * b[0]


def taped_and_checkpointed(x, n, m):
    s = x
    for _ in range(n):  # taped
        s = math.sin(s) + 0.1
    t = s
    for _ in range(m):  # gpuad: checkpoint
        t = math.sin(t) * 1.1 + s
    return t


def two_checkpointed(x, n, m):
    s = x
    for _ in range(n):  # gpuad: checkpoint
        s = math.sin(s) * 0.9 + 0.1
    t = s * x
    for _ in range(m):  # gpuad: checkpoint
        t = math.cos(t) * 0.8 + s
    return t


HINTED = re.compile(r"gpuad\.kernel\(tape_capacity=(\d+)\)")


def engine_overflow(f, acts, types_, args, capacity):
    """(the TapeOverflow the engine's reverse derivative at `capacity` reports, or None; its
    derivatives; the status)."""
    from gpuad.compiler.jobs import JobFacts
    from gpuad.targets import status as st

    d = differentiate(f, Reverse, acts, types_, tape_capacity=capacity)
    report = status()
    derivs, = d.function(*args, report)
    facts = JobFacts(d.can_fail, d.overflow_lines, frozenset(), f.__code__.co_filename, f.__name__,
                     d.overflow_owners, d.tape_growth)
    return st.status_error(report, f.__name__, [facts], capacity), derivs, report


def least_fitting(f, acts, types_, args, start):
    c = start
    while engine_overflow(f, acts, types_, args, c)[0] is not None:
        c += 1
    return c


def hint_of(error) -> int:
    assert "at least" not in error.hint, error.hint
    return int(HINTED.search(error.hint).group(1))


B = np.array([0.3, 0.5, -0.2])
CASES = [  # (function, activities, types, arguments)
    *[(while_sines, (Active, Const, Const, Const, Const), (F64, F64, F64, F64, I64), (0.3, 0.0, 0.0, 0.0, n))
      for n in (2, 5, 9)],
    *[(calls_a_looping_helper, (Active, Const, Const), (F64, types.float64[::1], I64), (-2.5, B, n))
      for n in (3, 6)],
]


@pytest.mark.parametrize("f, acts, types_, args", CASES)
@pytest.mark.parametrize("capacity", [1, 2])
def test_the_hint_of_an_overflow_is_the_least_capacity_that_fits(f, acts, types_, args, capacity):
    # Both stacks' needs are reported, and the hint follows how the tape grows with the capacity
    # (helpers' static entries included): following it once fits, and nothing less does.
    error, _, report = engine_overflow(f, acts, types_, args, capacity)
    assert error is not None
    hint = hint_of(error)
    assert hint == least_fitting(f, acts, types_, args, capacity + 1)
    fits, derivs, _ = engine_overflow(f, acts, types_, args, hint)
    assert fits is None
    assert derivs[0] == pytest.approx(fd(f, args, 0), rel=1e-6)
    # the needs reported are what the least fitting capacity needs: the same at one less
    below, _, again = engine_overflow(f, acts, types_, args, hint - 1)
    assert below is not None
    assert (again[NEEDED], again[NEEDED_INTS]) == (report[NEEDED], report[NEEDED_INTS])


def test_the_int_stack_that_needs_more_is_reported():
    error, *_ = engine_overflow(while_sines, (Active, Const, Const, Const, Const), (F64, F64, F64, F64, I64),
                               (0.3, 0.0, 0.0, 0.0, 2), 1)
    assert "needed 2 float and 3 int tape entries per thread but the tape holds 1 and 1" in error.message
    assert "tape_capacity=3)" in error.hint


@pytest.mark.parametrize("f", [taped_and_checkpointed, two_checkpointed])
@pytest.mark.parametrize("n, m", [(30, 100), (5, 10), (40, 3), (3, 40), (100, 100), (0, 50)])
@pytest.mark.parametrize("capacity", [1, 3, 4, 8])
def test_a_hint_fits_a_taped_loop_and_a_checkpointed_one_together(f, n, m, capacity):
    # A checkpointed loop's segment grows with the capacity (its room is reserved on the tape), its
    # snapshots shrink: the hint accounts for both, whichever overflow was reported first.
    acts, types_, args = (Active, Const, Const), (F64, I64, I64), (0.5, n, m)
    error, *_ = engine_overflow(f, acts, types_, args, capacity)
    if error is None:
        return
    hint = hint_of(error)
    fits, derivs, _ = engine_overflow(f, acts, types_, args, hint)
    assert fits is None, (hint, fits)
    assert derivs[0] == pytest.approx(fd(f, args, 0), rel=1e-6)


HINT_KERNEL = """
def hint_kernel(xs, ns, out):
    i = gpuad.thread_index()
    if i < out.shape[0]:
        (dx, _, _, _, _), = autodiff(Reverse, while_sines, Active(xs[i]), 0.0, 0.0, 0.0, ns[i])
        out[i] = dx
"""


def test_a_kernels_hint_fits_every_thread():
    # Threads of one launch need different capacities: the report keeps each stack's largest need.
    from corpus import exec_source

    namespace = exec_source(HINT_KERNEL, "<hint kernel>", {"gpuad": gpuad, "autodiff": autodiff,
                                                           "Reverse": Reverse, "Active": Active,
                                                           "while_sines": while_sines})
    xs, ns = np.linspace(0.1, 0.9, 6), np.array([0, 7, 2, 11, 5, 3])
    out = np.zeros(6)
    with pytest.raises(gpuad.errors.TapeOverflow) as info:
        gpuad.kernel(namespace["hint_kernel"], target="cpu", tape_capacity=2).launch(6, xs, ns, out)
    assert "needed 11 float and 12 int tape entries" in info.value.message
    assert not out.any()
    hint = hint_of(info.value)
    assert hint == 12
    gpuad.kernel(namespace["hint_kernel"], target="cpu", tape_capacity=hint).launch(6, xs, ns, out)
    expected = [fd(while_sines, (x, 0.0, 0.0, 0.0, n), 0) for x, n in zip(xs, ns)]
    assert out == pytest.approx(expected, rel=1e-6)
    with pytest.raises(gpuad.errors.TapeOverflow):
        gpuad.kernel(namespace["hint_kernel"], target="cpu", tape_capacity=hint - 1).launch(6, xs, ns, out)


def test_the_cuda_report_writes_both_stacks_needs_in_the_status_array():
    # PTX, compiled without a GPU: the first report claims the flag (a compare-and-swap) and
    # writes the line; every report keeps the largest checkpointed iterations, float and int needs
    # (atomic max; the slots are within primitives.STATUS_SIZE, the launcher's array).
    from corpus import exec_source

    namespace = exec_source(HINT_KERNEL, "<hint kernel ptx>", {"gpuad": gpuad, "autodiff": autodiff,
                                                               "Reverse": Reverse, "Active": Active,
                                                               "while_sines": while_sines})
    xs, ns, out = np.linspace(0.1, 0.9, 6), np.arange(6), np.zeros(6)
    record = gpuad.kernel(namespace["hint_kernel"], tape_capacity=4).compile(xs, ns, out, target="cuda",
                                                                             arch="sm_90")
    source = next(iter(record.adjoint_sources.values()))
    assert "if _spf > _capf or _spi > _capi:" in source
    assert re.search(r"report_tape_overflow\(status, \d+, 0, _spf, _spi\)", source)
    assert len(re.findall(r"\batom\.global\.cas\.b64", record.ptx)) == 1
    assert re.search(rf"\bst\.global\.u64\s+\[%rd\d+\+{8 * LINE}\]", record.ptx)  # the line
    assert len(re.findall(r"\batom\.global\.max\.s64\b", record.ptx)) == 3  # RAN, NEEDED, NEEDED_INTS
