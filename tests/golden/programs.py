"""The functions whose derivatives tests/test_golden.py pins, one per shape of generated code."""
import math

from gpuad import Active, Reverse, autodiff


def straight_line(x, y):
    t = x * y
    return math.sin(t) + x / y


def taped_loop(x, n):
    s = 0.0
    for _ in range(n):
        s = math.sin(s) * x + 0.5
    return s


def checkpointed_loop(x, n):
    s = x
    for _ in range(n):  # gpuad: checkpoint
        s = math.sin(s) * 0.9 + x
    return s


def helper(a, x, n):
    s = 0.0
    for k in range(n):
        s += a[k] * x
    return s


def split_callee(a, x, n):
    return helper(a, x, n) * x


def energy(x, y):
    return x * x * y + math.sin(x * y)


def grad_dot(x, y, vx, vy):  # forward over reverse: a Hessian-vector product
    (dx, dy), = autodiff(Reverse, energy, Active(x), Active(y))
    return dx * vx + dy * vy
