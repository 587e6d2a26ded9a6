"""The stage driver (gpuad/compiler/driver.py): every target and host `autodiff` go through it,
and one clock times its stages under the README's names."""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import pytest

import gpuad
from gpuad import Active, Reverse, autodiff
from gpuad.compiler import driver, stages
from gpuad.compiler.stages import STAGES, StageClock

ROOT = Path(__file__).resolve().parent.parent


class FakeTime:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_clock_counts_each_stage_once_when_stages_nest(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(stages.time, "perf_counter", fake)
    clock = StageClock()
    with clock("lower") as kernel:
        fake.now += 1.0
        with clock("differentiate"):
            fake.now += 2.0
            with clock("lower"):  # the job's own lowering, inside stage 2's job build
                fake.now += 4.0
        fake.now += 8.0
    with clock("emit"):
        fake.now += 16.0
    assert clock.seconds == {"interpret": 0.0, "differentiate": 2.0, "lower": 13.0, "link": 0.0,
                             "emit": 16.0}
    assert kernel.seconds == 15.0  # a span counts what ran inside it
    assert list(clock.seconds) == list(STAGES)


def test_the_clock_refuses_a_stage_the_readme_does_not_name():
    clock = StageClock()
    with pytest.raises(ValueError, match="interpret, differentiate, lower, link, emit"), clock("typing"):
        pass


def test_the_readme_table_names_the_stages_the_driver_times_and_modules_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d)\. (\w+) \| ([^|]+) \|", readme, re.M)
    assert [name for _, name, _ in rows][:5] == list(STAGES)
    for _, _, modules in rows:
        for path in re.findall(r"`([^`]+)`", modules):
            assert (ROOT / path).exists(), path


def fresh_function(c: float):
    """A function of its own, so that nothing of it is cached yet."""
    def scaled(x, y):
        return math.sin(x) * y * c

    return scaled


def test_a_cuda_compile_times_every_stage_and_the_stages_add_up_to_the_compile():
    f = fresh_function(1.5)

    def kernel_body(xs, ys, dxs):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            (dx, _dy), = autodiff(Reverse, f, Active(xs[i]), Active(ys[i]))
            dxs[i] = dx

    kernel = gpuad.kernel(kernel_body)
    xs = np.linspace(0.0, 1.0, 4)
    start = time.perf_counter()
    record = kernel.compile(xs, xs, np.zeros(4), target="cpu")
    wall = time.perf_counter() - start
    assert list(record.timings) == list(STAGES)
    assert all(seconds > 0 for seconds in record.timings.values()), record.timings
    # Own seconds per stage: nested stages are not counted twice, so they add up to the compile.
    assert 0.5 * wall < sum(record.timings.values()) <= wall


def test_cpu_kernels_and_host_autodiff_build_their_jobs_through_the_driver(monkeypatch):
    built = []
    build_job = driver.Pipeline.build_job

    def spy(self, job):
        built.append((self.target.name, job.site.function))
        return build_job(self, job)

    monkeypatch.setattr(driver.Pipeline, "build_job", spy)
    from gpuad import host

    monkeypatch.setattr(host, "_pipeline", None)  # an earlier host autodiff's registry: not spied
    f = fresh_function(2.5)
    (dx, dy), = autodiff(Reverse, f, Active(0.3), Active(2.0))
    assert built == [("cpu", f)]
    assert math.isclose(dx, math.cos(0.3) * 2.0 * 2.5) and math.isclose(dy, math.sin(0.3) * 2.5)

    g = fresh_function(3.5)

    def kernel_body(xs, dxs):
        i = gpuad.thread_index()
        if i < xs.shape[0]:
            (dx, _dy), = autodiff(Reverse, g, Active(xs[i]), Active(1.0))
            dxs[i] = dx

    xs, dxs = np.linspace(0.0, 1.0, 8), np.zeros(8)
    gpuad.kernel(kernel_body, target="cpu").launch(8, xs, dxs)
    assert built[1:] == [("cpu", g)]
    assert np.allclose(dxs, np.cos(xs) * 3.5)


def test_api_autodiff_runs_the_installed_host_implementation(monkeypatch):
    """`api.py` imports nothing of gpuad's: `gpuad.host` installs what autodiff does on the host."""
    from gpuad import api, host

    assert api._host_impl is host.host_autodiff
    seen = []
    monkeypatch.setattr(api, "_host_impl", lambda mode, f, args: seen.append((mode, f, args)) or "done")
    assert autodiff(Reverse, math.sin, Active(1.0)) == "done"
    assert seen[0][0] is Reverse and seen[0][1] is math.sin and isinstance(seen[0][2][0], Active)
