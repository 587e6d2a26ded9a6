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
            assert list(st) == [1, line, 8, max(n, 0) + max(m, 0)] and dx == 0.0, (n, m)


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
