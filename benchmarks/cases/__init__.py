"""The benchmark cases of issue 11: each a gpuad gradient kernel written the way a user naturally would,
next to a hand-written numba-cuda adjoint of the same structure, with a float64 numpy reference.

A case only describes; `benchmarks/suite.py` launches, compares and times. Everything is float32.
Kernels launch with `THREADS` threads per block; tiled and block-reduced kernels rely on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

THREADS = 256


@dataclass(frozen=True)
class Launch:
    """One launch of a kernel over `grid` blocks of THREADS threads; `arguments` picks its arguments
    from the inputs and outputs by name."""
    kernel: Any  # a gpuad.Kernel or a numba-cuda kernel
    grid: int
    arguments: Callable[[dict], tuple]

    def __call__(self, arrays: dict) -> None:
        self.kernel[self.grid, THREADS](*self.arguments(arrays))


@dataclass(frozen=True)
class Case:
    name: str  # what --cases takes
    title: str  # the table's row
    sizes: Callable[[float, bool], dict]  # (size scale, tiny for --check-cpu) -> sizes by name
    inputs: Callable[[dict, np.random.Generator], dict]  # sizes -> float32 arrays and scalars
    outputs: Callable[[dict], dict]  # sizes -> zeroed output arrays (kernels add into some)
    gpuad: Callable[[dict], Launch]  # sizes -> launcher of the gpuad kernel
    hand: Callable[[dict], Launch]  # sizes -> launcher of the hand-written kernel
    reference: Callable[[dict, dict], dict]  # sizes, inputs -> float64 outputs (numpy)
    rtol: float
    atol: float  # relative to the largest |reference| value of each output
    why: str  # why that tolerance, in float32
    cpu_target: bool = True  # False: the gpuad kernel uses shared memory, which the cpu target refuses


def blocks(n: int) -> int:
    return (n + THREADS - 1) // THREADS


def scaled(n: int, scale: float, least: int = THREADS) -> int:
    return max(least, int(n * scale))


def uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return rng.uniform(lo, hi, n).astype(np.float32)


def all_cases() -> dict[str, Case]:
    from benchmarks.cases import elementwise, horner, ode, pairwise, stencil

    found = [*elementwise.CASES, *horner.CASES, *stencil.CASES, *pairwise.CASES, *ode.CASES]
    return {case.name: case for case in found}
