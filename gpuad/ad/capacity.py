"""How a tape's size grows with `tape_capacity`: polynomials in the capacity C, as tuples of
coefficients, lowest degree first (`(2, 3)` is 2 + 3·C).

The generator builds them (`tape.TapeUse`); the host evaluates them to say which capacity an
overflowing launch needs (`gpuad.targets.status.hint_capacity`). Apart from `tape`, which needs
the typing stage, so that reading a status stays below the compiler in the import graph.
"""
from __future__ import annotations


def poly_add(p: tuple, q: tuple) -> tuple:
    n = max(len(p), len(q))
    return tuple((p[i] if i < len(p) else 0) + (q[i] if i < len(q) else 0) for i in range(n))


def poly_scale(p: tuple, n: int) -> tuple:
    return tuple(c * n for c in p) if n else ()


def poly_max(p: tuple, q: tuple) -> tuple:
    n = max(len(p), len(q))
    return tuple(max(p[i] if i < len(p) else 0, q[i] if i < len(q) else 0) for i in range(n))


def poly_at(p: tuple, capacity: int) -> int:
    return sum(c * capacity**i for i, c in enumerate(p))
