"""Golden derivatives: the exact generated source of six small functions, one per shape of
generated code (straight line, taped loop, checkpointed loop, split callee, forward mode,
forward over reverse). A change to what gpuad generates shows up here as a readable diff;
when it is intended, regenerate with GPUAD_UPDATE_GOLDEN=1 and review the diff in git."""
import os
from pathlib import Path

import pytest
from golden import programs as p
from numba.core import types

from gpuad.ad import differentiate
from gpuad.api import Active, Const, Duplicated, Forward, Reverse

F64, I64, VEC = types.float64, types.int64, types.float64[::1]
GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "straight_line_reverse": (p.straight_line, Reverse, (Active, Active), (F64, F64)),
    "taped_loop_reverse": (p.taped_loop, Reverse, (Active, Const), (F64, I64)),
    "checkpointed_loop_reverse": (p.checkpointed_loop, Reverse, (Active, Const), (F64, I64)),
    "split_callee_reverse": (p.split_callee, Reverse, (Duplicated, Active, Const), (VEC, F64, I64)),
    "straight_line_forward": (p.straight_line, Forward, (Duplicated, Const), (F64, F64)),
    "forward_over_reverse": (p.grad_dot, Forward, (Duplicated, Duplicated, Const, Const), (F64,) * 4),
}


@pytest.mark.parametrize("name", CASES)
def test_generated_derivative_matches_its_golden_file(name):
    fn, mode, activities, argtypes = CASES[name]
    source = differentiate(fn, mode, activities, argtypes).source
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("GPUAD_UPDATE_GOLDEN") == "1":
        path.write_text(source)
    assert path.exists(), f"no golden file {path.name}: run with GPUAD_UPDATE_GOLDEN=1"
    assert source == path.read_text()
