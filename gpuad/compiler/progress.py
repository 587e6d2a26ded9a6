"""Progress of a long compile: after a second, a line naming the stage it is in.

Every compilation runs holding the compile lock (`compile_lock.compiling`), and every stage is
entered through a `StageClock` (`stages.py`): the lock's outermost block begins and ends a
*session* here, the clock says which stage the session is in. Nothing is shown for a session
shorter than `DELAY` seconds, so a fast compile (or a cached one) costs a counter and a clock
read; one background thread, started at the first compile if a session could be shown at all
(a notebook kernel, a terminal), wakes `DELAY` after a session began and updates the display
while it lasts.

Where it shows: in a Jupyter kernel, an updating display in the cell's output (cleared at the
end); in a terminal, a status line on stderr, rewritten in place and cleared at the end; when
stderr is not a terminal (tests, CI, pipes, logs) nothing at all. GPUAD_PROGRESS=0 turns it off.

This module imports nothing of gpuad's: the compile lock, below every layer, uses it.
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time

DELAY = 1.0  # seconds of compiling before anything is shown
INTERVAL = 0.25  # seconds between updates while shown
IDLE_STAGE = "lower"  # inside the compile lock but in no stage: numba compiling (stage 3)


class Reporter:
    """One process's compile sessions and the stage each is in; `tick()` draws (from the thread).

    `begin`/`end` and `enter`/`leave` are called by the thread holding the compile lock (one at
    a time); `tick` by the display thread, which takes `_lock` against `end`'s clearing.
    """

    def __init__(self, sink=None, delay: float = DELAY, clock=time.perf_counter):
        self.sink = sink  # None: chosen when first shown (`default_sink`)
        self.delay = delay
        self.clock = clock
        self.depth = 0
        self.started = 0.0
        self.session = 0  # counts sessions: the thread tells a new one from the one it waited for
        self.stages: list[str] = []
        self.subjects: list[str] = []
        self.last_subject = ""  # a kernel's numba compile at its first call follows its driver run
        self.shown = None  # the sink drawn on in this session, to clear at its end
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._checked = False

    # -- called by the compiling thread ----------------------------------------------------
    def begin(self) -> None:
        self.depth += 1
        if self.depth == 1:
            self.started = self.clock()
            self.session += 1
            if self._thread is None and not self._checked:
                self._checked = True  # where it could show is decided by the first compile
                self._start_thread()
            if self._thread is not None:
                self._wake.set()

    def end(self) -> None:
        self.depth -= 1
        # With the lock whenever the thread may be drawing: it checks `depth` and draws under it.
        if self.depth == 0 and (self._thread is not None or self.shown is not None):
            with self._lock:
                shown, self.shown = self.shown, None
                if shown is not None:
                    shown.clear()

    def enter(self, stage: str) -> None:
        self.stages.append(stage)

    def leave(self) -> None:
        if self.stages:
            self.stages.pop()

    def push_subject(self, subject: str) -> None:
        self.subjects.append(subject)
        self.last_subject = subject

    def pop_subject(self) -> None:
        if self.subjects:
            self.subjects.pop()

    # -- called by the display thread (or a test) ---------------------------------------------
    def line(self) -> str:
        """What is shown: what compiles, the stage, the seconds so far."""
        try:
            stage = self.stages[-1] if self.stages else IDLE_STAGE
            subject = self.subjects[-1] if self.subjects else self.last_subject
        except IndexError:  # popped meanwhile by the compiling thread
            stage, subject = IDLE_STAGE, ""
        what = f"compiling {subject}" if subject else "compiling"
        return f"gpuad: {what} · {stage} · {self.clock() - self.started:.1f} s"

    def tick(self) -> bool:
        """Draw the session's line if it has run `delay` seconds; whether one is running."""
        with self._lock:
            if self.depth == 0:
                return False
            if self.clock() - self.started < self.delay:
                return True
            if self.shown is None:
                self.shown = self.sink if self.sink is not None else default_sink()
                if self.shown is None:
                    return True
            self.shown.show(self.line())
            return True

    def _start_thread(self) -> None:
        if self.sink is not None or could_show():
            self._thread = threading.Thread(target=self._run, name="gpuad-progress", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            session = self.session
            # Sleep out the delay: a session that ends before it shows nothing.
            while self.depth and self.session == session and self.clock() - self.started < self.delay:
                time.sleep(min(INTERVAL, max(0.0, self.delay - (self.clock() - self.started))))
            while self.tick():
                time.sleep(INTERVAL)


# ---------------------------------------------------------------------------------- sinks

class TerminalLine:
    """A status line on a terminal stream, rewritten in place ('\\r', erase to end of line)."""

    def __init__(self, stream):
        self.stream = stream

    def show(self, text: str) -> None:
        width = shutil.get_terminal_size((80, 24)).columns - 1
        self._write("\r" + text[:width] + "\033[K")

    def clear(self) -> None:
        self._write("\r\033[K")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: progress is not worth an error
            pass


class NotebookLine:
    """An updating display in the running cell's output, emptied at the end."""

    def __init__(self):
        self.handle = None

    def show(self, text: str) -> None:
        from IPython.display import display

        bundle = {"text/plain": text,
                  "text/html": f'<div style="font-family: monospace; opacity: 0.8">⏳ {escape(text)}</div>'}
        if self.handle is None:
            self.handle = display(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)

    def clear(self) -> None:
        if self.handle is not None:
            self.handle.update({"text/plain": "", "text/html": ""}, raw=True)
            self.handle = None


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def enabled() -> bool:
    return os.environ.get("GPUAD_PROGRESS", "1") not in ("0", "", "off", "false")


def in_notebook_kernel() -> bool:
    """Running inside a Jupyter (IPython) kernel, not a terminal IPython."""
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def could_show() -> bool:
    return enabled() and (in_notebook_kernel() or stderr_is_terminal())


def default_sink():
    """Where a long compile shows progress now; None where nowhere."""
    if not enabled():
        return None
    if in_notebook_kernel():
        return NotebookLine()
    if stderr_is_terminal():
        return TerminalLine(sys.stderr)
    return None


REPORTER = Reporter()


def _after_fork_in_child() -> None:
    """A forked process (a dask worker) has no display thread, and the lock may be held by it."""
    REPORTER._lock = threading.Lock()
    REPORTER._wake = threading.Event()
    REPORTER._thread, REPORTER._checked = None, False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class subject:
    """`with progress.subject("kernel k"):` names what the enclosed stages compile."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __enter__(self):
        REPORTER.push_subject(self.text)

    def __exit__(self, *exc):
        REPORTER.pop_subject()
