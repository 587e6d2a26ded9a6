"""Runtime robustness: interrupts never poison a cache, compiles from many
threads, numba-cuda device functions in kernels (issue 10, items 1, 2, 7)."""
import inspect
import math
import os
import random
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from numba import cuda

import gpuad
from gpuad import Active, Reverse, autodiff
from gpuad.errors import InterpretError

N = 16
XS = np.linspace(-1.5, 1.5, N)
YS = np.linspace(0.5, 2.0, N)


def make_f(c):
    """A fresh function per test, so no cache already holds its derivative."""

    def f(x, y):
        return math.sin(x) * y * c

    return f


def df_dx(x, y, c):
    return math.cos(x) * y * c


def make_grad_kernel(f, target):
    def grad(xs, ys, dxs):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            (dx, dy), = autodiff(Reverse, f, Active(xs[i]), Active(ys[i]))
            dxs[i] = dx

    return gpuad.kernel(target=target)(grad)


_constants = iter(range(1, 10**6))


def fresh():
    """A function and constant nothing has compiled yet."""
    c = 1.0 + next(_constants) / 1024
    return make_f(c), c


def host_gradient_is_right(f, c, x=0.3, y=1.7) -> bool:
    (dx, dy), = autodiff(Reverse, f, Active(x), Active(y))
    return (math.isclose(dx, df_dx(x, y, c), rel_tol=1e-12)
            and math.isclose(dy, math.sin(x) * c, rel_tol=1e-12))


def cpu_kernel_gradient_is_right(kernel, c) -> bool:
    dxs = np.zeros(N)
    kernel.launch(N, XS, YS, dxs)
    return np.allclose(dxs, np.cos(XS) * YS * c, rtol=1e-12)


# -- item 1: interrupts -------------------------------------------------------

# Where a Ctrl-C can land: each stage of the pipelines, by the name they call it through.
STAGES = {
    "interpret": ("gpuad.interpreter", "Interpreter.resolve"),
    "differentiate": ("gpuad.ad", "differentiate"),
    "typing": ("gpuad.ad.engine", "infer"),
    "numba typing": ("numba.core.typed_passes", "NopythonTypeInference.run_pass"),
    "job compile": ("numba", "njit"),  # the cpu target compiles jobs and kernels with it
}


def stage_owner(stage):
    import importlib

    module, path = STAGES[stage]
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    return owner, name


def interrupt_in_job_build(monkeypatch, stage):
    """Raise KeyboardInterrupt, as a Ctrl-C would, at the first call of `stage` made while
    a derivative job is built (the calls before compile the kernel itself)."""
    from gpuad.compiler.jobs import JobRegistry

    building, fired = [], []
    build = JobRegistry._build

    def tracked_build(self, job):
        building.append(job)
        try:
            return build(self, job)
        finally:
            building.pop()

    owner, name = stage_owner(stage)
    original = getattr(owner, name)

    def interrupted(*args, **kwargs):
        if building and not fired:
            fired.append(stage)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(JobRegistry, "_build", tracked_build)
    monkeypatch.setattr(owner, name, interrupted)
    return fired


@pytest.mark.parametrize("stage", list(STAGES))
def test_host_autodiff_interrupted_in_a_stage_then_the_same_call_succeeds(monkeypatch, stage):
    f, c = fresh()
    fired = interrupt_in_job_build(monkeypatch, stage)
    with pytest.raises(KeyboardInterrupt):
        autodiff(Reverse, f, Active(0.3), Active(1.7))
    assert fired
    assert host_gradient_is_right(f, c)
    monkeypatch.undo()
    assert host_gradient_is_right(f, c)


@pytest.mark.parametrize("stage", list(STAGES))
def test_cpu_kernel_interrupted_in_a_stage_of_its_first_launch_then_launches(monkeypatch, stage):
    f, c = fresh()
    kernel = make_grad_kernel(f, "cpu")
    fired = interrupt_in_job_build(monkeypatch, stage)
    with pytest.raises(KeyboardInterrupt):
        kernel.launch(N, XS, YS, np.zeros(N))
    assert fired
    assert cpu_kernel_gradient_is_right(kernel, c)


class _Interrupt(KeyboardInterrupt):
    pass


