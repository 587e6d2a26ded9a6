"""1-D periodic stencil energy E = Σ_i bond(x[i], x[i+1]): the gradient gathered (each thread
differentiates the two bonds of its element) and scattered (each thread differentiates its bond
through `Duplicated(x, dx)` and adds into both ends atomically)."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

import gpuad
from benchmarks.cases import Case, Launch, blocks, scaled, uniform
from gpuad import Active, Duplicated, Reverse, autodiff


def bond(a, b):
    d = b - a
    return d * d + math.sin(a * b)


def site_energy(left, x, right):
    return bond(left, x) + bond(x, right)


def bond_at(x, i, j):
    return bond(x[i], x[j])


def grad_gather(xs, dxs):
    i = gpuad.thread_index()
    n = xs.shape[0]
    if i < n:
        left = i - 1 if i > 0 else n - 1
        right = i + 1 if i < n - 1 else 0
        (_, dx, _), = autodiff(Reverse, site_energy, xs[left], Active(xs[i]), xs[right])
        dxs[i] = dx


def grad_scatter(xs, dxs):
    i = gpuad.thread_index()
    n = xs.shape[0]
    if i < n:
        right = i + 1 if i < n - 1 else 0
        autodiff(Reverse, bond_at, Duplicated(xs, dxs), i, right)


@cuda.jit(device=True)
def bond_grad_a(a, b):
    return (a - b) + (a - b) + math.cos(a * b) * b


@cuda.jit(device=True)
def bond_grad_b(a, b):
    return (b - a) + (b - a) + math.cos(a * b) * a


@cuda.jit
def grad_gather_by_hand(xs, dxs):
    i = cuda.grid(1)
    n = xs.shape[0]
    if i < n:
        left = i - 1 if i > 0 else n - 1
        right = i + 1 if i < n - 1 else 0
        x = xs[i]
        dxs[i] = bond_grad_b(xs[left], x) + bond_grad_a(x, xs[right])


@cuda.jit
def grad_scatter_by_hand(xs, dxs):
    i = cuda.grid(1)
    n = xs.shape[0]
    if i < n:
        right = i + 1 if i < n - 1 else 0
        a, b = xs[i], xs[right]
        cuda.atomic.add(dxs, i, bond_grad_a(a, b))
        cuda.atomic.add(dxs, right, bond_grad_b(a, b))


def sizes(scale, tiny):
    return {"n": 300 if tiny else scaled(1 << 26, scale)}


def reference(s, a):
    x = a["xs"].astype(np.float64)
    right = np.roll(x, -1)
    ga = 2 * (x - right) + np.cos(x * right) * right  # ∂bond(x[i], x[i+1])/∂x[i]
    gb = 2 * (right - x) + np.cos(x * right) * x  # ∂bond(x[i], x[i+1])/∂x[i+1]
    return {"dxs": ga + np.roll(gb, 1)}


def launcher(kernel):
    return lambda s: Launch(kernel, blocks(s["n"]), lambda a: (a["xs"], a["dxs"]))


def inputs(s, rng):
    return {"xs": uniform(rng, -1.0, 1.0, s["n"])}


def outputs(s):
    return {"dxs": np.zeros(s["n"], np.float32)}


WHY = "a few float32 ulps per bond; atol for cancellation between the two bonds"

CASES = [
    Case("stencil_gather", "1-D stencil energy, gather", sizes, inputs, outputs,
         launcher(gpuad.kernel(grad_gather)), launcher(grad_gather_by_hand), reference, 1e-4, 1e-5, WHY),
    Case("stencil_scatter", "1-D stencil energy, scatter (atomics)", sizes, inputs, outputs,
         launcher(gpuad.kernel(grad_scatter)), launcher(grad_scatter_by_hand), reference, 1e-4, 1e-5, WHY),
]
