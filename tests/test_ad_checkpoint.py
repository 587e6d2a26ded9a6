"""Checkpointed loops (`# gpuad: checkpoint`): recompute segments instead of taping every iteration."""
# ruff: noqa: B007 - some loops exist for their trip counts
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from corpus import exec_source
from numba import float32
from numba.core import types
from test_ad_helpers import fd, status

import gpuad
from gpuad.ad import checkpoint, differentiate
from gpuad.ad.capacity import poly_at
from gpuad.ad.typing import jit_derivative
from gpuad.api import Active, Const, Duplicated, Forward, Reverse, autodiff
from gpuad.errors import TapeOverflow, UnsupportedConstruct

F64, I64 = types.float64, types.int64


def orbit(x, w, n):
    s = x
    for i in range(n):  # gpuad: checkpoint
        s = math.sin(s) * w + 0.01 * i
    return s


def orbit_taped(x, w, n):
    s = x
    for i in range(n):
        s = math.sin(s) * w + 0.01 * i
    return s


def rich_body(x, w, n):
    """Two carried floats, a carried int, a branch, a static inner loop, a break."""
    s, t, flips = x, w, 0
    for i in range(1, n + 1, 2):  # gpuad: checkpoint
        if s > 0.5:
            s = s * 0.9 + math.cos(t)
            flips += 1
        else:
            s = s + 0.3 * t
        for k in range(3):
            t = t * 0.95 + 0.01 * s * k
        if flips > 40:
            break
    return s * t + flips


def while_loop(x, w):
    s = x
    k = 0
    while s < 50.0:  # gpuad: checkpoint
        s = s * w + math.sin(s)
        k += 1
    return s + k


def reverse(f, capacity, types_=(F64, F64, I64)):
    acts = (Active, Active, Const)[:len(types_)]
    return differentiate(f, Reverse, acts, types_, tape_capacity=capacity)


@pytest.mark.parametrize("jit", [False, True])
def test_checkpointed_loop_matches_the_taped_one(jit):
    cp, taped = reverse(orbit, 8), reverse(orbit_taped, 100)
    assert "_g0" in cp.source and "% 8 == 0" in cp.source
    run = jit_derivative(cp) if jit else cp.function
    for n in (0, 1, 7, 8, 9, 17, 50, 64):  # around segment boundaries, up to 8 * 8
        st = status()
        (dx, dw, _), = run(0.4, 0.9, n, st)
        (ex, ew, _), = taped.function(0.4, 0.9, n, status())
        assert (dx, dw) == pytest.approx((ex, ew), rel=1e-14, abs=1e-300), n
        assert st[0] == 0


@pytest.mark.parametrize("f, args, h", [(rich_body, (0.7, 0.8, 60), 1e-3), (rich_body, (0.2, 1.1, 200), 1e-3),
                                        (while_loop, (1.2, 1.3), 1e-5)])  # s grows like w**k: small steps
def test_checkpointed_loops_match_finite_differences(f, args, h):
    types_ = (F64, F64, I64)[:len(args)]
    d = reverse(f, 12, types_)  # 12 * 12 iterations
    st = status()
    derivs, = jit_derivative(d)(*args, st)
    assert st[0] == 0
    for k in (0, 1):
        assert derivs[k] == pytest.approx(fd(f, args, k, h), rel=1e-7, abs=1e-9), k


def test_a_loop_longer_than_capacity_squared_reports_an_overflow():
    d = reverse(orbit, 8)
    st = status()
    (dx, dw, _), = d.function(0.4, 0.9, 65, st)
    assert (dx, dw) == (0.0, 0.0)
    assert list(st[:3]) == [2, orbit.__code__.co_firstlineno + 2, 65]  # flag, line, iterations


def test_the_host_raises_with_a_capacity_that_suffices():
    with pytest.raises(TapeOverflow, match=r"ran 5000 iterations .* 64\*64 = 4096") as info:
        autodiff(Reverse, orbit, Active(0.4), Active(0.9), 5000)
    assert "tape_capacity=71" in info.value.hint  # 71 * 71 >= 5000 > 70 * 70


