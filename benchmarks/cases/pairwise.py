"""Pairwise Gaussian energy E = ½ Σ_{i,j} exp(−|r_i − r_j|²) of N particles in 3-D: thread i sums
∂pair/∂r_i over j with one `autodiff` per pair, naively, over shared-memory tiles, or with the j range
split over SPLIT threads per particle (atomics); and the per-particle energy differentiated whole,
with its j loop checkpointed (hand-written: the same ⌈√N⌉ checkpoints; also timed against the naive
hand-written kernel). (The self pair adds nothing to the gradient.)"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

import gpuad
from benchmarks.cases import THREADS, Case, Launch, blocks, scaled
from gpuad import Active, Reverse, autodiff

TILE = THREADS  # the tiled kernels load one position per thread of the block
SPLIT = 16  # threads per particle in the split-j kernels


def pair(xi, yi, zi, xj, yj, zj):
    dx, dy, dz = xi - xj, yi - yj, zi - zj
    return math.exp(-(dx * dx + dy * dy + dz * dz))


def energy_of(xi, yi, zi, xs, ys, zs):
    e = float32(0)
    for j in range(xs.shape[0]):  # gpuad: checkpoint
        dx, dy, dz = xi - xs[j], yi - ys[j], zi - zs[j]
        e += math.exp(-(dx * dx + dy * dy + dz * dz))
    return e


def grad_naive(xs, ys, zs, gx, gy, gz):
    i = gpuad.thread_index()
    n = xs.shape[0]
    if i < n:
        xi, yi, zi = xs[i], ys[i], zs[i]
        fx, fy, fz = float32(0), float32(0), float32(0)
        for j in range(n):
            (ax, ay, az, _, _, _), = autodiff(Reverse, pair, Active(xi), Active(yi), Active(zi),
                                              xs[j], ys[j], zs[j])
            fx, fy, fz = fx + ax, fy + ay, fz + az
        gx[i], gy[i], gz[i] = fx, fy, fz


def grad_tiled(xs, ys, zs, gx, gy, gz):
    i = gpuad.thread_index()
    t = cuda.threadIdx.x
    n = xs.shape[0]
    tx = cuda.shared.array(TILE, float32)
    ty = cuda.shared.array(TILE, float32)
    tz = cuda.shared.array(TILE, float32)
    xi, yi, zi = float32(0), float32(0), float32(0)
    if i < n:
        xi, yi, zi = xs[i], ys[i], zs[i]
    fx, fy, fz = float32(0), float32(0), float32(0)
    for start in range(0, n, TILE):
        if start + t < n:
            tx[t], ty[t], tz[t] = xs[start + t], ys[start + t], zs[start + t]
        cuda.syncthreads()
        if i < n:
            for j in range(min(TILE, n - start)):
                (ax, ay, az, _, _, _), = autodiff(Reverse, pair, Active(xi), Active(yi), Active(zi),
                                                  tx[j], ty[j], tz[j])
                fx, fy, fz = fx + ax, fy + ay, fz + az
        cuda.syncthreads()
    if i < n:
        gx[i], gy[i], gz[i] = fx, fy, fz


def grad_split(xs, ys, zs, gx, gy, gz):
    t = gpuad.thread_index()
    n = xs.shape[0]
    if t < n * SPLIT:
        i, part = t % n, t // n
        chunk = (n + SPLIT - 1) // SPLIT
        xi, yi, zi = xs[i], ys[i], zs[i]
        fx, fy, fz = float32(0), float32(0), float32(0)
        for j in range(part * chunk, min(n, part * chunk + chunk)):
            (ax, ay, az, _, _, _), = autodiff(Reverse, pair, Active(xi), Active(yi), Active(zi),
                                              xs[j], ys[j], zs[j])
            fx, fy, fz = fx + ax, fy + ay, fz + az
        cuda.atomic.add(gx, i, fx)
        cuda.atomic.add(gy, i, fy)
        cuda.atomic.add(gz, i, fz)


def grad_checkpointed(xs, ys, zs, gx, gy, gz):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (ax, ay, az, _, _, _), = autodiff(Reverse, energy_of, Active(xs[i]), Active(ys[i]), Active(zs[i]),
                                          xs, ys, zs)
        gx[i], gy[i], gz[i] = ax, ay, az


@cuda.jit(device=True, inline=True)
def add_pair_grad(xi, yi, zi, xj, yj, zj, f):
    dx, dy, dz = xi - xj, yi - yj, zi - zj
    e = math.exp(-(dx * dx + dy * dy + dz * dz))
    s = -(e + e)
    f[0] += s * dx
    f[1] += s * dy
    f[2] += s * dz


@cuda.jit
def grad_naive_by_hand(xs, ys, zs, gx, gy, gz):
    i = cuda.grid(1)
    n = xs.shape[0]
    if i < n:
        f = cuda.local.array(3, float32)
        f[0], f[1], f[2] = float32(0), float32(0), float32(0)
        for j in range(n):
            add_pair_grad(xs[i], ys[i], zs[i], xs[j], ys[j], zs[j], f)
        gx[i], gy[i], gz[i] = f[0], f[1], f[2]


@cuda.jit
def grad_tiled_by_hand(xs, ys, zs, gx, gy, gz):
    i = cuda.grid(1)
    t = cuda.threadIdx.x
    n = xs.shape[0]
    tx = cuda.shared.array(TILE, float32)
    ty = cuda.shared.array(TILE, float32)
    tz = cuda.shared.array(TILE, float32)
    xi, yi, zi = float32(0), float32(0), float32(0)
    if i < n:
        xi, yi, zi = xs[i], ys[i], zs[i]
    f = cuda.local.array(3, float32)
    f[0], f[1], f[2] = float32(0), float32(0), float32(0)
    for start in range(0, n, TILE):
        if start + t < n:
            tx[t], ty[t], tz[t] = xs[start + t], ys[start + t], zs[start + t]
        cuda.syncthreads()
        if i < n:
            for j in range(min(TILE, n - start)):
                add_pair_grad(xi, yi, zi, tx[j], ty[j], tz[j], f)
        cuda.syncthreads()
    if i < n:
        gx[i], gy[i], gz[i] = f[0], f[1], f[2]


@cuda.jit
def grad_split_by_hand(xs, ys, zs, gx, gy, gz):
    t = cuda.grid(1)
    n = xs.shape[0]
    if t < n * SPLIT:
        i, part = t % n, t // n
        chunk = (n + SPLIT - 1) // SPLIT
        f = cuda.local.array(3, float32)
        f[0], f[1], f[2] = float32(0), float32(0), float32(0)
        for j in range(part * chunk, min(n, part * chunk + chunk)):
            add_pair_grad(xs[i], ys[i], zs[i], xs[j], ys[j], zs[j], f)
        cuda.atomic.add(gx, i, f[0])
        cuda.atomic.add(gy, i, f[1])
        cuda.atomic.add(gz, i, f[2])


MAX_SEGMENT = 256  # the hand-written checkpointed kernel's local arrays: N ≤ MAX_SEGMENT² particles
pair_by_hand = cuda.jit(device=True, inline=True)(pair)


def segment_length(n: int) -> int:
    """K = ⌈√N⌉ iterations per segment (gpuad's tape_capacity): K snapshots and one K-step segment."""
    return math.isqrt(n - 1) + 1


@cuda.jit
def grad_checkpointed_by_hand(xs, ys, zs, k, gx, gy, gz):
    """gpuad's checkpoint structure written by hand: the j loop of `energy_of` runs once storing the
    carried energy every k steps, then each k-step segment, last to first, runs again from its
    snapshot storing its exp terms, and is reversed (the differences are recomputed from the
    positions, as `step_back` in ode.py recomputes sin and cos from the taped q). Nothing reads the
    energy a segment recomputes, so NVVM drops the snapshots and the first sweep computing them (in
    the PTX only the segments' exps remain); gpuad drops the same ones (`checkpoint.read_again`)."""
    i = cuda.grid(1)
    n = xs.shape[0]
    if i < n:
        snapshots = cuda.local.array(MAX_SEGMENT, float32)
        terms = cuda.local.array(MAX_SEGMENT, float32)
        xi, yi, zi = xs[i], ys[i], zs[i]
        segments = (n + k - 1) // k
        e = float32(0)
        for s in range(segments):
            snapshots[s] = e
            for j in range(s * k, min(n, s * k + k)):
                e += pair_by_hand(xi, yi, zi, xs[j], ys[j], zs[j])
        fx, fy, fz = float32(0), float32(0), float32(0)  # d(energy)/d(e) is 1 all along: e += term
        for s in range(segments - 1, -1, -1):
            e = snapshots[s]
            start = s * k
            length = min(n, start + k) - start
            for t in range(length):
                terms[t] = pair_by_hand(xi, yi, zi, xs[start + t], ys[start + t], zs[start + t])
                e += terms[t]
            for t in range(length - 1, -1, -1):
                j = start + t
                g = -(terms[t] + terms[t])
                fx += g * (xi - xs[j])
                fy += g * (yi - ys[j])
                fz += g * (zi - zs[j])
        gx[i], gy[i], gz[i] = fx, fy, fz


def sizes(scale, tiny):
    return {"n": 70 if tiny else scaled(16384, scale)}


def inputs(s, rng):
    side = s["n"] ** (1 / 3)  # one particle per unit volume: a few within the Gaussian's reach
    return {name: rng.uniform(0.0, side, s["n"]).astype(np.float32) for name in ("xs", "ys", "zs")}


def outputs(s):
    return {name: np.zeros(s["n"], np.float32) for name in ("gx", "gy", "gz")}


def reference(s, a):
    r = np.stack([a[name].astype(np.float64) for name in ("xs", "ys", "zs")], axis=1)
    grads = np.zeros_like(r)
    for lo in range(0, len(r), 1024):  # rows in chunks: N × N × 3 float64 would not fit
        d = r[lo:lo + 1024, None, :] - r[None, :, :]
        e = np.exp(-np.sum(d * d, axis=2))
        grads[lo:lo + 1024] = np.sum(-2 * e[:, :, None] * d, axis=1)
    return {"gx": grads[:, 0], "gy": grads[:, 1], "gz": grads[:, 2]}


def launcher(kernel, threads_per_particle=1, tape=False):
    def bind(s):
        n = s["n"]
        k = gpuad.kernel(kernel, tape_capacity=segment_length(n)) if tape else kernel
        grid = blocks(n * threads_per_particle)
        return Launch(k, grid, lambda a: (a["xs"], a["ys"], a["zs"], a["gx"], a["gy"], a["gz"]))
    return bind


def checkpointed_by_hand(s):
    k = segment_length(s["n"])
    if k > MAX_SEGMENT:
        raise ValueError(f"N = {s['n']} needs segments of {k} > MAX_SEGMENT = {MAX_SEGMENT} steps")
    return Launch(grad_checkpointed_by_hand, blocks(s["n"]),
                  lambda a: (a["xs"], a["ys"], a["zs"], k, a["gx"], a["gy"], a["gz"]))


WHY = "N float32 terms of both signs summed in different orders; atol relative to the largest force"
RTOL, ATOL = 1e-4, 1e-4

CASES = [
    Case("pairwise_naive", "pairwise energy, per-pair autodiff, naive", sizes, inputs, outputs,
         launcher(gpuad.kernel(grad_naive)), launcher(grad_naive_by_hand), reference, RTOL, ATOL, WHY),
    Case("pairwise_tiled", "pairwise energy, per-pair autodiff, tiled", sizes, inputs, outputs,
         launcher(gpuad.kernel(grad_tiled)), launcher(grad_tiled_by_hand), reference, RTOL, ATOL, WHY,
         cpu_target=False),
    Case("pairwise_split", "pairwise energy, per-pair autodiff, split-j", sizes, inputs, outputs,
         launcher(gpuad.kernel(grad_split), SPLIT), launcher(grad_split_by_hand, SPLIT), reference,
         RTOL, ATOL, WHY),
    Case("pairwise_checkpointed", "pairwise per-i energy, checkpointed j loop (vs hand-written ⌈√N⌉ "
         "checkpoints)", sizes, inputs, outputs, launcher(grad_checkpointed, tape=True), checkpointed_by_hand,
         reference, RTOL, ATOL, WHY),
    Case("pairwise_checkpointed_vs_naive", "the same gpuad kernel vs the naive hand-written one (no "
         "checkpoints)", sizes, inputs, outputs, launcher(grad_checkpointed, tape=True),
         launcher(grad_naive_by_hand), reference, RTOL, ATOL, WHY),
]
