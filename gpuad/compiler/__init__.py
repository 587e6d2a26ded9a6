"""Stages 3–5 of the pipeline: lower (numba), link (gpuad), emit (NVVM)."""
