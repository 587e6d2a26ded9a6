"""Stage 5: architectures and the refusal to emit an unlinked module."""
import pytest

from gpuad.compiler.emit import emit_ptx, parse_arch
from gpuad.errors import EmissionError


@pytest.mark.parametrize("arch, cc", [("sm_90", (9, 0)), ("compute_80", (8, 0)), ("86", (8, 6))])
def test_arch_names(arch, cc):
    assert parse_arch(arch) == cc


def test_unknown_arch_says_what_to_use():
    with pytest.raises(EmissionError, match="use a name such as sm_90"):
        parse_arch("hopper")


def test_a_module_with_a_marker_is_not_emitted():
    with pytest.raises(EmissionError, match="was not linked"):
        emit_ptx('%"a" = call i8* @"gpuad.deferred_codegen"(i64 1)')


def test_other_architectures_reach_the_ptx(points_record_80):
    assert ".target sm_80" in points_record_80.ptx


@pytest.fixture(scope="module")
def points_record_80():
    import numpy as np

    from gpuad.examples import grad_f

    xs = np.zeros(4)
    return grad_f.compile(xs, xs, xs, arch="sm_80")
