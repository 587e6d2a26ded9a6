"""Elementwise gradient of sin(x)·x² + exp(−x), one element per thread: from a scalar `Active(x)`
and through the array `Duplicated(x, dx)` (the thread's own element: gpuad drops the atomic).
Written with `x ** 2`, as users do: on 2026-11-30 gpuad's adjoint of `** 2` computes in float64
where numba's float32 primal does not."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

import gpuad
from benchmarks.cases import Case, Launch, blocks, scaled, uniform
from gpuad import Active, Duplicated, Reverse, autodiff


def energy(x):
    return math.sin(x) * x ** 2 + math.exp(-x)


def energy_at(x, i):
    return math.sin(x[i]) * x[i] ** 2 + math.exp(-x[i])


def grad_energy(xs, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (dx,), = autodiff(Reverse, energy, Active(xs[i]))
        dxs[i] = dx


def grad_energy_array(xs, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        autodiff(Reverse, energy_at, Duplicated(xs, dxs), i)


@cuda.jit
def grad_energy_by_hand(xs, dxs):
    i = cuda.grid(1)
    if i < xs.shape[0]:
        x = xs[i]
        dxs[i] = math.cos(x) * x * x + (x + x) * math.sin(x) - math.exp(-x)


@cuda.jit
def grad_energy_array_by_hand(xs, dxs):
    i = cuda.grid(1)
    if i < xs.shape[0]:
        x = xs[i]
        dxs[i] += math.cos(x) * x * x + (x + x) * math.sin(x) - math.exp(-x)


def sizes(scale, tiny):
    return {"n": 300 if tiny else scaled(1 << 26, scale)}


def inputs(s, rng):
    return {"xs": uniform(rng, -2.0, 2.0, s["n"])}


def outputs(s):
    return {"dxs": np.zeros(s["n"], np.float32)}


def reference(s, a):
    x = a["xs"].astype(np.float64)
    return {"dxs": np.cos(x) * x * x + 2 * x * np.sin(x) - np.exp(-x)}


def launcher(kernel):
    return lambda s: Launch(kernel, blocks(s["n"]), lambda a: (a["xs"], a["dxs"]))


WHY = "a few float32 ulps of sin/cos/exp; atol for the cancellation near the derivative's zeros"

CASES = [
    Case("elementwise", "elementwise `sin(x)·x² + exp(−x)`, 1 elem/thread", sizes, inputs, outputs,
         launcher(gpuad.kernel(grad_energy)), launcher(grad_energy_by_hand), reference, 1e-5, 1e-6, WHY),
    Case("elementwise_dup", "same through `Duplicated(x, dx)`", sizes, inputs, outputs,
         launcher(gpuad.kernel(grad_energy_array)), launcher(grad_energy_array_by_hand), reference,
         1e-5, 1e-6, WHY),
]