def interrupt_at_call(k: int, run) -> str | None:
    """Run `run()`, raising KeyboardInterrupt at the k-th Python function call it makes
    (gpuad's or numba's or the standard library's); returns where, or None if it made fewer."""
    count, where, previous = [0], [], sys.gettrace()

    def tracer(frame, event, arg):
        if event == "call":
            count[0] += 1
            if count[0] >= k and not in_finalizer_or_llvm_call(frame):
                sys.settrace(previous)
                where.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")
                raise _Interrupt
        return None

    sys.settrace(tracer)
    try:
        run()
    except BaseException:
        if not where:
            raise
    finally:
        sys.settrace(previous)
    return where[0] if where else None


def in_finalizer_or_llvm_call(frame) -> bool:
    """Points a trace hook must not raise at, each a limit of numba/llvmlite, not of gpuad:
    - an object finalizer (run whenever the garbage collector runs, so the k-th call lands there only
      sometimes; a real Ctrl-C there is printed and ignored by Python);
    - llvmlite's ffi call wrapper, where an exception between taking LLVM's lock and the C call can
      abort LLVM in the process;
    - a generator of numba's (its typing registries stream new entries through long-lived generators:
      an exception raised inside one ends it, and numba's typing stays broken for the process).
    A real Ctrl-C cannot land at these points during a compile: gpuad holds it until the compile's
    locked block ends (test_ctrl_c_during_a_compile_is_held_until_the_compile_is_done)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.endswith(
                os.path.join("llvmlite", "binding", "ffi.py")):
            return True
        if code.co_flags & inspect.CO_GENERATOR and f"{os.sep}numba{os.sep}" in code.co_filename:
            return True
        frame = frame.f_back
    return False


def count_calls(run) -> int:
    count, previous = [0], sys.gettrace()

    def tracer(frame, event, arg):
        count[0] += event == "call"

    sys.settrace(tracer)
    try:
        run()
    finally:
        sys.settrace(previous)
    return count[0]


@pytest.mark.parametrize("what", ["host", "cpu kernel"])
def test_an_interrupt_at_any_call_of_a_first_compile_leaves_the_same_call_working(what):
    """Ctrl-C lands between any two calls: sample them over a whole first compile."""
    def attempt():
        f, c = fresh()
        if what == "host":
            return (lambda: autodiff(Reverse, f, Active(0.3), Active(1.7)),
                    lambda: host_gradient_is_right(f, c))
        kernel = make_grad_kernel(f, "cpu")
        return (lambda: kernel.launch(N, XS, YS, np.zeros(N)),
                lambda: cpu_kernel_gradient_is_right(kernel, c))

    autodiff(Reverse, make_f(0.5), Active(0.1), Active(0.2))  # numba's lazy imports done
    total = count_calls(attempt()[0])
    rng = random.Random(10)
    failures = []
    for k in sorted(rng.sample(range(1, total), 12)):
        first, again = attempt()
        where = interrupt_at_call(k, first)
        try:
            ok = again()
        except Exception as exc:  # noqa: BLE001 - collected for the report
            ok = f"{type(exc).__name__}: {str(exc)[:200]}"
        if ok is not True:
            failures.append((k, where, ok))
    assert not failures


def test_an_interrupt_while_llvmlite_releases_its_lock_leaves_other_threads_compiling(monkeypatch):
    """llvmlite runs Python callbacks before releasing its lock: a Ctrl-C there skipped the release."""
    from llvmlite.binding import ffi

    fired = []

    def interrupted_release():
        if not fired:
            fired.append(True)
            raise KeyboardInterrupt

    llvm_lock = ffi.lib._lock
    monkeypatch.setattr(llvm_lock, "_cblist", [*llvm_lock._cblist, (lambda: None, interrupted_release)])
    f, c = fresh()
    with pytest.raises(KeyboardInterrupt):
        autodiff(Reverse, f, Active(0.3), Active(1.7))
    assert fired
    monkeypatch.undo()
    g, c2 = fresh()
    result = []
    other = threading.Thread(target=lambda: result.append(host_gradient_is_right(g, c2)), daemon=True)
    other.start()
    other.join(60)
    assert result == [True]
    assert host_gradient_is_right(f, c)


FIRST_CALL_INTERRUPTED = textwrap.dedent("""
    import math, os, signal, sys, threading, time
    import gpuad
    from gpuad import Active, Reverse, autodiff

    def f(x):
        return math.sin(x) * x

    delay = float(sys.argv[1])
    threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    try:
        autodiff(Reverse, f, Active(0.5))
        time.sleep(delay + 1)  # finished before the signal: let it land here
    except KeyboardInterrupt:
        pass
    (d,), = autodiff(Reverse, f, Active(0.5))
    assert abs(d - (math.cos(0.5) * 0.5 + math.sin(0.5))) < 1e-12, d
    print("ok")