def test_forward_mode_ignores_the_comment():
    (t,) = autodiff(Forward, orbit, Duplicated(0.4, 1.0), Const(0.9), 500)
    (e,) = autodiff(Forward, orbit_taped, Duplicated(0.4, 1.0), Const(0.9), 500)
    assert t == e


def grad_orbit(x, w, n):
    (dx, _, _), = autodiff(Reverse, orbit, Active(x), Active(w), n)
    return dx


def test_forward_over_a_checkpointed_reverse():
    d = differentiate(grad_orbit, Forward, (Duplicated, Const, Const), (F64, F64, I64))
    (t,) = d.function(0.4, 1.0, 0.9, 30, status())
    h = 1e-4
    g = [reverse(orbit, 64).function(0.4 + k * h, 0.9, 30, status())[0][0] for k in (-2, -1, 1, 2)]
    assert t == pytest.approx((8 * (g[2] - g[1]) - (g[3] - g[0])) / (12 * h), rel=1e-7)


def writes_array(a, x, n):
    for i in range(n):  # gpuad: checkpoint
        a[i] = x * i
    return x


def dynamic_inner(x, n):
    s = x
    for i in range(n):  # gpuad: checkpoint
        for j in range(i):
            s = math.sin(s)
    return s


def helper(u):
    return u * u


def calls_helper(x, n):
    s = x
    for i in range(n):  # gpuad: checkpoint
        s = helper(s) * 0.5
    return s


def nested_checkpoint(x, n):
    s = x
    for i in range(n):
        for j in range(3):  # gpuad: checkpoint
            s = math.sin(s)
    return s


@pytest.mark.parametrize("f, acts, types_, words", [
    (writes_array, (Duplicated, Active, Const), (types.float64[::1], F64, I64), "cannot write arrays"),
    (dynamic_inner, (Active, Const), (F64, I64), "run-time trip counts"),
    (calls_helper, (Active, Const), (F64, I64), "cannot call functions"),
    (nested_checkpoint, (Active, Const), (F64, I64), "outside other loops"),
])
def test_what_cannot_be_checkpointed_is_refused(f, acts, types_, words):
    with pytest.raises(UnsupportedConstruct, match=words) as info:
        differentiate(f, Reverse, acts, types_)
    assert info.value.location.function == f.__name__


def drift(x, w, n):
    s = x
    for i in range(n):  # gpuad: checkpoint
        s = s + 0.001 * math.sin(s * w + 0.01 * i)
    return s


def drift_taped(x, w, n):
    s = x
    for i in range(n):
        s = s + 0.001 * math.sin(s * w + 0.01 * i)
    return s


def drift_kernel(xs, ws, dxs, n):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (dx, _, _), = autodiff(Reverse, drift, Active(xs[i]), Const(ws[i]), n)
        dxs[i] = dx


def taped_drift_kernel(xs, ws, dxs, n):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (dx, _, _), = autodiff(Reverse, drift_taped, Active(xs[i]), Const(ws[i]), n)
        dxs[i] = dx


def check_long_loop_kernel(target: str, n_threads: int = 16) -> None:
    """1000 iterations: a tape of 32 overflows, 32 checkpoints of 32 iterations suffice."""
    xs, ws = np.linspace(-1.0, 1.0, n_threads), np.linspace(0.5, 1.0, n_threads)
    dxs, expected = np.zeros(n_threads), np.zeros(n_threads)
    taped, checkpointed = (gpuad.kernel(k, target=target, tape_capacity=32)
                           for k in (taped_drift_kernel, drift_kernel))
    with pytest.raises(TapeOverflow):
        taped.launch(n_threads, xs, ws, expected, 1000)
    checkpointed.launch(n_threads, xs, ws, dxs, 1000)
    long_tape = gpuad.kernel(taped_drift_kernel, target=target, tape_capacity=1000)
    long_tape.launch(n_threads, xs, ws, expected, 1000)
    np.testing.assert_allclose(dxs, expected, rtol=1e-13)
    assert np.max(np.abs(dxs - 1.0)) > 0.1  # not the identity: the loop mattered
    with pytest.raises(TapeOverflow, match="tape_capacity=33"):
        checkpointed.launch(n_threads, xs, ws, dxs, 1025)


