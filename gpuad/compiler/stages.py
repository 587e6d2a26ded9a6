"""The pipeline's stage names (the README's table) and the one clock that times them.

Stages nest: numba's typing of the kernel (stage 3) builds each deferred job, which
differentiates (stage 2), interprets (stage 1) and lowers (stage 3) the derivative. The
clock therefore keeps each stage's *own* seconds: entering a stage pauses the one running,
leaving it resumes that one, so the timings add up to the whole compile and nothing is
counted twice (GPUCompiler.jl times its steps with `@timeit_debug` the same way). The clock
also tells the progress display (`progress.py`) which stage a long compile is in.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from gpuad.compiler import progress

STAGES = ("interpret", "differentiate", "lower", "link", "emit")


@dataclass
class Span:
    """One timed block: its seconds, nested stages included (for log lines)."""

    seconds: float = 0.0


class StageClock:
    """Seconds per stage, exclusive of the stages nested inside; in the README's order."""

    def __init__(self):
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._running: list[list] = []  # [stage, start of its current stretch]

    @contextlib.contextmanager
    def __call__(self, stage: str):
        if stage not in self.seconds:
            raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
        start = now = time.perf_counter()
        if self._running:
            self._stop(self._running[-1], now)
        self._running.append([stage, now])
        progress.REPORTER.enter(stage)
        span = Span()
        try:
            yield span
        finally:
            progress.REPORTER.leave()
            now = time.perf_counter()
            self._stop(self._running.pop(), now)
            if self._running:
                self._running[-1][1] = now
            span.seconds = now - start

    def _stop(self, running: list, now: float) -> None:
        stage, since = running
        self.seconds[stage] += now - since
