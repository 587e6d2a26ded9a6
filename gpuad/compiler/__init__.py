"""The compiler: the stage driver (`driver.py`, stages 1–5 in order), the deferred jobs of stage 2
(`jobs.py`), and stages 3–5: lower (numba), link (gpuad), emit (NVVM)."""