""")


@pytest.mark.parametrize("delay", [0.02, 0.1, 0.25])
def test_ctrl_c_during_the_first_compile_imports_leaves_gpuad_working(tmp_path, delay):
    """A real SIGINT while numba and numba-cuda are first imported (a fresh process)."""
    script = tmp_path / "first_call.py"
    script.write_text(FIRST_CALL_INTERRUPTED)
    done = subprocess.run([sys.executable, str(script), str(delay)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "GPUAD_TARGET": "cpu"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


COMPILES_INTERRUPTED = r"""
import math, os, signal, sys, threading, time
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from gpuad import Active, Reverse, autodiff

def fresh(k):  # a new function each time: its derivative compiles from scratch
    Path(sys.argv[1], f"interrupted_{k}.py").write_text(
        "import math\n"
        f"def f(x):\n    s = 0.0\n    for j in range({k + 2}):\n        s += math.sin(x * j) * x\n"
        "    return s\n")
    return __import__(f"interrupted_{k}").f

autodiff(Reverse, fresh(0), Active(0.1))  # numba's imports done


def interrupt_on_entering(name):  # a trace hook: a real SIGINT when a function called `name` starts
    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_name == name:
            sys.settrace(None)
            os.kill(os.getpid(), signal.SIGINT)
    return tracer


# gpuad's front end and engine, numba's typing and compile passes, llvmlite's LLVM calls
STAGES = ["prepare", "differentiate", "type_inference_stage", "run_pass", "finalize_object"]
for k, stage in enumerate(STAGES, start=1):
    f = fresh(k)
    start = time.perf_counter()
    sys.settrace(interrupt_on_entering(stage))
    try:
        autodiff(Reverse, f, Active(0.3))
        raised_in = "-"
    except KeyboardInterrupt as exc:
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        raised_in = f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_frame.f_code.co_name}"
    finally:
        sys.settrace(None)
    (d,), = autodiff(Reverse, f, Active(0.3))
    h = 1e-6
    right = abs(d - (f(0.3 + h) - f(0.3 - h)) / (2 * h)) < 1e-6
    print(stage, raised_in, right, flush=True)
