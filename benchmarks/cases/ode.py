"""A damped pendulum integrated by explicit Euler for a run-time number of steps, one trajectory per
thread; the gradient of q_T² + p_T² in (q0, p0, k) through a taped loop, a checkpointed loop
(hand-written: √T snapshots, one segment re-run at a time) and forward mode (∂/∂q0 only)."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

import gpuad
from benchmarks.cases import Case, Launch, blocks, scaled, uniform
from gpuad import Active, Duplicated, Forward, Reverse, autodiff

STEPS = 256  # the largest step count the kernels take (run time: the `steps` argument)
SEGMENT = 16  # checkpoint every SEGMENT steps: SEGMENT² ≥ STEPS
DAMPING, DT = np.float32(0.1), np.float32(0.01)


def pendulum(q, p, k, c, h, steps):
    for _ in range(steps):
        q, p = q + h * p, p - h * (k * math.sin(q) + c * p)
    return q * q + p * p


def pendulum_checkpointed(q, p, k, c, h, steps):
    for _ in range(steps):  # gpuad: checkpoint
        q, p = q + h * p, p - h * (k * math.sin(q) + c * p)
    return q * q + p * p


def grad_taped(q0s, p0s, ks, c, h, steps, dq0s, dp0s, dks):
    i = gpuad.thread_index()
    if i < q0s.shape[0]:
        (dq, dp, dk, _, _, _), = autodiff(Reverse, pendulum, Active(q0s[i]), Active(p0s[i]), Active(ks[i]),
                                          c, h, steps)
        dq0s[i], dp0s[i], dks[i] = dq, dp, dk


def grad_checkpointed(q0s, p0s, ks, c, h, steps, dq0s, dp0s, dks):
    i = gpuad.thread_index()
    if i < q0s.shape[0]:
        (dq, dp, dk, _, _, _), = autodiff(Reverse, pendulum_checkpointed, Active(q0s[i]), Active(p0s[i]),
                                          Active(ks[i]), c, h, steps)
        dq0s[i], dp0s[i], dks[i] = dq, dp, dk


def grad_forward(q0s, p0s, ks, c, h, steps, dq0s):
    i = gpuad.thread_index()
    if i < q0s.shape[0]:
        dq, = autodiff(Forward, pendulum, Duplicated(q0s[i], float32(1)), p0s[i], ks[i], c, h, steps)
        dq0s[i] = dq


@cuda.jit(device=True, inline=True)
def step_back(q, aq, ap, k, c, h):
    """The adjoint of one Euler step taken from q: (aq, ap, contribution to ak)."""
    s = ap * h
    return aq - s * k * math.cos(q), aq * h + ap - s * c, -s * math.sin(q)


@cuda.jit
def grad_taped_by_hand(q0s, p0s, ks, c, h, steps, dq0s, dp0s, dks):
    i = cuda.grid(1)
    if i < q0s.shape[0]:
        tape = cuda.local.array(STEPS, float32)
        q, p, k = q0s[i], p0s[i], ks[i]
        for t in range(steps):
            tape[t] = q
            q, p = q + h * p, p - h * (k * math.sin(q) + c * p)
        aq, ap, ak = q + q, p + p, float32(0)
        for t in range(steps - 1, -1, -1):
            aq, ap, dk = step_back(tape[t], aq, ap, k, c, h)
            ak += dk
        dq0s[i], dp0s[i], dks[i] = aq, ap, ak


@cuda.jit
def grad_checkpointed_by_hand(q0s, p0s, ks, c, h, steps, dq0s, dp0s, dks):
    i = cuda.grid(1)
    if i < q0s.shape[0]:
        snap_q = cuda.local.array(SEGMENT, float32)
        snap_p = cuda.local.array(SEGMENT, float32)
        tape = cuda.local.array(SEGMENT, float32)
        q, p, k = q0s[i], p0s[i], ks[i]
        segments = (steps + SEGMENT - 1) // SEGMENT
        for s in range(segments):
            snap_q[s], snap_p[s] = q, p
            for _ in range(s * SEGMENT, min(steps, s * SEGMENT + SEGMENT)):
                q, p = q + h * p, p - h * (k * math.sin(q) + c * p)
        aq, ap, ak = q + q, p + p, float32(0)
        for s in range(segments - 1, -1, -1):
            q, p = snap_q[s], snap_p[s]
            length = min(steps, s * SEGMENT + SEGMENT) - s * SEGMENT
            for t in range(length):
                tape[t] = q
                q, p = q + h * p, p - h * (k * math.sin(q) + c * p)
            for t in range(length - 1, -1, -1):
                aq, ap, dk = step_back(tape[t], aq, ap, k, c, h)
                ak += dk
        dq0s[i], dp0s[i], dks[i] = aq, ap, ak


@cuda.jit
def grad_forward_by_hand(q0s, p0s, ks, c, h, steps, dq0s):
    i = cuda.grid(1)
    if i < q0s.shape[0]:
        q, p, k = q0s[i], p0s[i], ks[i]
        tq, tp = float32(1), float32(0)
        for _ in range(steps):
            tq, tp = tq + h * tp, tp - h * (k * math.cos(q) * tq + c * tp)
            q, p = q + h * p, p - h * (k * math.sin(q) + c * p)
        dq0s[i] = (q + q) * tq + (p + p) * tp


def sizes(scale, tiny):
    # tiny: a step count that is not a multiple of the segment, so the last segment is short
    return {"n": 40 if tiny else scaled(1 << 20, scale), "steps": 250 if tiny else STEPS}


def inputs(s, rng):
    n = s["n"]
    return {"q0s": uniform(rng, -1.0, 1.0, n), "p0s": uniform(rng, -1.0, 1.0, n),
            "ks": uniform(rng, 0.5, 2.0, n)}


def outputs_reverse(s):
    return {name: np.zeros(s["n"], np.float32) for name in ("dq0s", "dp0s", "dks")}


def reference(s, a):
    """Float64 taped adjoint of the same Euler steps (vectorised over trajectories)."""
    q, p, k = (a[name].astype(np.float64) for name in ("q0s", "p0s", "ks"))
    c, h = float(DAMPING), float(DT)
    tape = []
    for _ in range(s["steps"]):
        tape.append(q)
        q, p = q + h * p, p - h * (k * np.sin(q) + c * p)
    aq, ap, ak = 2 * q, 2 * p, np.zeros_like(q)
    for qt in reversed(tape):
        aq, ap, ak = aq - ap * h * k * np.cos(qt), aq * h + ap - ap * h * c, ak - ap * h * np.sin(qt)
    return {"dq0s": aq, "dp0s": ap, "dks": ak}


def launch_reverse(kernel):
    def bind(s):
        return Launch(kernel, blocks(s["n"]), lambda a: (a["q0s"], a["p0s"], a["ks"], DAMPING, DT, s["steps"],
                                                         a["dq0s"], a["dp0s"], a["dks"]))
    return bind


def launch_forward(kernel):
    def bind(s):
        return Launch(kernel, blocks(s["n"]), lambda a: (a["q0s"], a["p0s"], a["ks"], DAMPING, DT, s["steps"],
                                                         a["dq0s"]))
    return bind


WHY = "256 float32 Euler steps, rounding compounding along the trajectory; atol where a gradient crosses 0"
RTOL, ATOL = 1e-4, 1e-5

CASES = [
    Case("ode_taped", "explicit-Euler ODE, T = 256 run-time steps, taped", sizes, inputs, outputs_reverse,
         launch_reverse(gpuad.kernel(grad_taped, tape_capacity=STEPS)), launch_reverse(grad_taped_by_hand),
         reference, RTOL, ATOL, WHY),
    Case("ode_checkpointed", "same, checkpointed 16 × 16 vs hand-written √T checkpoints", sizes, inputs,
         outputs_reverse, launch_reverse(gpuad.kernel(grad_checkpointed, tape_capacity=SEGMENT)),
         launch_reverse(grad_checkpointed_by_hand), reference, RTOL, ATOL, WHY),
    Case("ode_forward", "same, forward mode (∂/∂q0)", sizes, inputs,
         lambda s: {"dq0s": np.zeros(s["n"], np.float32)},
         launch_forward(gpuad.kernel(grad_forward)), launch_forward(grad_forward_by_hand),
         lambda s, a: {"dq0s": reference(s, a)["dq0s"]}, RTOL, ATOL, WHY),
]
