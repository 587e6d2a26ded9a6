"""The per-launch status array: how a kernel reports errors to the host.

Its layout is defined once, beside the primitives that write it (`gpuad.ad.primitives`). The
generated derivative writes FLAG..NEEDED when a bounded tape would overflow; the launcher
raises `TapeOverflow`.
"""
from __future__ import annotations

import atexit
import collections
import math
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from gpuad.ad.capacity import poly_at
from gpuad.ad.primitives import (  # noqa: F401 - the layout, under the names launchers use
    BLOCK,
    CHECKPOINT_OVERFLOW,
    FLAG,
    GRID,
    LINE,
    NEEDED,
    NEEDED_INTS,
    RAN,
    TAPE_OVERFLOW,
    TID,
)
from gpuad.ad.primitives import STATUS_SIZE as SIZE
from gpuad.errors import SourceLocation, TapeOverflow


def new_status() -> np.ndarray:
    return np.zeros(SIZE, dtype=np.int64)


def status_type():
    from numba.core import types

    return types.Array(types.int64, 1, "C")


def raise_for_status(status: np.ndarray, kernel_name: str, jobs, tape_capacity: int) -> None:
    """Raise for an error the launch reported; `jobs` are the launch's `JobFacts`."""
    error = status_error(status, kernel_name, jobs, tape_capacity)
    if error is not None:
        raise error


def status_error(status: np.ndarray, kernel_name: str, jobs, tape_capacity: int,
                 earlier: str = "") -> TapeOverflow | None:
    """The error a launch reported, or None.

    `tape_capacity` is the kernel's setting, in loop iterations; the status
    counts tape entries (a loop may tape several values per iteration) of both stacks.
    `earlier` names a launch whose status was read after it returned
    (`check="deferred"`): its results in device arrays are not valid.
    """
    if status[FLAG] == 0:
        return None
    outcome = ("no result was written back" if not earlier else
               "its results in device arrays are not valid (check='deferred' read this status after "
               "the launch returned)")
    prefix = f"{earlier}: " if earlier else ""
    line = int(status[LINE])
    filename, function = _loop_owner(jobs, line)
    if status[FLAG] not in (TAPE_OVERFLOW, CHECKPOINT_OVERFLOW):
        return TapeOverflow(f"{prefix}kernel {kernel_name} reported error code {status[FLAG]}; {outcome}")
    growth, exact = _growth(jobs, line)
    enough, fits = hint_capacity(status, tape_capacity, growth)
    hint = (f"raise the capacity: gpuad.kernel(tape_capacity={enough})" if fits and exact else
            f"raise the capacity to at least gpuad.kernel(tape_capacity={enough}) (what this launch "
            "needs beyond that is not known here: a larger capacity may report again)")
    if status[FLAG] == TAPE_OVERFLOW:
        message = (f"{prefix}a loop in kernel {kernel_name} {_entries(status, tape_capacity, growth)} "
                   f"(tape_capacity={tape_capacity} iterations); {outcome}")
    else:
        ran = int(status[RAN])
        message = (f"{prefix}a checkpointed loop in kernel {kernel_name} ran {ran} iterations but "
                   f"tape_capacity={tape_capacity} checkpoints at most {tape_capacity}*{tape_capacity} = "
                   f"{tape_capacity * tape_capacity}; {outcome}")
    return TapeOverflow(message, SourceLocation(filename, line, "loop", function), hint=hint)


def _entries(status: np.ndarray, capacity: int, growth: tuple | None) -> str:
    """What the tape needed per thread and, where known, what it holds."""
    needs = int(status[NEEDED]), int(status[NEEDED_INTS])
    if growth is None:
        return f"needed {needs[0]} float and {needs[1]} int tape entries per thread"
    holds = [poly_at(size, capacity) for size in growth[:2]]
    over = [(kind, need, held) for kind, need, held in zip(("float", "int"), needs, holds) if need > held]
    if len(over) == 1:
        (kind, need, held), = over
        return f"needed {need} tape entries per thread ({kind}s) but the tape holds {held}"
    return (f"needed {needs[0]} float and {needs[1]} int tape entries per thread but the tape holds "
            f"{holds[0]} and {holds[1]}")


# The largest capacity the hint looks at: beyond, it names the least that fits by scaling alone.
HINT_LIMIT = 2**40