def test_a_kernel_runs_a_loop_its_tape_could_not_hold():
    check_long_loop_kernel("cpu")


# Found by the random-program test (wrong gradients before the fixes): the recomputation must
# start from every value the body overwrites, and see loop-invariant values the code after the
# loop overwrites.
def overwrites_unread(x, a, n):
    v = x
    a[0] = math.sin(v)  # its adjoint needs v as it was before the loop
    for i in range(3 * n):  # gpuad: checkpoint
        v = math.sin(a[0])
    return math.sin(v)


def overwrites_unread_taped(x, a, n):
    v = x
    a[0] = math.sin(v)  # its adjoint needs v as it was before the loop
    for i in range(3 * n):
        v = math.sin(a[0])
    return math.sin(v)


def invariant_overwritten_later(x, c, n):
    v, w = x, 0.25
    for i in range(n):  # gpuad: checkpoint
        v = math.sin((v + w) * 0.5)
    w = math.sin(v)
    return v * 0.7 - w + c


def invariant_overwritten_later_taped(x, c, n):
    v, w = x, 0.25
    for i in range(n):
        v = math.sin((v + w) * 0.5)
    w = math.sin(v)
    return v * 0.7 - w + c


@pytest.mark.parametrize("f, taped, second", [
    (overwrites_unread, overwrites_unread_taped, Duplicated),
    (invariant_overwritten_later, invariant_overwritten_later_taped, Const),
])
def test_found_checkpointing_programs(f, taped, second):
    ty = types.float64[::1] if second is Duplicated else F64
    for n in (0, 1, 2, 5, 7):  # segments of 5: none, one, several
        results = []
        for fn, capacity in ((f, 5), (taped, 64)):
            d = differentiate(fn, Reverse, (Active, second, Const), (F64, ty, I64), tape_capacity=capacity)
            args = (np.zeros(2), np.zeros(2)) if second is Duplicated else (0.3,)
            st = status()
            (dx, *_), = d.function(0.4, *args, n, st)
            assert st[0] == 0
            results.append(dx)
        assert results[0] == pytest.approx(results[1], rel=1e-14, abs=1e-300), n


# ---- arrays the loop reads must not change after it: the reverse sweep runs the loop again

def halve_first(v):
    v[0] = 0.5 * v[0]


def halve_first_through(v):  # writes only through a callee
    halve_first(v)


def first_of(v):  # only reads
    return v[0]


def first_of_through(v):
    return first_of(v) + math.sin(v[1])


LOOP_THEN_WRITE = """def {name}(x, a, b, k, n):
    w = a
    s = x
{before}    for i in range(n):{comment}
        s = math.sin(s) * a[0] + 0.1 * w[1]
{after}    return s
"""
_checkpoint_programs = iter(range(1_000_000))


def loop_then_write(write: str, before: bool = False, checkpoint: bool = True):
    """The loop reads `a` (and its alias `w`); `write` runs after it (or before it)."""
    j = next(_checkpoint_programs)
    name = f"loop_then_write_{j}"
    block = "".join(f"    {line}\n" for line in write.splitlines())
    source = LOOP_THEN_WRITE.format(name=name, comment="  # gpuad: checkpoint" if checkpoint else "",
                                    before=block if before else "", after="" if before else block)
    helpers = {f.__name__: f for f in (halve_first, halve_first_through, first_of, first_of_through)}
    fn = exec_source(source, f"<checkpoint write {j}>", {"math": math, **helpers})[name]
    return fn, source.splitlines().index(block.splitlines()[-1]) + 1  # the write's line


