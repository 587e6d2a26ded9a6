"""The example kernel of the README, shared by `gpuad demo`, tests and tutorials."""
import math

import gpuad
from gpuad import Active, Reverse, autodiff


def f(x, y):
    return math.sin(x) * y


@gpuad.kernel
def grad_f(xs, ys, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (dx, dy), = autodiff(Reverse, f, Active(xs[i]), Active(ys[i]))
        dxs[i] = dx
