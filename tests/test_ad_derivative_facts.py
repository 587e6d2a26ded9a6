"""Facts a derivative carries beside its text: whether it can report a failure through `status`
(`can_fail`) and which loop lines its overflow reports name (`overflow_lines`). Launchers read
these facts; nothing searches the generated source for strings."""
from __future__ import annotations

import math

import numpy as np
from golden import programs as p
from numba.core import types

from gpuad.ad import differentiate
from gpuad.api import Active, Const, Duplicated, Forward, Reverse, autodiff
from gpuad.compiler.jobs import JobFacts
from gpuad.targets import status as st

F64, I64 = types.float64, types.int64
LOOP_LINE = {fn: fn.__code__.co_firstlineno + 2 for fn in (p.taped_loop, p.checkpointed_loop)}


def static_loop(x):
    s = x
    for _ in range(3):
        s = math.sin(s)
    return s


def grad_of_taped_loop(x, n, v):
    (dx, _), = autodiff(Reverse, p.taped_loop, Active(x), Const(n))
    return dx * v


def test_straight_line_and_static_loops_cannot_fail():
    for fn, activities, argtypes in ((p.straight_line, (Active, Active), (F64, F64)),
                                     (static_loop, (Active,), (F64,))):
        d = differentiate(fn, Reverse, activities, argtypes)
        assert not d.can_fail and d.overflow_lines == frozenset()
    assert not differentiate(p.straight_line, Forward, (Duplicated, Const), (F64, F64)).can_fail


def test_a_loop_with_a_runtime_trip_count_can_fail_and_names_its_line():
    d = differentiate(p.taped_loop, Reverse, (Active, Const), (F64, I64))
    assert d.can_fail and d.overflow_lines == {LOOP_LINE[p.taped_loop]}


def test_a_checkpointed_loop_can_fail_and_names_its_line():
    d = differentiate(p.checkpointed_loop, Reverse, (Active, Const), (F64, I64))
    assert d.can_fail and d.overflow_lines == {LOOP_LINE[p.checkpointed_loop]}


def test_forward_over_reverse_keeps_the_inner_adjoints_failure():
    d = differentiate(grad_of_taped_loop, Forward, (Duplicated, Const, Const), (F64, I64, F64))
    assert d.can_fail
    assert d.overflow_lines == frozenset()  # the inner function's line, not this job's


def test_the_status_names_the_job_whose_loop_overflowed():
    status = np.zeros(st.SIZE, dtype=np.int64)
    status[st.FLAG], status[st.LINE], status[st.CAPACITY], status[st.NEEDED] = st.TAPE_OVERFLOW, 14, 8, 20
    jobs = [JobFacts(False, frozenset(), frozenset(), "other.py", "other"),
            JobFacts(True, frozenset({14}), frozenset(), "mine.py", "mine")]
    error = st.status_error(status, "k", jobs, 4)
    assert (error.location.filename, error.location.line, error.location.function) == ("mine.py", 14, "mine")