WRITE_ARGS = (Active, Duplicated, Duplicated, Const, Const)
WRITE_TYPES = (F64, types.float64[::1], types.float64[::1], types.int64[::1], I64)


@pytest.mark.parametrize("write", [
    "a[0] = 0.0",            # the element the loop reads
    "a[1] = s",              # another element of it (arrays are judged whole)
    "w[0] = 0.0",            # through an alias
    "halve_first(a)",         # a function may write its arguments
    "halve_first(w)",
    "halve_first_through(a)",  # a function calling one that writes
    "s = s + first_of(w[0:2])\nhalve_first_through(w[1:2])",  # a view, named by its array
    "if s > 0.0:\n    a[0] = s",
    "b[0] = s",              # another float parameter: the caller may pass one buffer twice
])
def test_a_loop_reading_an_array_written_after_it_is_refused(write):
    f, line = loop_then_write(write)
    words = f"line {line}, after the checkpointed loop, (writes|passes) `[abw]`"
    with pytest.raises(UnsupportedConstruct, match=words) as info:
        differentiate(f, Reverse, WRITE_ARGS, WRITE_TYPES)
    assert info.value.location.line == 4  # the loop


def run_loop_then_write(f, capacity):
    a, b, k = np.array([0.9, 0.4]), np.array([0.3, 0.2]), np.zeros(2, np.int64)
    d = differentiate(f, Reverse, WRITE_ARGS, WRITE_TYPES, tape_capacity=capacity)
    da, db, st = np.zeros(2), np.zeros(2), status()
    (dx, *_), = d.function(0.4, a, da, b, db, k, 7, st)
    assert st[0] == 0
    return dx, da, db


@pytest.mark.parametrize("write, before", [
    ("a[0] = 0.8", True),    # before the loop: the reverse sweep sees what the loop saw
    ("halve_first(w)", True),
    ("k[0] = n", False),     # an int array cannot share the float arrays' memory
    ("k[1] = len(a)", False),
    ("s = s + first_of(a)", False),  # functions that only read the array
    ("s = s * first_of_through(w[0:2])", False),
])
def test_writes_the_recomputation_cannot_see_are_allowed(write, before):
    (f, _), (taped, _) = (loop_then_write(write, before, checkpoint) for checkpoint in (True, False))
    got, expected = run_loop_then_write(f, 3), run_loop_then_write(taped, 64)
    assert got[0] != 0.0
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-14, atol=1e-300)


def write_in_other_branch(x, a, flag, n):
    s = x
    if flag > 0:
        for i in range(n):  # gpuad: checkpoint
            s = math.sin(s) * a[0]
    else:
        a[0] = 0.0
    return s


def test_a_write_in_the_other_branch_is_allowed():
    d = differentiate(write_in_other_branch, Reverse, (Active, Duplicated, Const, Const),
                      (F64, types.float64[::1], I64, I64), tape_capacity=3)
    (dx, *_), = d.function(0.4, np.array([0.9]), np.zeros(1), 1, 7, status())
    assert dx == pytest.approx(fd(lambda x: write_in_other_branch(x, np.array([0.9]), 1, 7), (0.4,), 0),
                               rel=1e-8)


def loop_in_branch_then_write(x, a, flag, n):
    s = x
    if flag > 0:
        for i in range(n):  # gpuad: checkpoint
            s = math.sin(s) * a[0]
    a[0] = 0.0
    return s


def test_a_write_after_the_enclosing_branch_is_refused():
    first = loop_in_branch_then_write.__code__.co_firstlineno
    words = f"line {first + 5}, after the checkpointed loop, writes `a`"
    with pytest.raises(UnsupportedConstruct, match=words) as info:
        differentiate(loop_in_branch_then_write, Reverse, (Active, Duplicated, Const, Const),
                      (F64, types.float64[::1], I64, I64))
    assert info.value.location.line == first + 3


def pair_energy(x, w, n):
    """One carried float (e) and many temporaries each iteration assigns before reading."""
    e = 0.0
    for j in range(n):  # gpuad: checkpoint
        dx, dy = x - 0.01 * j, w + 0.02 * j
        e += math.exp(-(dx * dx + dy * dy))
    return e


