"""The progress of long compiles (issue 11, goal 6): after a second, the stage is shown, in a
terminal as a status line on stderr rewritten in place and cleared at the end, in a notebook as an
updating display; nothing at all when stderr is not a terminal (tests, CI, pipes)."""
import io
import os
import pty
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from gpuad.compiler import progress
from gpuad.compiler.stages import StageClock


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Recorder:
    """A sink that keeps what it was asked to show."""

    def __init__(self):
        self.events = []

    def show(self, text):
        self.events.append(("show", text))

    def clear(self):
        self.events.append(("clear",))


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def reporter(monkeypatch):
    """A reporter on a fake clock and sink, installed as the process's (no thread: `tick` by hand)."""
    clock, sink = FakeClock(), Recorder()
    made = progress.Reporter(sink, clock=clock)
    monkeypatch.setattr(made, "_start_thread", lambda: None)
    monkeypatch.setattr(progress, "REPORTER", made)
    return made, clock, sink


def test_a_long_compile_shows_its_stage_after_a_second_and_clears_at_the_end(reporter):
    made, clock, sink = reporter
    made.begin()
    with progress.subject("kernel grad (cpu)"):
        made.enter("differentiate")
        clock.now += 0.9
        assert made.tick() and sink.events == []  # under a second: nothing
        clock.now += 0.3
        made.tick()
        assert sink.events == [("show", "gpuad: compiling kernel grad (cpu) · differentiate · 1.2 s")]
        made.leave()
    clock.now += 1.0
    made.tick()  # in no stage: numba compiling; the subject last named
    assert sink.events[-1] == ("show", "gpuad: compiling kernel grad (cpu) · lower · 2.2 s")
    made.begin()  # nested blocks of the compile lock are one session
    made.end()
    assert sink.events[-1][0] == "show"
    made.end()
    assert sink.events[-1] == ("clear",)
    assert not made.tick()


def test_a_fast_compile_shows_nothing(reporter):
    made, clock, sink = reporter
    made.begin()
    made.enter("lower")
    clock.now += 0.99
    made.tick()
    made.leave()
    made.end()
    assert not made.tick()
    assert sink.events == []


def test_stage_clock_names_the_stage_it_is_in(reporter):
    made, _, _ = reporter
    clock = StageClock()
    with clock("lower"):
        with clock("differentiate"):
            assert made.stages == ["lower", "differentiate"]
        assert made.stages == ["lower"]
    assert made.stages == []


def test_the_terminal_line_is_rewritten_in_place_and_cleared():
    stream = FakeTerminal()
    line = progress.TerminalLine(stream)
    line.show("gpuad: compiling · lower · 1.0 s")
    line.show("gpuad: compiling · lower · 1.3 s")
    line.clear()
    assert stream.getvalue() == ("\rgpuad: compiling · lower · 1.0 s\033[K\rgpuad: compiling · lower · 1.3 s"
                                 "\033[K\r\033[K")


def test_where_progress_shows(monkeypatch):
    monkeypatch.delenv("GPUAD_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    assert isinstance(progress.default_sink(), progress.TerminalLine) and progress.could_show()
    monkeypatch.setenv("GPUAD_PROGRESS", "0")
    assert progress.default_sink() is None and not progress.could_show()
    monkeypatch.delenv("GPUAD_PROGRESS")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: a pipe, a log, pytest
    assert progress.default_sink() is None and not progress.could_show()


def test_the_notebook_display_is_updated_then_emptied(monkeypatch):
    from IPython import display as ipd

    shown = []

    class Handle:
        def update(self, bundle, raw):
            shown.append(("update", bundle))

    def display(bundle, raw, display_id):
        assert raw and display_id
        shown.append(("display", bundle))
        return Handle()

    monkeypatch.setattr(ipd, "display", display)
    line = progress.NotebookLine()
    line.show("gpuad: compiling <k> · emit · 1.0 s")
    line.show("gpuad: compiling <k> · emit · 1.2 s")
    line.clear()
    assert [kind for kind, _ in shown] == ["display", "update", "update"]
    assert shown[0][1]["text/plain"] == "gpuad: compiling <k> · emit · 1.0 s"
    assert "compiling &lt;k&gt; · emit · 1.0 s" in shown[0][1]["text/html"]
    assert "1.2 s" in shown[1][1]["text/html"]
    assert shown[2] == ("update", {"text/plain": "", "text/html": ""})


def test_the_thread_shows_a_long_session_and_nothing_of_a_short_one():
    sink = Recorder()
    made = progress.Reporter(sink, delay=0.2)
    made.begin()
    made.end()  # short: the thread wakes, finds it over
    time.sleep(0.3)
    assert sink.events == []
    made.begin()
    made.enter("emit")
    time.sleep(0.6)
    made.leave()
    made.end()
    assert sink.events and sink.events[0][0] == "show" and "emit" in sink.events[0][1]
    assert sink.events[-1] == ("clear",)


def test_nothing_is_printed_and_no_thread_starts_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    import numpy as np

    import gpuad

    made = progress.Reporter(delay=0.0)  # every session long enough to show
    monkeypatch.setattr(progress, "REPORTER", made)

    def cube(x):
        return x * x * x

    def grad(xs, dxs):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            (d,), = gpuad.autodiff(gpuad.Reverse, cube, gpuad.Active(xs[i]))
            dxs[i] = d

    xs, dxs = np.array([1.0, 2.0]), np.zeros(2)
    gpuad.kernel(grad, target="cpu").launch(2, xs, dxs)
    np.testing.assert_allclose(dxs, 3 * xs * xs)
    assert made.session > 0 and made._thread is None
    assert capsys.readouterr().err == ""


CHILD = textwrap.dedent("""
    from gpuad.compiler import progress
    progress.REPORTER.delay = 0.0
    import gpuad

    def square(x):
        return x * x

    print("result", gpuad.autodiff(gpuad.Reverse, square, gpuad.Active(3.0))[0][0])
    """)


def test_a_terminal_sees_the_status_line_cleared_before_the_result(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    controller, terminal = pty.openpty()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "GPUAD_PROGRESS": "1", "PYTHONPATH": root}
    child = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=terminal, env=env, cwd=root)
    os.close(terminal)
    chunks = []

    def read():  # while the child runs: a full terminal buffer would block it
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the child closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    out, _ = child.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(controller)
    text = b"".join(chunks).decode(errors="replace")
    assert child.returncode == 0, text
    assert out.decode().strip() == "result 6.0"
    assert "\rgpuad: compiling" in text and text.endswith("\r\033[K")
