"""Checkpoint snapshots in registers (`checkpoint.register_snapshots`): where a loop runs at most
checkpoint.REGISTER_SEGMENTS segments (K, or fewer for a static trip count) and their snapshots fit in
tape.REGISTER_ENTRIES, the snapshots are a stack of named scalars instead of tape entries; gradients
and overflow reports are those of the tape form."""
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
from gpuad.ad.typing import jit_derivative
from gpuad.api import Active, Const, Reverse, autodiff
from gpuad.errors import TapeOverflow

F64, I64 = types.float64, types.int64
K = 4  # tape capacity of the cpu tests: K * K = 16 iterations at most

LOOP = '''
def {name}(x, w{params}):
    s, c, flip = x, 0, False
    for i in range({trips}):  # gpuad: checkpoint
        a = math.sin(s) * w + 0.01 * i
        b = math.cos(s) * w - 0.02 * c
        if flip:
            s = a
        else:
            s = b
        c += 1
        flip = s > 0.3
    return s
'''


def loop(name: str, params: str, trips: str):
    """A checkpointed loop carrying a float, an int and a bool, all read again (the temporaries `a`
    and `b` are assigned before the branch: a segment recomputes them)."""
    source = LOOP.format(name=name, params=params, trips=trips)
    return exec_source(source, f"<checkpoint {name}>", {"math": math})[name]


def static_loop(n: int):
    """The loop with `n` (static) trips."""
    return loop(f"static_{n}", "", str(n))


runtime_loop = loop("runtime_loop", ", n", "n")  # the same loop with run-time trips


def breaking_loop(x, w, n):
    s, t = x, w
    for i in range(n):  # gpuad: checkpoint
        s, t = s * 0.9 + math.sin(t) * w, t + 0.1 * s
        if s > 2.5:
            break
    return s * t


def tape_form(monkeypatch):
    """The snapshots on the tape, as before `register_snapshots`."""
    monkeypatch.setattr(checkpoint, "register_snapshots", lambda *args: None)


def derivative(f, args, capacity=K):
    acts = (Active, Active, Const)[:len(args)]
    return differentiate(f, Reverse, acts, (F64, F64, I64)[:len(args)], tape_capacity=capacity)


def gradient(d, args):
    st = status()
    derivs, = jit_derivative(d)(*args, st)
    return derivs[:2], st


