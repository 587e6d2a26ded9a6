"""numba_adapter's stand-ins for numba-cuda steps that grew faster than the code they compile:
each must give exactly numba-cuda's own answer."""
from __future__ import annotations

import math
import operator

import pytest
from numba.core import types

from gpuad.compiler import numba_adapter


def straight(x, y):
    a = x * y
    b = a + 1.0
    a = b * b  # `a` assigned twice in one block: not singly assigned
    return a + math.sin(b)


def branchy(x, n):
    s = x
    t = 0.0
    for k in range(n):
        u = s * k  # defined and used in the loop body only
        if u > 1.0:
            s = s - u
        t += u
    return s + t


def mixed(i, x):
    a = i * 2
    b = a // 3
    c = x * x
    d = i / 4
    e = math.sqrt(c) + math.floor(d)
    return b + c + d + e + (i > 3)


def _compile(fn, argtypes):
    from numba.cuda.compiler import compile_cuda

    with numba_adapter.compute_capability(numba_adapter.DEFAULT_CC):
        return compile_cuda(fn, None, argtypes, cc=numba_adapter.DEFAULT_CC)


@pytest.mark.parametrize("fn, argtypes", [(straight, (types.float64, types.float64)),
                                          (branchy, (types.float32, types.int64)),
                                          (mixed, (types.int64, types.float32))])
def test_singly_assigned_variables_are_numba_cudas(monkeypatch, fn, argtypes):
    from numba.cuda import lowering

    original = lowering.Lower.__dict__["_find_singly_assigned_variable"]
    seen = []

    def both(self):
        original(self)
        seen.append((set(self._singly_assigned_vars),
                     numba_adapter.singly_assigned_variables(self.func_ir, self.blocks)))

    monkeypatch.setattr(lowering.Lower, "_find_singly_assigned_variable", both)
    _compile(fn, argtypes)
    assert seen and all(theirs == ours for theirs, ours in seen)
    assert any(theirs for theirs, _ in seen)  # the comparison is not between empty sets


@pytest.mark.parametrize("fn", [straight, branchy, mixed])
def test_singly_assigned_variables_of_a_name_assigned_twice_in_a_block(fn):
    """SSA leaves no name assigned twice in one block, so the compiles above never meet one:
    here `b` (or the block's first assigned name) is assigned again at its block's end."""
    import copy
    from types import SimpleNamespace

    from numba.cuda import lowering
    from numba.cuda.compiler import run_frontend
    from numba.cuda.core import ir

    fir = run_frontend(fn)
    block = fir.blocks[min(fir.blocks)]
    first = [s for s in block.body if isinstance(s, ir.Assign) and not s.target.name.startswith("$")]
    twice = next((s for s in first if s.target.name == "b"), first[-1])
    block.body.insert(len(block.body) - 1, copy.copy(twice))
    theirs = SimpleNamespace(func_ir=fir, blocks=fir.blocks)
    lowering.Lower.__dict__["_find_singly_assigned_variable"](theirs)
    ours = numba_adapter.singly_assigned_variables(fir, fir.blocks)
    assert ours == theirs._singly_assigned_vars and ours
    assert twice.target.name not in ours


def test_the_linear_search_is_in_place_only_while_gpuad_compiles():
    from numba.cuda import lowering

    before = lowering.Lower.__dict__["_find_singly_assigned_variable"]
    with numba_adapter.linear_singly_assigned():
        assert lowering.Lower._find_singly_assigned_variable is numba_adapter._find_singly_assigned_variable
    assert lowering.Lower.__dict__["_find_singly_assigned_variable"] is before


def test_scalar_operator_typing_is_asked_once_per_argument_types(monkeypatch):
    from numba.core.types import functions
    from numba.cuda.descriptor import cuda_target

    context = cuda_target.typing_context
    context.refresh()
    asked = []
    original = functions.BaseFunction.__dict__["get_call_type"]

    def counting(self, ctx, args, kws):
        asked.append((self.typing_key, args))
        return original(self, ctx, args, kws)

    monkeypatch.setattr(functions.BaseFunction, "get_call_type", counting)
    mul = context.resolve_value_type(operator.mul)
    f64, f32, i64 = types.float64, types.float32, types.int64
    with numba_adapter.memoised_scalar_typing():
        asks = [(f64, f64), (f32, i64), (f64, f64), (f32, i64)]
        sigs = [mul.get_call_type(context, args, {}) for args in asks]
        array = types.float64[::1]
        mul.get_call_type(context, (array, f64), {})  # not scalar: asked every time
        mul.get_call_type(context, (array, f64), {})
    assert sigs[0] == sigs[2] and sigs[1] == sigs[3] and sigs[0].return_type == f64
    scalar_asks = [(operator.mul, (f64, f64)), (operator.mul, (f32, i64))]
    assert asked == scalar_asks + [(operator.mul, (array, f64))] * 2
    assert functions.BaseFunction.get_call_type is counting  # put back after the compile


@pytest.mark.parametrize("fn, argtypes", [(mixed, (types.int64, types.float32)),
                                          (branchy, (types.float32, types.int64))])
def test_memoised_typing_types_every_variable_as_numba_does(fn, argtypes):
    plain = _compile(fn, argtypes)
    with numba_adapter.memoised_scalar_typing():
        memoised = _compile(fn, argtypes)
        again = _compile(fn, argtypes)  # from the memo
    for cres in (memoised, again):
        assert cres.signature == plain.signature
        assert dict(cres.type_annotation.typemap) == dict(plain.type_annotation.typemap)
        assert {str(k): v for k, v in cres.type_annotation.calltypes.items()} == \
            {str(k): v for k, v in plain.type_annotation.calltypes.items()}


def test_ptx_kernels_load_through_the_drivers_ptx_jit(monkeypatch):
    """gpuad's PTX is loaded with the driver's PTX JIT (`create_module_ptx`), not numba's
    `_Linker`: through the linker an atomic add whose result is unused stayed an ATOMG (the
    kernel waits for each reply before exiting) where the driver makes a REDG; stencil_scatter
    ran 0.43 ms against 0.33 ms on an H200 (issue 11). Checked without a GPU: the context is a
    stand-in that records what it was asked to load."""
    from numba.cuda.cudadrv import devices, driver

    loaded = []

    class Module:
        def get_function(self, symbol):
            return type("Function", (), {"kernel": symbol})()

    class Context:
        def create_module_ptx(self, ptx):
            loaded.append(ptx)
            return Module()

        def create_module_image(self, image):
            raise AssertionError("PTX went through a linker's image, not the driver's PTX JIT")

    def no_linker(*args, **kwargs):
        raise AssertionError("PTX went through numba's _Linker")

    monkeypatch.setattr(devices, "get_context", lambda: Context())
    monkeypatch.setattr(driver, "_Linker", no_linker)
    monkeypatch.setattr(driver, "_to_core_stream", lambda stream: stream)
    kernel = numba_adapter.PtxKernel(".version 9.0\n", "entry", (None, None), 8, checks_status=True)
    assert loaded == [".version 9.0\n"] and kernel._cu_kernel == "entry"
