"""Horner's rule with a run-time degree: the gradient in x through a taped loop, and the gradient into
coefficients that every thread shares (`Duplicated(c, dc)`), where the hand-written kernel reduces
across the warp (shuffles) and the block (shared memory) and adds once per block per coefficient."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

import gpuad
from benchmarks.cases import THREADS, Case, Launch, blocks, scaled, uniform
from gpuad import Active, Duplicated, Reverse, autodiff

DEGREE = 16  # coefficients; the kernels take it at run time
WARPS = THREADS // 32


def horner(c, x, degree):
    p = c[0]
    for k in range(1, degree):
        p = p * x + c[k]
    return p


def grad_horner(c, xs, dxs, degree):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (_, dx, _), = autodiff(Reverse, horner, c, Active(xs[i]), degree)
        dxs[i] = dx


def grad_horner_coefficients(c, dc, xs, degree):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        autodiff(Reverse, horner, Duplicated(c, dc), xs[i], degree)


@cuda.jit
def grad_horner_by_hand(c, xs, dxs, degree):
    i = cuda.grid(1)
    if i < xs.shape[0]:
        x = xs[i]
        tape = cuda.local.array(DEGREE, float32)
        p = c[0]
        for k in range(1, degree):
            tape[k] = p
            p = p * x + c[k]
        dp = float32(1)
        dx = float32(0)
        for k in range(degree - 1, 0, -1):
            dx += dp * tape[k]
            dp = dp * x
        dxs[i] = dx


@cuda.jit
def grad_horner_coefficients_by_hand(c, dc, xs, degree):
    i = cuda.grid(1)
    lane = cuda.threadIdx.x % 32
    warp = cuda.threadIdx.x // 32
    mine = cuda.local.array(DEGREE, float32)
    dp = float32(1) if i < xs.shape[0] else float32(0)  # threads past the end add zeros
    x = xs[i] if i < xs.shape[0] else float32(0)
    for k in range(degree - 1, 0, -1):  # the reverse sweep of p = p * x + c[k]
        mine[k] = dp
        dp = dp * x
    mine[0] = dp
    partial = cuda.shared.array((WARPS, DEGREE), float32)
    for k in range(degree):
        v = mine[k]
        offset = 16
        while offset > 0:
            v += cuda.shfl_down_sync(0xFFFFFFFF, v, offset)
            offset //= 2
        if lane == 0:
            partial[warp, k] = v
    cuda.syncthreads()
    t = cuda.threadIdx.x
    if t < degree:
        total = float32(0)
        for w in range(WARPS):
            total += partial[w, t]
        cuda.atomic.add(dc, t, total)


def coefficients():
    return np.array([math.cos(k) / (k + 1) for k in range(DEGREE)], np.float32)


def sizes_taped(scale, tiny):
    return {"n": 300 if tiny else scaled(1 << 24, scale), "degree": DEGREE}


def sizes_shared(scale, tiny):
    # 2^22, not more: every thread adds 1 into dc[15], and float32 counts exactly only up to 2^24.
    return {"n": 300 if tiny else scaled(1 << 22, scale), "degree": DEGREE}


def inputs(s, rng):
    return {"c": coefficients(), "xs": uniform(rng, 0.0, 1.0, s["n"])}


def reference_dx(s, a):
    c, x = a["c"].astype(np.float64), a["xs"].astype(np.float64)
    powers = np.arange(s["degree"] - 1, 0, -1)  # p = sum c[k] x^(degree-1-k)
    return {"dxs": sum(c[k] * powers[k] * x ** (powers[k] - 1) for k in range(s["degree"] - 1))}


def reference_dc(s, a):
    x = a["xs"].astype(np.float64)
    return {"dc": np.array([np.sum(x ** (s["degree"] - 1 - k)) for k in range(s["degree"])])}


def launch_taped(kernel):
    return lambda s: Launch(kernel, blocks(s["n"]), lambda a: (a["c"], a["xs"], a["dxs"], s["degree"]))


def launch_shared(kernel):
    return lambda s: Launch(kernel, blocks(s["n"]), lambda a: (a["c"], a["dc"], a["xs"], s["degree"]))


CASES = [
    Case("horner", "Horner, run-time degree 16, taped loop", sizes_taped, inputs,
         lambda s: {"dxs": np.zeros(s["n"], np.float32)},
         launch_taped(gpuad.kernel(grad_horner, tape_capacity=DEGREE)), launch_taped(grad_horner_by_hand),
         reference_dx, 1e-4, 1e-5, "16 rounding float32 Horner steps; atol where the gradient crosses 0"),
    Case("horner_shared", "Horner, gradient into shared coefficients `Duplicated(c, dc)`", sizes_shared,
         inputs,
         lambda s: {"dc": np.zeros(DEGREE, np.float32)},
         launch_shared(gpuad.kernel(grad_horner_coefficients, tape_capacity=DEGREE)),
         launch_shared(grad_horner_coefficients_by_hand),
         reference_dc, 1e-3, 1e-6, "2^22 positive float32 terms summed per coefficient in different orders"),
]