@pytest.mark.parametrize("n", [0, 1, K - 1, K, K + 1, 11, K * K, K * K + 1])
def test_static_trip_counts_match_the_tape_form_and_finite_differences(n, monkeypatch):
    f = static_loop(n)
    args = (0.4, 0.9)
    d = derivative(f, args)
    segments = max(1, min(K, -(-n // K)))
    assert f"_snap0_{segments - 1}_s" in d.source and f"_snap0_{segments}_s" not in d.source
    assert "_tf[_spf] = " not in d.source.split("# reverse sweep")[0]  # no snapshot on the tape
    got, st = gradient(d, args)
    tape_form(monkeypatch)
    taped = derivative(f, args)
    assert "_snap" not in taped.source and "_tf[_spf] = s" in taped.source
    want, st_taped = gradient(taped, args)
    assert list(st[:3]) == list(st_taped[:3])  # flag, line, iterations (the tape form's needs more)
    if n > K * K:  # reported, as the tape form does
        assert list(st[:3]) == [2, f.__code__.co_firstlineno + 2, n] and got == (0.0, 0.0)
        return
    assert st[0] == 0 and got == want
    for k in (0, 1):
        assert got[k] == pytest.approx(fd(f, args, k), rel=1e-7, abs=1e-10), k


@pytest.mark.parametrize("f, n", [*((runtime_loop, n) for n in (0, 1, 7, 8, 13, 16, 17)),
                                  *((breaking_loop, n) for n in (3, 9, 16, 17))])
def test_run_time_trip_counts_match_the_tape_form_and_finite_differences(f, n, monkeypatch):
    args = (0.4, 0.9, n)
    d = derivative(f, args)
    assert "_snap0_3_" in d.source and "_snap0_4_" not in d.source  # K segments at most
    got, st = gradient(d, args)
    tape_form(monkeypatch)
    want, st_taped = gradient(derivative(f, args), args)
    assert list(st[:3]) == list(st_taped[:3]) and got == want
    if st[0]:
        assert n > K * K and list(st[:3]) == [2, f.__code__.co_firstlineno + 2, n]
        return
    for k in (0, 1):
        assert got[k] == pytest.approx(fd(f, args, k, h=1e-4), rel=1e-7, abs=1e-10), k


def test_too_many_snapshots_stay_on_the_tape(monkeypatch):
    """3 names x 11 segments > 32: the derivative is the tape form's, character for character."""
    d = derivative(runtime_loop, (0.4, 0.9, 5), capacity=11)
    tape_form(monkeypatch)
    assert "_snap" not in d.source and d.source == derivative(runtime_loop, (0.4, 0.9, 5), capacity=11).source


def pendulum32(q, p, k, steps):
    for _ in range(steps):  # gpuad: checkpoint
        q, p = q + float32(0.01) * p, p - float32(0.01) * (k * math.sin(q) + float32(0.1) * p)
    return q * q + p * p


def pendulum32_60(q, p, k):
    for _ in range(60):  # gpuad: checkpoint
        q, p = q + float32(0.01) * p, p - float32(0.01) * (k * math.sin(q) + float32(0.1) * p)
    return q * q + p * p


def grad_pendulum32(qs, ps, ks, steps, dqs, dps, dks):
    i = gpuad.thread_index()
    if i < qs.shape[0]:
        (dq, dp, dk, _), = autodiff(Reverse, pendulum32, Active(qs[i]), Active(ps[i]), Active(ks[i]), steps)
        dqs[i], dps[i], dks[i] = dq, dp, dk


def grad_pendulum32_60(qs, ps, ks, dqs, dps, dks):
    i = gpuad.thread_index()
    if i < qs.shape[0]:
        (dq, dp, dk), = autodiff(Reverse, pendulum32_60, Active(qs[i]), Active(ps[i]), Active(ks[i]))
        dqs[i], dps[i], dks[i] = dq, dp, dk


def local_floats(ptx: str) -> tuple[int, int]:
    """(stores, loads) of single floats in local memory: tape pushes and pops (sin's range
    reduction stores u32 words, a tape's zero fill v4 vectors)."""
    return len(re.findall(r"\bst\.local\.f32\b", ptx)), len(re.findall(r"\bld\.local\.f32\b", ptx))


A = np.zeros(4, np.float32)
PTX_CASES = [  # kernel, arguments, capacity, the tape form's snapshot room (K x (q, p))
    (grad_pendulum32, (A, A, A, 16, A, A, A), 4, 4 * 2),     # run-time steps: 4 segments at most
    (grad_pendulum32_60, (A, A, A, A, A, A), 15, 15 * 2),    # 60 static steps: ceil(60 / 15) = 4 segments
]


@pytest.mark.parametrize("kernel, args, capacity, snapshots", PTX_CASES)
def test_snapshots_leave_local_memory(kernel, args, capacity, snapshots, monkeypatch):
    """The tape form stores each segment's (q, p) at a run-time position of the local tape and loads
    it back; in registers, the local floats left are the segment's own q (pushed, popped: NVVM may
    write out a short static segment, one store per step)."""
    record = gpuad.kernel(kernel, tape_capacity=capacity).compile(*args, target="cuda", arch="sm_90")
    source = next(iter(record.adjoint_sources.values()))
    assert f"_tf = tape_alloc({capacity}, np.float32)" in source  # one segment of q
    tape_form(monkeypatch)
    taped = gpuad.kernel(kernel, tape_capacity=capacity).compile(*args, target="cuda", arch="sm_90")
    taped_source = next(iter(taped.adjoint_sources.values()))
    assert f"_tf = tape_alloc({capacity + snapshots}, np.float32)" in taped_source
    (stores, loads), (taped_stores, taped_loads) = local_floats(record.ptx), local_floats(taped.ptx)
    # the snapshots of q and of p: a store and a load each (NVVM writes out a static segment loop's)
    assert taped_stores - stores >= 2 and taped_loads - loads >= 2
    assert taped.local_memory_bytes - record.local_memory_bytes >= snapshots * 4


@pytest.mark.parametrize("capacity", [checkpoint.REGISTER_SEGMENTS + 1, 16, 17])
def test_a_large_run_time_case_is_unchanged(capacity, monkeypatch):
    """More segments than REGISTER_SEGMENTS (16 x (q, p): the ODE benchmark, slower with register
    snapshots; 17 x (q, p) > 32 entries): nothing changes."""
    args = (A, A, A, 256, A, A, A)
    record = gpuad.kernel(grad_pendulum32, tape_capacity=capacity).compile(*args, target="cuda", arch="sm_90")
    tape_form(monkeypatch)
    taped = gpuad.kernel(grad_pendulum32, tape_capacity=capacity).compile(*args, target="cuda", arch="sm_90")
    source = next(iter(record.adjoint_sources.values()))
    assert "_snap" not in source and source == next(iter(taped.adjoint_sources.values()))
    assert record.local_memory_bytes == taped.local_memory_bytes and local_floats(record.ptx) == (3, 3)


def pendulum_reference(q, p, k, steps):
    """Float64 taped adjoint of the same Euler steps."""
    tape = []
    for _ in range(steps):
        tape.append(q)
        q, p = q + 0.01 * p, p - 0.01 * (k * np.sin(q) + 0.1 * p)
    aq, ap, ak = 2 * q, 2 * p, np.zeros_like(q)
    for qt in reversed(tape):
        aq, ap, ak = aq - ap * 0.01 * k * np.cos(qt), aq * 0.01 + ap - ap * 0.001, ak - ap * 0.01 * np.sin(qt)
    return aq, ap, ak


@pytest.mark.parametrize("steps", [0, 1, 3, 4, 5, 15, 16])
def test_a_kernel_on_the_cpu_target(steps):
    rng = np.random.default_rng(3)
    qs, ps = (rng.uniform(-1, 1, 32).astype(np.float32) for _ in range(2))
    ks = rng.uniform(0.5, 2.0, 32).astype(np.float32)
    outs = [np.zeros(32, np.float32) for _ in range(3)]
    kernel = gpuad.kernel(grad_pendulum32, target="cpu", tape_capacity=4)
    assert "_snap0_3_q" in next(iter(kernel.compile(qs, ps, ks, steps, *outs).adjoint_sources.values()))
    kernel.launch(32, qs, ps, ks, steps, *outs)
    for got, want in zip(outs, pendulum_reference(*(a.astype(np.float64) for a in (qs, ps, ks)), steps)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(TapeOverflow, match="tape_capacity=5"):
        kernel.launch(32, qs, ps, ks, 17, *outs)
