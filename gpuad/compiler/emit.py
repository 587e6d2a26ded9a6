"""Stage 5: the linked module → PTX through NVVM (no GPU or driver needed)."""
from __future__ import annotations

from gpuad.compiler import numba_adapter
from gpuad.errors import EmissionError


def parse_arch(arch: str) -> tuple[int, int]:
    """'sm_90' / 'compute_90' / '90' → (9, 0)."""
    digits = arch.rsplit("_", 1)[-1]
    if not digits.isdigit() or len(digits) < 2:
        raise EmissionError(f"unknown architecture {arch!r}", hint="use a name such as sm_90 or sm_80")
    return int(digits[:-1]), int(digits[-1])


def emit_ptx(ir_text: str, *, arch: str = "sm_90", fastmath: bool = False) -> str:
    if "gpuad.deferred_codegen" in ir_text:
        raise EmissionError("a deferred-codegen marker reached emission; the module was not linked")
    try:
        return numba_adapter.compile_ptx(ir_text, cc=parse_arch(arch), fastmath=fastmath)
    except Exception as exc:  # NVVM's verifier message is the useful part
        raise EmissionError(f"NVVM rejected the linked module: {exc}") from exc