def temporaries_and_carried_branch(x, w, n):
    """`u` is assigned only in one branch and read in later iterations: carried; `t` is read
    after the loop; `v` is read before its assignment in the same iteration."""
    u, s, v = x, w, 0.0
    t = 0.0
    for i in range(n):  # gpuad: checkpoint
        s = s * 0.9 + v * 0.1 + u * 0.05
        t = math.sin(s) * w
        if t > 0.0:
            u = u * 0.8 + t
        v = t * x
    return s + t * u


def temporaries_and_carried_branch_taped(x, w, n):
    u, s, v = x, w, 0.0
    t = 0.0
    for i in range(n):
        s = s * 0.9 + v * 0.1 + u * 0.05
        t = math.sin(s) * w
        if t > 0.0:
            u = u * 0.8 + t
        v = t * x
    return s + t * u


def test_a_snapshot_holds_only_what_a_segment_cannot_recompute():
    """`e` is carried, but no reverse code reads it: a segment run again from any value of it tapes
    the same temporaries, so it has no snapshot (and the forward sweep does not count its steps)."""
    d = reverse(pair_energy, 8)
    forward = d.source.split("# reverse sweep")[0]
    assert "% 8 == 0" not in forward and "_n0 += 1" not in forward and "_n0 = max(" in forward
    assert "_tf[_spf] = e\n" not in d.source and "e = 0.0\n" in d.source.split("for _g0 in")[1]
    (dx, dw, _), = jit_derivative(d)(0.3, 0.4, 50, status())
    for k, got in enumerate((dx, dw)):
        assert got == pytest.approx(fd(pair_energy, (0.3, 0.4, 50), k), rel=1e-8), k


@pytest.mark.parametrize("n", [0, 1, 5, 8, 9, 23, 64])
def test_carried_temporaries_are_snapshotted(n):
    d = reverse(temporaries_and_carried_branch, 8)
    snapshot = d.source.split("if _n0 % 8 == 0:")[1].split("_n0 += 1")[0]
    saved = {line.split("= ")[1] for line in snapshot.split("\n") if "_tf[_spf] =" in line}
    assert {"u", "s", "v", "t"} <= saved
    (dx, dw, _), = jit_derivative(d)(0.7, 0.6, n, status())
    (ex, ew, _), = reverse(temporaries_and_carried_branch_taped, 100).function(0.7, 0.6, n, status())
    assert (dx, dw) == pytest.approx((ex, ew), rel=1e-13, abs=1e-300)


def taped_then_checkpointed(x, n, m):
    s = x
    for i in range(n):  # taped: may fill more than its share of the tape
        s = math.sin(s) + 0.1
    t = s
    for j in range(m):  # gpuad: checkpoint
        t = math.sin(t) * 1.1 + s
    return t


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("capacity, taped, floats", [(4, 5, 8), (8, 20, 24), (40, 100, 120)])
def test_a_segment_that_would_not_fit_above_a_full_tape_is_an_overflow(jit, capacity, taped, floats):
    # Capacity 4: 8 floats (4 snapshots of `t` are held in registers: `register_snapshots`);
    # capacity 8 and 40: 24 and 120 floats (more segments than checkpoint.REGISTER_SEGMENTS: the
    # snapshots are on the tape). `taped`
    # steps and a snapshot fit, but the `capacity` steps of the segment run again on top of them did
    # not: the reverse sweep read entries never written.
    d = differentiate(taped_then_checkpointed, Reverse, (Active, Const, Const), (F64, I64, I64),
                      tape_capacity=capacity)
    assert ("_tf[_spf] = t\n" in d.source) == (capacity > checkpoint.REGISTER_SEGMENTS)
    run = jit_derivative(d) if jit else d.function
    st = status()
    (dx, _, _), = run(0.5, taped, capacity, st)
    line = taped_then_checkpointed.__code__.co_firstlineno + 2
    assert (st[0], st[1], st[2]) == (1, line, capacity) and dx == 0  # flag, line, iterations
    assert poly_at(dict(d.tape_growth)[line][0], capacity) == floats  # what the tape holds
    assert st[3] >= taped + capacity
    roomy = differentiate(taped_then_checkpointed, Reverse, (Active, Const, Const), (F64, I64, I64),
                          tape_capacity=200)
    for n, m in ((taped, capacity), (3, 5), (0, 0), (7, 60)):
        st = status()
        fits = n + 1 + capacity <= floats and m <= capacity
        (dx, _, _), = run(0.5, n, m, st) if fits else roomy.function(0.5, n, m, st)
        assert st[0] == 0 and dx == pytest.approx(fd(taped_then_checkpointed, (0.5, n, m), 0), rel=1e-7)


