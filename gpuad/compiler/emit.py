"""Stage 5: the linked module → PTX through NVVM (no GPU or driver needed)."""
from __future__ import annotations

import warnings

from gpuad.compiler import numba_adapter
from gpuad.compiler.llvm_text import MARKER_SYMBOL
from gpuad.errors import EmissionError


def parse_arch(arch: str) -> tuple[int, int]:
    """'sm_90' / 'compute_90' / '90' → (9, 0)."""
    digits = arch.rsplit("_", 1)[-1]
    if not digits.isdigit() or len(digits) < 2:
        raise EmissionError(f"unknown architecture {arch!r}", hint="use a name such as sm_90 or sm_80")
    return int(digits[:-1]), int(digits[-1])


# NVVM's warning where it compiles an atomic whose address is local memory into `trap;`.
LOCAL_ATOMIC = "Cannot do atomic on local memory"


def emit_ptx(ir_text: str, *, arch: str = "sm_90", fastmath: bool = False) -> str:
    if MARKER_SYMBOL in ir_text:
        raise EmissionError("a deferred-codegen marker reached emission; the module was not linked")
    with warnings.catch_warnings(record=True) as caught:  # the caller holds the compile lock
        warnings.simplefilter("always")
        try:
            ptx = numba_adapter.compile_ptx(ir_text, cc=parse_arch(arch), fastmath=fastmath)
        except Exception as exc:  # NVVM's verifier message is the useful part
            raise EmissionError(f"NVVM rejected the linked module: {exc}") from exc
    if any(LOCAL_ATOMIC in str(w.message) for w in caught):
        raise EmissionError(
            "an atomic update of local memory (a cuda.local.array) would trap on the GPU: NVVM "
            "compiles it to `trap;`, the launch fails with CUDA_ERROR_LAUNCH_FAILED and the CUDA "
            "context is lost",
            hint="gpuad updates a local shadow without atomics where autodiff is passed it directly "
            "(`Duplicated(l, dl)` with `dl = cuda.local.array(...)` in the calling function); a "
            "function that receives a local array as a parameter and differentiates, or a helper the "
            "differentiated function passes it to, keeps atomics: pass the local array directly, or "
            "use a global or shared array; never cuda.atomic on a local array",
        )
    for w in caught:  # everything else as NVVM said it
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ptx