"""


def test_ctrl_c_during_a_compile_is_held_until_the_compile_is_done(tmp_path):
    """A real SIGINT during a derivative's compile (sent as each stage starts) is raised where the
    compile's locked block ends, never inside numba or LLVM, where it can end one of numba's
    typing generators or abort LLVM and break them for the process; the call then succeeds."""
    script = tmp_path / "compiles.py"
    script.write_text(COMPILES_INTERRUPTED)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "GPUAD_TARGET": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    assert len(rows) == 5, done.stdout
    for _stage, raised_in, right in rows:  # raised where the compile lock's block ends, then right
        assert raised_in == "compile_lock.py:interrupts_deferred" and right == "True", done.stdout


# -- item 2: threads ------------------------------------------------------------

def run_in_threads(work, items, n_threads=8, deadline=240.0):
    """`[work(item) for item in items]` on n daemon threads; a deadlock fails the test."""
    import queue
    import time

    todo, results, errors = queue.Queue(), {}, []
    for k, item in enumerate(items):
        todo.put((k, item))

    def worker():
        while True:
            try:
                k, item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[k] = work(item)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{item!r}: {type(exc).__name__}: {str(exc)[:300]}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(n_threads)]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads still compiling: a deadlock"
    assert not errors
    return [results[k] for k in range(len(items))]


def test_eight_threads_compile_and_launch_cpu_kernels_and_host_autodiff():
    """Distinct and identical kernels and host derivatives, all started at once."""
    fs = [fresh() for _ in range(4)]
    shared = [make_grad_kernel(f, "cpu") for f, _ in fs]  # identical work for several threads
    start = threading.Barrier(8)

    def work(j):
        if j < 8:
            start.wait(60)
        f, c = fs[j % 4]
        kind = j % 3
        if kind == 0:
            return host_gradient_is_right(f, c, x=0.1 * j)
        if kind == 1:
            return cpu_kernel_gradient_is_right(shared[j % 4], c)
        g, c2 = fresh()  # a distinct kernel of its own
        return cpu_kernel_gradient_is_right(make_grad_kernel(g, "cpu"), c2)

    results = run_in_threads(work, range(24))
    assert results == [True] * 24
    # Nothing stays broken for a single thread afterwards.
    assert all(host_gradient_is_right(f, c) for f, c in fs)
    assert all(cpu_kernel_gradient_is_right(k, c) for k, (_, c) in zip(shared, fs))


def test_eight_threads_compile_for_cuda_without_a_gpu():
    import numba.cuda.dispatcher as dispatcher

    original = dispatcher.get_current_device
    fs = [fresh() for _ in range(6)]
    same = make_grad_kernel(fs[0][0], "cuda")
    kernels = [same, same, *(make_grad_kernel(f, "cuda") for f, _ in fs)]
    start = threading.Barrier(len(kernels))

    def compile_one(kernel):
        start.wait(60)
        return kernel.compile(XS, YS, np.zeros(N))

    records = run_in_threads(compile_one, kernels, n_threads=len(kernels))
    assert all(".entry" in r.ptx and r.jobs[0].function.endswith("f") for r in records)
    assert records[0].ptx == records[1].ptx
    assert dispatcher.get_current_device is original


# -- item 7: numba-cuda device functions ---------------------------------------

@cuda.jit(device=True)
def bump(x):
    return x * x + math.sin(x)


@cuda.jit(device=True)
def twice_bump(x):
    return 2.0 * bump(x)  # a device function calling another


def uses_device_function(x, y):
    return twice_bump(x) * y


def d_uses_device_function(x, y):
    return 2.0 * (2.0 * x + math.cos(x)) * y


@gpuad.kernel
def apply_bump(xs, out):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        out[i] = twice_bump(xs[i])


@gpuad.kernel
def grad_through_device_function(xs, ys, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (dx, dy), = autodiff(Reverse, uses_device_function, Active(xs[i]), Active(ys[i]))
        dxs[i] = dx


def test_kernel_calls_a_numba_device_function_on_both_targets():
    out = np.zeros(N)
    gpuad.kernel(target="cpu")(apply_bump.pyfunc).launch(N, XS, out)
    np.testing.assert_allclose(out, 2.0 * (XS * XS + np.sin(XS)), rtol=1e-14)
    record = apply_bump.compile(XS, out)
    assert ".entry" in record.ptx and "bump" in record.ptx


def test_differentiated_function_calls_a_numba_device_function_on_both_targets():
    dxs = np.zeros(N)
    gpuad.kernel(target="cpu")(grad_through_device_function.pyfunc).launch(N, XS, YS, dxs)
    np.testing.assert_allclose(dxs, [d_uses_device_function(x, y) for x, y in zip(XS, YS)], rtol=1e-12)
    (dx, dy), = autodiff(Reverse, uses_device_function, Active(0.4), Active(1.5))
    assert math.isclose(dx, d_uses_device_function(0.4, 1.5), rel_tol=1e-12)
    assert math.isclose(dy, 2.0 * (0.16 + math.sin(0.4)), rel_tol=1e-12)
    assert ".entry" in grad_through_device_function.compile(XS, YS, dxs).ptx


@cuda.jit
def a_cuda_kernel(x):
    x[0] = 1.0


def test_a_kernel_calling_a_numba_cuda_kernel_is_refused_at_its_line():
    @gpuad.kernel(target="cpu")
    def calls_a_kernel(xs):
        a_cuda_kernel(xs)

    with pytest.raises(InterpretError, match="a_cuda_kernel is a CUDA kernel") as caught:
        calls_a_kernel.launch(1, np.zeros(1))
    assert caught.value.location.line == calls_a_kernel.pyfunc.__code__.co_firstlineno + 2



def test_a_kernels_source_is_parsed_holding_the_compile_lock(monkeypatch):
    """A kernel's first launch reads its source (`gpuad.source.function_source`) outside any
    compilation. CPython 3.11's ast conversions share one recursion counter, so a parse there
    beside another thread's compilation failed that compilation ("AST constructor recursion
    depth mismatch", seen once in CI in the eight-thread test above): the parse holds the lock."""
    import ast

    from numba.core.compiler_lock import global_compiler_lock

    import gpuad.source

    held, original = [], ast.parse

    def parse(*args, **kwargs):
        held.append(global_compiler_lock._lock._is_owned())
        return original(*args, **kwargs)

    monkeypatch.setattr(gpuad.source.ast, "parse", parse)
    f, c = fresh()
    assert cpu_kernel_gradient_is_right(make_grad_kernel(f, "cpu"), c)
    assert held and all(held)
