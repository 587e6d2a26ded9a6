"""One process-wide lock around every compilation and every patch of numba.

gpuad's compile paths share state that is not thread-safe: the job caches,
numba's typing and target contexts, the generators of its typing templates,
and the module attributes gpuad patches while lowering (`numba_adapter.
compute_capability`). The lock is numba's own global compiler lock, a
re-entrant lock: numba takes it for each compilation, and gpuad code runs
inside numba compilations (a kernel's typing builds derivative jobs, which
type and differentiate callees), so one lock has no lock-order deadlock
where two would. Launching an already compiled kernel takes no lock.
"""
from __future__ import annotations

import contextlib
import functools
import signal
import threading

from gpuad.compiler import progress  # imports nothing of gpuad's

_toolchain_loaded = False
_loading: list = []


def _lock():
    # Imported on first use: importing numba is slow and the CLI starts without it.
    from numba.core.compiler_lock import global_compiler_lock

    return global_compiler_lock


@contextlib.contextmanager
def interrupts_deferred():
    """Hold a Ctrl-C (SIGINT) that arrives in the block until the block ends.

    Only the main thread receives signals, so elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # a handler not installed from Python: leave it alone
        yield
        return
    pending: list = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending and callable(previous):
            previous(signal.SIGINT, pending[0])


def load_toolchain() -> None:
    """Import numba and numba-cuda, with Ctrl-C held until done.

    An import cut short by KeyboardInterrupt leaves half-initialised numba
    modules behind, and every later compile fails with misleading errors
    (`module 'numba' has no attribute 'core'`). The first compile triggers
    these imports; they take about a second, so the interrupt only waits.
    Numba's typing and target contexts load their registries lazily, and an
    interrupted load loses registrations for good: they are loaded here too.
    gpuad's own target modules (which import numba-cuda and install their overlays)
    load inside the locked compile that needs them, where a Ctrl-C waits as well.
    This module imports nothing of gpuad's: every layer below the driver uses it.
    """
    global _toolchain_loaded
    if _toolchain_loaded or _loading:
        return
    _loading.append(True)  # numba's imports may reach back here
    try:
        with interrupts_deferred():
            import numba.cuda  # noqa: F401
            from numba.core.registry import cpu_target

            cpu_target.typing_context.refresh()
            cpu_target.target_context.refresh()
            _toolchain_loaded = True
    finally:
        _loading.clear()


@contextlib.contextmanager
def compiling():
    """Hold the compile lock for the block (re-entrant: compilations nest), and a Ctrl-C until
    the outermost block ends: raised inside numba or LLVM, KeyboardInterrupt can end one of
    numba's typing-registry generators or abort LLVM in its C call wrapper, breaking them for
    the process; raised after the compile, it finds every cache complete. A compile takes
    seconds, so the interrupt only waits (it does not wait for kernels once compiled)."""
    load_toolchain()
    with interrupts_deferred():
        lock = _lock()
        held_before = _owned_locks()
        lock.acquire()
        progress.REPORTER.begin()  # the outermost block is a compile session (shown after 1 s)
        try:
            yield
        finally:
            progress.REPORTER.end()
            lock.release()
            _release_leaked(held_before)


def first_call(dispatcher):
    """`compiling()` for the first call of a numba dispatcher, which compiles it; later calls need no lock."""
    return compiling() if not dispatcher.signatures else contextlib.nullcontext()


def _thread_locks() -> list:
    """numba's compiler lock and llvmlite's lock around the LLVM C API, as re-entrant locks."""
    from llvmlite.binding import ffi

    return [_lock()._lock, ffi.lib._lock._lock]


def _owned_locks() -> list[bool]:
    return [lock._is_owned() for lock in _thread_locks()]


def _release_leaked(held_before: list[bool]) -> None:
    """Release what an interrupt left locked: a Ctrl-C inside the Python code that numba
    and llvmlite run while releasing their locks (event callbacks) skips the release,
    and every other thread then waits forever for the next compile or LLVM call."""
    for lock, held in zip(_thread_locks(), held_before):
        while not held and lock._is_owned():
            lock.release()


def locked(fn):
    """Decorator: run `fn` holding the compile lock."""

    @functools.wraps(fn)
    def holding_the_lock(*args, **kwargs):
        with compiling():
            return fn(*args, **kwargs)

    return holding_the_lock