def pendulum32_checkpointed(q, p, k, steps):
    for _ in range(steps):  # gpuad: checkpoint
        q, p = q + float32(0.01) * p, p - float32(0.01) * (k * math.sin(q) + float32(0.1) * p)
    return q * q + p * p


def grad_pendulum32(qs, ps, ks, steps, dqs):
    i = gpuad.thread_index()
    if i < qs.shape[0]:
        (dq, _, _, _), = autodiff(Reverse, pendulum32_checkpointed, Active(qs[i]), Active(ps[i]),
                                  Active(ks[i]), steps)
        dqs[i] = dq


@pytest.mark.parametrize("capacity, floats, loops_found", [(4, 4, 2), (16, 48, 3), (17, 51, 3)])
def test_checkpointed_segments_count_in_32_bits_and_tape_without_wraparound(capacity, floats, loops_found):
    """K = 4: the tape holds a segment's 4 q (sin q again), the 4 (q, p) snapshots are in registers,
    so the first tape read is in the reversed loop: it and the segments' loop are found. K = 16 and
    17: more segments than checkpoint.REGISTER_SEGMENTS, the (q, p) snapshots are on the tape (and
    the recomputing loop, after the first read of a snapshot, is found too)."""
    from test_ad_tape import WIDE_INDEX, reverse_loops

    a = np.zeros(4, np.float32)
    record = gpuad.kernel(grad_pendulum32, tape_capacity=capacity).compile(a, a, a, 256, a)
    source = next(iter(record.adjoint_sources.values()))
    assert f"_tf = tape_alloc({floats}, np.float32)" in source
    loops = reverse_loops(record.ptx)
    assert len(loops) >= loops_found
    assert not [WIDE_INDEX.findall(body) for body in loops if WIDE_INDEX.search(body)]


def energy32(xi, xs):
    """The per-particle energy of benchmarks/cases/pairwise.py in one dimension: `e` is carried
    but read by no reverse code, the temporaries are."""
    e = float32(0)
    for j in range(xs.shape[0]):  # gpuad: checkpoint
        d = xi - xs[j]
        e += math.exp(-(d * d))
    return e


