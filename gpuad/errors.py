"""One hierarchy of gpuad errors, each carrying the source location it is about.

Every error names where the problem is (file, line, construct) and says what to
do next, so a user never has to read a numba traceback to find their mistake.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLocation:
    """Where in user code an error points: file, line and the construct."""

    filename: str = "<unknown>"
    line: int = 0
    construct: str = ""
    function: str = ""

    def __str__(self) -> str:
        where = f"{self.filename}:{self.line}"
        if self.function:
            where += f" in {self.function}()"
        if self.construct:
            where += f": `{self.construct}`"
        return where


class GpuadError(Exception):
    """Base of every error gpuad raises on purpose."""

    def __init__(self, message: str, location: SourceLocation | None = None, hint: str = ""):
        self.message = message
        self.location = location
        self.hint = hint
        text = message if location is None else f"{location}: {message}"
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)

    def __reduce__(self):
        # Pickled whole (a Dask worker's error reaches the client with its location and hint).
        return (rebuild_error, (type(self), self.message, self.location, self.hint, self.__dict__))


class InterpretError(GpuadError):
    """A call in a kernel could not be resolved (stage 1)."""


class AutodiffCallError(GpuadError):
    """An `autodiff` call is malformed: bad mode, wrapper, arity or function."""


class UnsupportedConstruct(GpuadError):
    """The differentiation engine cannot differentiate this construct (stage 2)."""


class LoweringError(GpuadError):
    """numba could not lower the kernel or a derivative to LLVM IR (stage 3)."""


class LinkError(GpuadError):
    """The deferred-codegen linker could not resolve a marker (stage 4)."""


class EmissionError(GpuadError):
    """NVVM rejected the linked module (stage 5)."""


class LaunchError(GpuadError):
    """A kernel could not be launched with the given arguments (stage 6)."""


class TapeOverflow(GpuadError):
    """A dynamic loop ran more iterations than its per-thread tape holds."""


class LocalMemoryExceeded(LaunchError):
    """A kernel needs more local memory per thread (tape, local arrays) than CUDA allows."""


class OutOfBounds(GpuadError, IndexError):
    """A kernel on the cpu target indexed an array out of bounds (nothing is written back)."""


class GpuadWarning(UserWarning):
    """Something gpuad can do but that is probably not what was meant (e.g. `Active` on an integer)."""


def rebuild_error(cls, message: str, location: SourceLocation | None, hint: str, state: dict):
    """Unpickle a GpuadError of any subclass, whatever its constructor takes."""
    error = cls.__new__(cls)
    GpuadError.__init__(error, message, location, hint)
    error.__dict__.update(state)
    return error
