"""A gpuad error in a notebook: gpuad's message and the user's frames, not numba's internals.

gpuad's errors already name the file, line and construct and say what to do; the frames
of gpuad, numba and llvmlite under them (often over a hundred lines) and the chained numba
exception only bury that. `gpuad.config.verbose = True` shows everything again.
"""
from __future__ import annotations

import os
import sys
import traceback

from gpuad import config
from gpuad.errors import GpuadError

# Frames from these packages are internals (and IPython running the cell); the user's code lives elsewhere.
_INTERNAL = (os.path.dirname(config.__file__) + os.sep,) + (  # gpuad's own directory
    f"{os.sep}numba{os.sep}", f"{os.sep}numba_cuda{os.sep}", f"{os.sep}llvmlite{os.sep}",
    f"{os.sep}IPython{os.sep}")


def user_frames(tb) -> list[traceback.FrameSummary]:
    """The traceback's frames outside gpuad, numba and llvmlite."""
    return [f for f in traceback.extract_tb(tb) if not any(part in f.filename for part in _INTERNAL)]


def short_report(exc: GpuadError) -> str:
    """The user's frames, then `ErrorType: message` and the hint."""
    frames = "".join(traceback.format_list(user_frames(exc.__traceback__)))
    head = "Traceback (most recent call last; gpuad and numba frames hidden: gpuad.config.verbose = True " \
           "shows them):\n" if frames else ""
    return f"{head}{frames}{type(exc).__name__}: {exc}\n"


def show_gpuad_error(shell, etype, value, tb, tb_offset=None):
    """IPython custom exception handler for GpuadError."""
    # An error that renders itself (the %%gpukernel magic's CellError: cell line, code, hint) keeps that.
    if config.verbose or hasattr(value, "_render_traceback_"):
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
    else:
        print(short_report(value), end="", file=sys.stderr)
    return None


def install(shell) -> None:
    shell.set_custom_exc((GpuadError,), show_gpuad_error)