def grad_energy32(xs, gs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (g, _), = autodiff(Reverse, energy32, Active(xs[i]), xs)
        gs[i] = g


def ptx_blocks(ptx: str) -> list[str]:
    """The PTX split at its labels: straight-line pieces of code."""
    return re.split(r"^\$L__BB\d+_\d+:$", ptx, flags=re.MULTILINE)


def test_an_unread_accumulator_costs_no_snapshot_and_no_forward_sweep():
    """The old code taped `e` every K steps: the tape entry kept the forward sweep's loop (an exp per
    step, computed for nothing) alive in the PTX, and the frame held K snapshots more."""
    a = np.zeros(4, np.float32)
    record = gpuad.kernel(grad_energy32, tape_capacity=16).compile(a, a)
    source = next(iter(record.adjoint_sources.values()))
    assert "_tf = tape_alloc(32, np.float32)" in source  # one segment of (d, exp term); was 48
    assert "% 16 == 0" not in source and "_n0 = max(" in source
    assert record.local_memory_bytes == 32 * 4
    exps = [block for block in ptx_blocks(record.ptx) if "ex2.approx" in block]
    assert exps and all("st.local.f32" in block for block in exps)  # every exp computed is taped


def pair_energy_dead_state(x, w, n):
    """Carried and unread by the reverse sweep: a float, an int and a bool, read after the loop by
    the primal only (`e` and `hits` in a branch); the temporaries are taped."""
    e, hits, odd = 0.0, 0, False
    for j in range(n):  # gpuad: checkpoint
        dx, dy = x - 0.01 * j, w + 0.02 * j
        t = math.exp(-(dx * dx + dy * dy))
        if t > 0.01:
            e += t
            hits += 1
        odd = odd != (t > 0.5)
    return e * 2.0 + hits + odd


def gated_energy(x, w, n):
    """`e` decides whether a term is added: every segment must start from its true value."""
    e = 0.0
    for j in range(n):  # gpuad: checkpoint
        d = x - 0.05 * j
        if e < 1.5:
            e += math.exp(-(d * d)) * w
    return e


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 23, 63, 64])
def test_dead_carried_state_gradients_match_finite_differences(n):
    d = reverse(pair_energy_dead_state, 8)
    assert "_tf[_spf] = " not in d.source.split("# reverse sweep")[0]  # no snapshot at all
    rerun = d.source.split("for _g0 in")[1]
    assert "hits = 0\n" in rerun and "odd = False\n" in rerun and "e = 0.0\n" in rerun
    for run in (d.function, jit_derivative(d)):
        st = status()
        (dx, dw, _), = run(0.3, 0.2, n, st)
        assert st[0] == 0
        for k, got in enumerate((dx, dw)):
            want = fd(pair_energy_dead_state, (0.3, 0.2, n), k)
            assert got == pytest.approx(want, rel=1e-8, abs=1e-12), (n, k)


@pytest.mark.parametrize("n", [0, 1, 7, 9, 40, 64])
def test_state_a_branch_reads_keeps_its_snapshot(n):
    d = reverse(gated_energy, 8)
    assert "_tf[_spf] = e\n" in d.source.split("# reverse sweep")[0]
    st = status()
    (dx, dw, _), = jit_derivative(d)(0.4, 0.7, n, st)
    assert st[0] == 0 and (n < 30 or dx != 0.0)
    for k, got in enumerate((dx, dw)):
        assert got == pytest.approx(fd(gated_energy, (0.4, 0.7, n), k, h=1e-5), rel=1e-7, abs=1e-12), (n, k)


def test_a_loop_without_snapshots_reports_overflow_at_capacity_squared_plus_one():
    d = reverse(pair_energy_dead_state, 8)
    st = status()
    assert d.function(0.3, 0.2, 64, st)[0][0] != 0.0 and st[0] == 0
    st = status()
    (dx, dw, _), = d.function(0.3, 0.2, 65, st)
    assert (dx, dw) == (0.0, 0.0)
    assert list(st[:3]) == [2, pair_energy_dead_state.__code__.co_firstlineno + 4, 65]  # flag, line, ran


def test_an_energy_kernel_on_the_cpu_target_at_and_past_its_capacity():
    xs = np.linspace(0.0, 3.0, 64).astype(np.float32)
    want = np.array([np.sum(-2.0 * (x - xs.astype(np.float64)) * np.exp(-(x - xs.astype(np.float64)) ** 2))
                     for x in xs.astype(np.float64)])
    gs = np.zeros(64, np.float32)
    gpuad.kernel(grad_energy32, target="cpu", tape_capacity=8).launch(64, xs, gs)  # 8 * 8 = 64 steps
    np.testing.assert_allclose(gs, want, rtol=1e-4, atol=1e-4 * np.max(np.abs(want)))
    with pytest.raises(TapeOverflow, match="tape_capacity=8"):
        gpuad.kernel(grad_energy32, target="cpu", tape_capacity=7).launch(64, xs, gs)