def hint_capacity(status: np.ndarray, capacity: int, growth: tuple | None) -> tuple[int, bool]:
    """(a tape_capacity, whether the launch that reported `status` fits it), for a launch at
    `capacity` whose tape grows as `growth` (`gpuad.ad.tape.TapeUse.growth`, None: unknown).

    Every overflow report gives both stacks' needs and the longest checkpointed loop's iterations
    n (the forward sweep counts every push, also past the capacity). At a capacity c > `capacity`
    the loops run as before: a stack needs more by what checkpointed loops reserve for running a
    segment again (`rerun`, K = c iterations), and fewer snapshots (one per K iterations): the
    longest loop's ceil(n / capacity) - ceil(n / c) fewer segments of at least the fewest
    snapshot entries of any checkpointed loop (`snapshots`); a stack holds at least `size`(c). So
    c fits where n <= c * c and need - fewer + rerun(c) - rerun(capacity) <= size(c) for both
    stacks. Without `growth`: the least capacity the checkpointed loops need, or one more.
    """
    ran = int(status[RAN])
    needs = int(status[NEEDED]), int(status[NEEDED_INTS])
    at_least = max(capacity + 1, math.isqrt(ran - 1) + 1 if ran > capacity * capacity else 0)
    if growth is None:
        return at_least, False
    size_f, size_i, rerun_f, rerun_i, snapshots = growth
    fewest = [min((snap[k] for snap in snapshots), default=0) for k in (0, 1)]

    def fits(c: int) -> bool:
        segments = -(-ran // capacity) - -(-ran // c)
        return c * c >= ran and all(
            need - segments * least + poly_at(rerun, c) - poly_at(rerun, capacity) <= poly_at(size, c)
            for need, least, size, rerun in zip(needs, fewest, (size_f, size_i), (rerun_f, rerun_i)))

    low = at_least - 1  # overflows: `capacity` did, and a checkpointed loop needs n <= c * c
    high = low + 1  # find a capacity that fits, then bisect down to low
    while not fits(high):
        low, high = high, 2 * high
        if high > HINT_LIMIT:
            return at_least, False
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high, True


def _growth(jobs, line: int) -> tuple[tuple | None, bool]:
    """(how the tape reporting at `line` grows with the capacity, or None; whether it is every
    reporting thread's: every job that can report has the same tape, else the needs, the largest
    of all threads, may be another job's)."""
    tables = {getattr(job, "tape_growth", ()) for job in jobs if job.can_fail}
    growth = next((dict(table)[line] for table in tables if line in dict(table)), None)
    return growth, len(tables) == 1


def _loop_owner(jobs, line: int) -> tuple[str, str]:
    """File and name of the function whose loop at `line` overflowed: a job's own, a callee's or
    an inner adjoint's (`overflow_owners`; a callee's line is a line of the callee's file)."""
    for job in jobs:
        for owned_line, filename, function in getattr(job, "overflow_owners", ()):
            if owned_line == line:
                return filename, function
    for job in jobs:
        if line in job.overflow_lines:
            return job.filename, job.function
    return "<unknown>", ""


# -- launches in flight: one status slot each -------------------------------------------------

@dataclass
class InFlight:
    """A launch whose status is not read yet: its own status slot and an event recorded after it.

    A slot is written only by its launch and reset only when it is handed out again, which is
    after this launch's status was read; so launches in flight never share one (the host
    cannot reset a slot a running kernel may still write).
    """

    status: np.ndarray  # host view of the slot (mapped memory: the kernel writes it over the bus)
    event: Any  # recorded after the launch: `query()` (ended?) and `synchronize()`, as numba-cuda's
    release: Callable[[], None]  # gives the slot back

    def done(self) -> bool:
        return bool(self.event.query())

    def read(self) -> np.ndarray:
        """Wait for the launch, copy its status and give the slot back."""
        self.event.synchronize()
        status = np.array(self.status)
        self.release()
        return status


class Pending:
    """A kernel's launches with `check="deferred"` whose status is not read yet, oldest first.

    `check()` reads those that have ended (all of them with `wait=True`) and raises the first
    error any of them reported, saying which launch it was and how many later ones failed too.
    A read status is gone, so an error is raised exactly once; statuses still in flight stay.
    """

    LIMIT = 1024  # launches in flight at most: beyond, a launch first waits for the oldest

    def __init__(self, kernel_name: str):
        self.kernel_name = kernel_name
        self._launches: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self.launched = 0  # deferred launches so far (numbers them in messages)

    def __len__(self) -> int:
        return len(self._launches)

    def add(self, flight: InFlight, report: Callable[[np.ndarray, str], Exception | None]) -> None:
        """`report(status, earlier)` is the launch's error for its status, or None."""
        with self._lock:
            self.launched += 1
            self._launches.append((self.launched, flight, report))
        if self.launched == 1:
            _watch_at_exit(self)

    def check(self, wait: bool = False, keep: int | None = None) -> None:
        """Read the ended launches' statuses (all with `wait`; with `keep`, wait until at most
        `keep` remain in flight) and raise the first error."""
        errors = []
        with self._lock:
            while self._launches:
                number, flight, report = self._launches[0]
                must = wait or (keep is not None and len(self._launches) > keep)
                if not (must or flight.done()):
                    break
                self._launches.popleft()
                error = report(flight.read(), f"launch {number} of kernel {self.kernel_name} "
                                              "(an earlier launch, check='deferred')")
                if error is not None:
                    errors.append((number, error))
        if errors:
            (_, first), later = errors[0], [n for n, _ in errors[1:]]
            if later:
                first.add_note(f"later launches of kernel {self.kernel_name} reported errors too: "
                               f"{', '.join(map(str, later))}")
            raise first


# Every Pending that ever deferred a launch, held strongly: a kernel dropped with launches unread
# still has them read (and any error warned) at exit.
_unchecked: set = set()


def _watch_at_exit(pending: Pending) -> None:
    if not _unchecked:  # registered after numba-cuda's handlers, so it runs before them
        atexit.unregister(_warn_unchecked)
        atexit.register(_warn_unchecked)
    _unchecked.add(pending)


def _warn_unchecked() -> None:
    """At exit, deferred statuses nobody read: an error among them is a warning, never lost."""
    from gpuad.errors import GpuadWarning

    for pending in list(_unchecked):
        try:
            pending.check(wait=True)
        except TapeOverflow as error:
            warnings.warn(f"at exit, unchecked: {error}", GpuadWarning, stacklevel=1)
        except Exception:  # noqa: BLE001 - the device may be gone at exit
            pass
