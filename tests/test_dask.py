"""gpuad.dask (issue 15): a kernel run chunk by chunk over Dask arrays gives what one launch over
the whole array gives, gradients and shared shadows included; kernels of notebook-style cells
ship to worker processes and compile once per process; a failing chunk fails the whole compute."""
import linecache
import math

import dask
import dask.array as da
import numpy as np
import pytest
from numba import cuda

import gpuad
import gpuad.dask
from gpuad import Active, Const, Duplicated, Reverse, autodiff
from gpuad.errors import LaunchError, TapeOverflow

UNEQUAL = (7, 1, 13, 0, 19)  # 40 elements in chunks of unequal sizes, an empty one included


def bump(x):
    return math.sin(x) * x * x


@gpuad.kernel(target="cpu")
def grad_bump(xs, dxs):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        ((d,),) = autodiff(Reverse, bump, Active(xs[i]))
        dxs[i] = d


def horner(c, x, n):
    s = c[0]
    for k in range(1, n):
        s = s * x + c[k]
    return s


@gpuad.kernel(target="cpu")
def grad_horner(c, dc, xs, dxs, n):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (_, d, _), = autodiff(Reverse, horner, Duplicated(c, dc), Active(xs[i]), Const(n))
        dxs[i] = d


@gpuad.kernel(target="cpu")
def scaled_by_index(xs, out, offset):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        out[i] = xs[i] * (offset + i)


def test_an_elementwise_gradient_over_unequal_chunks_equals_one_launch():
    xs = np.linspace(-2.0, 3.0, sum(UNEQUAL))
    dxs_before = np.full_like(xs, 0.25)  # written in copies: the caller's arrays stay as they are
    expected = dxs_before.copy()
    grad_bump.launch(xs.shape[0], xs, expected)

    out = gpuad.dask.map_blocks(grad_bump, da.from_array(xs, chunks=(UNEQUAL,)),
                                da.from_array(dxs_before, chunks=(UNEQUAL,)))
    assert list(out) == ["dxs"]  # xs is only read
    assert out["dxs"].chunks == (UNEQUAL,)
    (dxs,) = dask.compute(out["dxs"], scheduler="threads")
    np.testing.assert_array_equal(dxs, expected)  # elementwise: no reordered sums, bit for bit
    np.testing.assert_allclose(dxs, np.sin(xs) * 2 * xs + np.cos(xs) * xs * xs, rtol=1e-13)
    assert (dxs_before == 0.25).all()


def test_a_shared_shadow_sums_across_chunks_to_the_single_launch_gradient():
    rng = np.random.default_rng(3)
    c = rng.normal(size=5)
    xs = rng.uniform(-1.5, 1.5, size=sum(UNEQUAL))
    dc_start = np.array([0.5, 0.0, -1.0, 0.0, 2.0])  # one launch adds into it; so must the chunks
    expected_dc, expected_dxs = dc_start.copy(), np.zeros_like(xs)
    grad_horner.launch(xs.shape[0], c, expected_dc, xs, expected_dxs, 5)

    out = gpuad.dask.map_blocks(grad_horner, c, dc_start, da.from_array(xs, chunks=(UNEQUAL,)),
                                da.zeros_like(xs, chunks=(UNEQUAL,)), 5,
                                reduce={"dc": "sum"}, outputs=["dc", "dxs"], split_every=2)
    dc, dxs = dask.compute(out["dc"], out["dxs"], scheduler="threads")
    # d/dc_k of sum_i horner(c, x_i) = sum_i x_i^(4-k), and the kernel agrees with that
    np.testing.assert_allclose(expected_dc - dc_start, [np.sum(xs ** (4 - k)) for k in range(5)],
                               rtol=1e-12)
    np.testing.assert_allclose(dc, expected_dc, rtol=1e-13, atol=1e-13)  # the sum's order differs
    np.testing.assert_array_equal(dxs, expected_dxs)
    assert (dc_start == [0.5, 0.0, -1.0, 0.0, 2.0]).all()


def test_a_broadcast_array_the_kernel_writes_must_be_declared_reduced():
    xs = da.from_array(np.linspace(0.0, 1.0, 12), chunks=5)
    out = gpuad.dask.map_blocks(grad_horner, np.ones(3), np.zeros(3), xs, da.zeros(12, chunks=5), 3)
    assert "dc" not in out
    with pytest.raises(LaunchError, match=r"wrote the broadcast argument 'dc'.*\n.*reduce=\{'dc': 'sum'\}"):
        dask.compute(out["dxs"], scheduler="sync")


def test_a_broadcast_array_changed_after_map_blocks_does_not_reach_the_graph():
    """Broadcast arrays are read when map_blocks is called (a content token then keys their device
    copies on GPU workers: a change after it must not make the graph differ from that token)."""
    xs = np.linspace(-1.0, 1.0, 12)
    c = np.array([0.5, -1.0, 2.0])
    expected_dc, expected_dxs = np.zeros(3), np.zeros(12)
    grad_horner.launch(12, c, expected_dc, xs, expected_dxs, 3)
    out = gpuad.dask.map_blocks(grad_horner, c, np.zeros(3), da.from_array(xs, chunks=5),
                                da.zeros(12, chunks=5), 3, reduce={"dc": "sum"})
    c[:] = [9.0, 9.0, 9.0]  # an optimiser's in-place step, taken before the graph ran
    dc, dxs = dask.compute(out["dc"], out["dxs"], scheduler="sync")
    np.testing.assert_array_equal(dxs, expected_dxs)
    np.testing.assert_allclose(dc, expected_dc, rtol=1e-13, atol=1e-13)  # dc[1] = sum(xs) = 0 here


def test_broadcast_snapshots_are_tokened_by_content_and_shadows_are_left_alone():
    from gpuad.dask import _broadcast_snapshots

    c, dc, guarded = np.arange(3.0), np.zeros(3), np.ones(2)
    args, tokens = _broadcast_snapshots([c, dc, guarded, 4], ("value", "reduce", "guard", "value"))
    assert args[0] is not c and (args[0] == c).all() and args[2] is not guarded
    assert args[1] is dc and tokens[1] is None and tokens[3] is None  # a shadow: read at the graph's end
    assert _broadcast_snapshots([c.copy()], ("value",))[1][0] == tokens[0]  # same content, same copy
    c[1] = 7.0
    assert _broadcast_snapshots([c], ("value",))[1][0] != tokens[0]


def test_device_copies_are_made_once_per_content_and_forgotten_oldest_first():
    from gpuad.dask import DeviceCopies

    copies = DeviceCopies(entries=2, nbytes=64, to_device=np.array)  # np.array stands in for cupy.asarray
    a = np.arange(4.0)
    first = copies.get("a", a)
    assert copies.get("a", a) is first and copies.made == 1 and first is not a
    copies.get("b", np.zeros(2))
    copies.get("a", a)  # a is now the most recently used
    copies.get("c", np.zeros(2))  # over 2 entries: b goes
    assert copies.get("a", a) is first and copies.made == 3
    copies.get("b", np.zeros(2))
    assert copies.made == 4
    copies.get("big", np.zeros(8))  # 64 bytes alone: everything older goes
    assert list(copies._copies) == [("big", 0)]


def test_chunk_offset_gives_each_chunk_its_global_position():
    xs = np.linspace(1.0, 2.0, sum(UNEQUAL))
    out = gpuad.dask.map_blocks(scaled_by_index, da.from_array(xs, chunks=(UNEQUAL,)),
                                da.zeros_like(xs, chunks=(UNEQUAL,)), gpuad.dask.chunk_offset,
                                outputs="out")
    np.testing.assert_array_equal(out["out"].compute(scheduler="sync"), xs * np.arange(xs.shape[0]))


def potential(v):
    return 0.25 * v**4 - v * v


def local_energy(u, i):  # notebook 04's chain: a double well plus a spring to the right neighbour
    e = potential(u[i])
    if i + 1 < u.shape[0]:
        d = u[i + 1] - u[i]
        e += d * d
    return e


@gpuad.kernel(target="cpu")
def grad_chain(u, du, start, stop):
    i = start + gpuad.thread_index()
    if i < stop:
        autodiff(Reverse, local_energy, Duplicated(u, du), Const(i))


@gpuad.kernel(target="cpu")
def laplacian(u, out, start, stop):
    i = start + gpuad.thread_index()
    if i < stop and i > 0 and i + 1 < u.shape[0]:
        out[i] = u[i + 1] - 2.0 * u[i] + u[i - 1]


def test_a_stencil_gradient_with_halos_equals_one_launch_across_chunk_borders():
    size = sum(UNEQUAL)
    x = np.linspace(0.0, 1.0, size)
    u = np.sin(2 * np.pi * x) + 0.3 * np.cos(7 * x)
    expected = np.zeros(size)
    grad_chain.launch(size, u, expected, 0, size)
    springs = 2 * np.diff(u)  # dE/du_i = u_i^3 - 2u_i - 2(u_{i+1} - u_i) + 2(u_i - u_{i-1})
    np.testing.assert_allclose(expected, u**3 - 2 * u - np.append(springs, 0) + np.insert(springs, 0, 0),
                               rtol=1e-12, atol=1e-12)

    out = gpuad.dask.map_blocks(grad_chain, da.from_array(u, chunks=(UNEQUAL,)),
                                da.zeros(size, chunks=(UNEQUAL,)), gpuad.dask.owned_start,
                                gpuad.dask.owned_stop, depth=1, outputs="du")
    assert out["du"].chunks == (UNEQUAL,)
    # each border element's gradient adds its own term and its neighbour's: the order may differ
    np.testing.assert_allclose(out["du"].compute(scheduler="threads"), expected, rtol=1e-14, atol=1e-15)

    marked = np.full(size, 7.0)  # a plain output keeps what the kernel does not write, halos included
    expected = marked.copy()
    laplacian.launch(size, u, expected, 0, size)
    out = gpuad.dask.map_blocks(laplacian, da.from_array(u, chunks=(UNEQUAL,)),
                                da.from_array(marked, chunks=(UNEQUAL,)), gpuad.dask.owned_start,
                                gpuad.dask.owned_stop, depth=2)
    np.testing.assert_array_equal(out["out"].compute(scheduler="sync"), expected)


OVERFLOW_CELL = """\
import gpuad
from gpuad import autodiff, Reverse, Active

def long_loop(x, n):
    s = x
    for i in range(n):
        s = math.sin(s) * x + s * 0.5
    return s

@gpuad.kernel(target="cpu", tape_capacity=8)
def overflowing(xs, ns, out):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (dx, _), = autodiff(Reverse, long_loop, Active(xs[i]), ns[i])
        out[i] = dx
"""

ENERGY_CELL = """\
import gpuad
from gpuad import autodiff, Reverse, Active, Duplicated

def energy(x, w):
    return math.exp(-w * x * x) + math.log(1.0 + x * x)

@gpuad.kernel(target="cpu")
def grad_energy(xs, dxs, w, dw):
    i = gpuad.thread_index()
    if i < xs.shape[0]:
        (d, dwi), = autodiff(Reverse, energy, Active(xs[i]), Active(w[0]))
        dxs[i] = d
        dw[0] += dwi
"""


def run_cell(source: str, filename: str) -> dict:
    """What a notebook does with a cell: its source in linecache under a name that is no file,
    its functions in `__main__` (so cloudpickle ships them by value)."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": "__main__", "math": math}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - the test's own cell
    return namespace


def overflow_case(n_chunks=4):
    cell = run_cell(OVERFLOW_CELL, "<cell-overflow>")
    xs = np.linspace(0.1, 0.9, 64)
    ns = np.full(64, 3, dtype=np.int64)
    ns[50] = 20  # one thread of the last chunk loops past tape_capacity=8
    out = np.arange(64, dtype=np.float64) * -1.5
    chunks = 64 // n_chunks
    result = gpuad.dask.map_blocks(cell["overflowing"], da.from_array(xs, chunks=chunks),
                                   da.from_array(ns, chunks=chunks), da.from_array(out, chunks=chunks),
                                   outputs="out")
    return result["out"], [xs, ns, out]


def test_a_chunk_that_overflows_its_tape_fails_the_compute_with_tape_overflow():
    result, arrays = overflow_case()
    before = [a.tobytes() for a in arrays]
    with pytest.raises(TapeOverflow, match=r"\b8\b"):
        result.compute(scheduler="threads")
    assert [a.tobytes() for a in arrays] == before


# -- a 2-process cluster: shipping cells, compiling once per worker, errors across processes --

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def count_builds_and_launches():
    """Installed in each worker: counts cpu builds and chunk launches of that process."""
    import gpuad.targets.cpu as cpu
    from gpuad.kernel import Kernel

    counts = {"builds": 0, "launches": 0}
    build, launch = cpu.build_kernel, Kernel.launch

    def counting_build(*args, **kwargs):
        counts["builds"] += 1
        return build(*args, **kwargs)

    def counting_launch(self, *args, **kwargs):
        counts["launches"] += 1
        return launch(self, *args, **kwargs)

    cpu.build_kernel, Kernel.launch = counting_build, counting_launch
    gpuad._dask_test_counts = counts


def read_counts():
    import gpuad

    return dict(gpuad._dask_test_counts)


def test_a_notebook_cell_kernel_runs_on_worker_processes_and_compiles_once_per_worker(client):
    cell = run_cell(ENERGY_CELL, "<cell-energy>")
    kernel = cell["grad_energy"]
    xs = np.linspace(-1.0, 2.0, 90)
    w = np.array([0.7])
    expected_dxs, expected_dw = np.zeros_like(xs), np.array([0.0])
    kernel.launch(xs.shape[0], xs, expected_dxs, w, expected_dw)

    client.run(count_builds_and_launches)
    chunks = (10, 20, 5, 15, 25, 15)
    out = gpuad.dask.map_blocks(kernel, da.from_array(xs, chunks=(chunks,)),
                                da.zeros(90, chunks=(chunks,)), w, np.zeros(1),
                                reduce={"dw": "sum"}, outputs=["dxs", "dw"])
    dxs, dw = client.compute([out["dxs"], out["dw"]], sync=True)
    np.testing.assert_array_equal(dxs, expected_dxs)
    np.testing.assert_allclose(dw, expected_dw, rtol=1e-13)
    counts = list(client.run(read_counts).values())
    assert sum(c["launches"] for c in counts) == len(chunks)
    assert all(c["builds"] == (c["launches"] > 0) for c in counts), counts  # once per worker process


def test_a_tape_overflow_on_a_worker_reaches_the_client_as_tape_overflow(client):
    result, arrays = overflow_case()
    with pytest.raises(TapeOverflow, match=r"\b8\b") as info:
        client.compute(result, sync=True)
    assert "<cell-overflow>:" in str(info.value)  # the loop's cell, not cloudpickle's "<dynamic-code>"
    assert info.value.location.filename == "<cell-overflow>" and "tape_capacity" in info.value.hint


CHAIN_CELL = """\
import gpuad
from gpuad import autodiff, Reverse, Duplicated, Const

def chain_energy(u, i):
    e = 0.25 * u[i] ** 4 - u[i] * u[i]
    if i + 1 < u.shape[0]:
        d = u[i + 1] - u[i]
        e += d * d
    return e

@gpuad.kernel(target="cpu")
def grad_chain_energy(u, du, start, stop):
    i = start + gpuad.thread_index()
    if i < stop:
        autodiff(Reverse, chain_energy, Duplicated(u, du), Const(i))
"""


def received_keys(since: float, dask_worker) -> list:
    """The keys of the data this worker fetched from other workers since `since`."""
    from dask.utils import key_split

    return [key_split(key) for entry in dask_worker.transfer_incoming_log if entry["start"] >= since
            for key in entry["keys"]]


def test_halo_parts_are_taken_where_their_chunk_ran_and_only_halo_elements_move(client):
    """With 4 chunks on 2 workers, every `run[k, "left"]` of every chunk made one Dask task group
    that the scheduler placed without regard to its data ("root-ish"): whole launch results were
    copied between workers (CuPy chunks through host memory) to take a halo element of them."""
    import time

    from distributed import wait

    kernel = run_cell(CHAIN_CELL, "<cell-chain-placement>")["grad_chain_energy"]
    size, chunk = 400, 100
    u_host = np.sin(np.linspace(0.0, 6.0, size)) + 0.1
    expected = np.zeros(size)
    kernel.launch(size, u_host, expected, 0, size)
    workers = sorted(client.scheduler_info()["workers"])
    pieces = [da.from_delayed(client.scatter(u_host[j * chunk:(j + 1) * chunk], workers=[workers[j // 2]]),
                              shape=(chunk,), dtype=float) for j in range(4)]  # chunks 0, 1 | 2, 3
    u = client.persist(da.concatenate(pieces))
    wait(u)
    since = time.time()
    for _ in range(3):  # the old placement went wrong by chance; three gradients make it near-certain
        out = gpuad.dask.map_blocks(kernel, u, u.map_blocks(np.zeros_like), gpuad.dask.owned_start,
                                    gpuad.dask.owned_stop, depth=1, outputs="du")
        du = client.persist(out["du"])
        wait(du)
        np.testing.assert_allclose(du.compute(), expected, rtol=1e-14, atol=1e-15)
    moved = [kind for keys in client.run(received_keys, since).values() for kind in keys]
    assert "run_chunk" not in moved, moved



# -- depth is checked before anything runs (gpuad.halo) ---------------------------------------

def reach(i):
    return i + 2


def second_neighbour_energy(u, i):  # a spring to the element two to the right
    e = 0.5 * u[i] * u[i]
    if i + 2 < u.shape[0]:
        d = u[reach(i)] - u[i]
        e += d * d * d
    return e


@gpuad.kernel(target="cpu")
def grad_second(u, du, start, stop):
    i = start + gpuad.thread_index()
    if i < stop:
        autodiff(Reverse, second_neighbour_energy, Duplicated(u, du), Const(i))


def one_launch_and_chunks(kernel, u, *extra, depth, **options):
    """(one launch's written array, the chunked run's) for kernel(u, out, start, stop, *extra)."""
    size = u.shape[0]
    expected = np.zeros(size)
    kernel.launch(size, u, expected, 0, size, *(0 if e is gpuad.dask.chunk_offset else e for e in extra))
    out = gpuad.dask.map_blocks(kernel, da.from_array(u, chunks=(UNEQUAL,)),
                                da.zeros(size, chunks=(UNEQUAL,)), gpuad.dask.owned_start,
                                gpuad.dask.owned_stop, *extra, depth=depth,
                                outputs=kernel.pyfunc.__code__.co_varnames[1], **options)
    return expected, next(iter(out.values())).compute(scheduler="sync")


def line_of(fn, text: str) -> int:
    import inspect

    lines, first = inspect.getsourcelines(fn)
    return first + next(k for k, line in enumerate(lines) if text in line)


STENCIL_U = np.sin(np.linspace(0.0, 6.0, sum(UNEQUAL))) + 0.1


def test_too_small_a_depth_for_a_two_neighbour_stencil_is_refused_where_it_reads():
    # the old code ran this and returned a gradient missing the springs across chunk borders
    with pytest.raises(LaunchError, match=r"reaches 2 element.*depth=1(.|\n)*pass depth=2") as info:
        one_launch_and_chunks(grad_second, STENCIL_U, depth=1)
    assert info.value.location.filename == __file__
    assert info.value.location.line == line_of(second_neighbour_energy, "if i + 2 < u.shape[0]")
    expected, chunked = one_launch_and_chunks(grad_second, STENCIL_U, depth=2)
    np.testing.assert_allclose(chunked, expected, rtol=1e-14, atol=1e-15)
    assert np.count_nonzero(expected) == expected.shape[0]


def test_depth_zero_on_the_chain_stencil_asks_for_depth_one():
    with pytest.raises(LaunchError, match=r"depth=0(.|\n)*pass depth=1"):
        one_launch_and_chunks(grad_chain, STENCIL_U, depth=0)


@gpuad.kernel(target="cpu")
def pinned_left_end(u, out, start, stop):
    i = start + gpuad.thread_index()
    if i < stop:
        if i == 0:  # a boundary condition: it reads no neighbour, but its test needs one
            out[i] = 0.0
        else:
            out[i] = u[i] * 2.0


def test_a_bound_check_alone_needs_the_depth_that_keeps_it_true_to_one_launch():
    with pytest.raises(LaunchError, match=r"`i == 0`.*depth=0(.|\n)*pass depth=1"):
        one_launch_and_chunks(pinned_left_end, STENCIL_U, depth=0)
    expected, chunked = one_launch_and_chunks(pinned_left_end, STENCIL_U, depth=1)
    np.testing.assert_array_equal(chunked, expected)
    assert expected[0] == 0.0 and (expected[1:] != 0).all()


@gpuad.kernel(target="cpu")
def halo_without_owned_start(u, out, start, stop):
    i = gpuad.thread_index()
    if i > 0 and i + 1 < u.shape[0]:
        out[i] = u[i + 1] - u[i - 1]


@gpuad.kernel(target="cpu")
def uses_local_index(u, out, start, stop):
    i = start + gpuad.thread_index()
    if i < stop:
        out[i] = u[i] * i


@gpuad.kernel(target="cpu")
def uses_chunk_length(u, out, start, stop):
    i = start + gpuad.thread_index()
    if i < stop:
        scale = 1.0 / u.shape[0]  # the chunk's length, not the array's
        out[i] = u[i] * scale


@gpuad.kernel(target="cpu")
def broadcast_by_local_index(u, out, start, stop, w):
    i = start + gpuad.thread_index()
    if i < stop:
        out[i] = u[i] * w[i]


@gpuad.kernel(target="cpu")
def assigns_a_neighbour(u, out, start, stop):
    i = start + gpuad.thread_index()
    if i + 1 < u.shape[0]:
        out[i + 1] = u[i]


@gpuad.kernel(target="cpu")
def reads_the_first_element(u, out, start, stop):
    i = start + gpuad.thread_index()
    if i < stop:
        out[i] = u[i] - u[0]


@gpuad.kernel(target="cpu")
def guards_a_neighbour_with_owned_stop(u, out, start, stop):
    i = start + gpuad.thread_index()
    if i + 1 < stop:
        out[i] = u[i + 1]


@gpuad.kernel(target="cpu")
def wraps_around(u, out, start, stop):
    i = start + gpuad.thread_index()
    if i < stop:
        out[i] = u[i] - u[i - 1]  # at i = 0, u[-1]: the array's last element in one launch


@gpuad.kernel(target="cpu")
def cuda_geometry(u, out, start, stop, w):
    i = start + gpuad.thread_index()
    j = cuda.threadIdx.x + cuda.blockIdx.x * cuda.blockDim.x
    if i < stop:
        out[i] = u[i] * w[j]


@pytest.mark.parametrize("kernel, extra, message", [
    (wraps_around, (), r"`u\[i - 1\]` can run at the array's first element(.|\n)*if i >= 1"),
    (cuda_geometry, (STENCIL_U,), r"`w\[j\]` indexes the array 'w'"),
    (halo_without_owned_start, (), r"thread_index\(\) alone(.|\n)*owned_start \+ gpuad.thread_index"),
    (uses_local_index, (), r"`out\[i\] = u\[i\] \* i` stores a value that differs(.|\n)*chunk_offset"),
    (uses_chunk_length, (), r"`1.0 / u.shape\[0\]` computes with the chunk-local index or length"),
    (broadcast_by_local_index, (STENCIL_U * 3,), r"`w\[i\]` indexes the array 'w', which every chunk gets "
                                                 r"whole(.|\n)*chunk_offset \+ i"),
    (assigns_a_neighbour, (), r"`out\[i \+ 1\]` assigns to another element(.|\n)*\+="),
    (reads_the_first_element, (), r"`u\[0\]` reads a fixed element"),
    (guards_a_neighbour_with_owned_stop, (),
     r"compares a neighbour's index with owned_stop(.|\n)*u.shape\[0\]"),
])
def test_what_would_make_a_chunk_differ_from_one_launch_is_refused(kernel, extra, message):
    with pytest.raises(LaunchError, match=message) as info:
        one_launch_and_chunks(kernel, STENCIL_U, *extra, depth=1)
    assert info.value.location.filename == __file__
    assert f"kernel {kernel.name}" in str(info.value)


def test_the_refused_kernels_do_differ_when_the_check_is_waived():
    # what the refusals above prevent: depth_verified=True runs them, and they are wrong
    for kernel, extra in [(uses_local_index, ()), (wraps_around, ()),
                          (broadcast_by_local_index, (STENCIL_U * 3,)), (reads_the_first_element, ()),
                          (guards_a_neighbour_with_owned_stop, ())]:
        expected, chunked = one_launch_and_chunks(kernel, STENCIL_U, *extra, depth=1, depth_verified=True)
        assert not np.allclose(chunked, expected), kernel.name


@gpuad.kernel(target="cpu")
def window_sum(u, out, start, stop):
    i = start + gpuad.thread_index()
    if i >= 2 and i + 2 < u.shape[0]:
        s = 0.0
        for k in range(-2, 3):
            s += u[i + k]
        out[i] = s


@gpuad.kernel(target="cpu")
def gather(u, out, start, stop, index, offset):
    i = start + gpuad.thread_index()
    if i < stop:
        out[i] = u[index[offset + i]]  # index: whole, read at the global position


def test_an_index_through_a_loop_is_refused_unless_verified_or_the_depth_covers_the_array():
    with pytest.raises(LaunchError, match=r"cannot tell how far `u\[i \+ k\]`(.|\n)*depth_verified=True"):
        one_launch_and_chunks(window_sum, STENCIL_U, depth=2)
    expected, chunked = one_launch_and_chunks(window_sum, STENCIL_U, depth=2, depth_verified=True)
    np.testing.assert_allclose(chunked, expected, rtol=1e-14)
    expected, chunked = one_launch_and_chunks(window_sum, STENCIL_U, depth=STENCIL_U.shape[0])
    np.testing.assert_allclose(chunked, expected, rtol=1e-14)


def test_a_data_dependent_gather_needs_the_whole_array():
    index = np.random.default_rng(5).permutation(STENCIL_U.shape[0])
    with pytest.raises(LaunchError, match=r"cannot tell how far `u\[index\[offset \+ i\]\]`"):
        one_launch_and_chunks(gather, STENCIL_U, index, gpuad.dask.chunk_offset, depth=3)
    expected, chunked = one_launch_and_chunks(gather, STENCIL_U, index, gpuad.dask.chunk_offset,
                                              depth=STENCIL_U.shape[0])
    np.testing.assert_array_equal(expected, STENCIL_U[index])
    np.testing.assert_array_equal(chunked, expected)


def test_a_thread_count_with_halos_is_refused():
    with pytest.raises(LaunchError, match=r"n=64 with depth=1(.|\n)*owned_stop"):
        one_launch_and_chunks(grad_chain, STENCIL_U, depth=1, n=64)
    size = STENCIL_U.shape[0]  # halos covering the array: every chunk would add every element's term
    with pytest.raises(LaunchError, match=rf"n={size} with depth={size}"):
        one_launch_and_chunks(grad_chain, STENCIL_U, depth=size, n=size)


@gpuad.kernel(target="cpu")
def chain_without_owned_start(u, du, start, stop):
    i = gpuad.thread_index()
    if i < u.shape[0]:
        autodiff(Reverse, local_energy, Duplicated(u, du), Const(i))


@gpuad.kernel(target="cpu")
def assigns_through_a_gather(u, out, start, stop, index):
    i = start + gpuad.thread_index()
    if i < stop:
        out[index[i]] = u[i]


def test_halos_covering_the_array_still_need_the_threads_own_element():
    size = STENCIL_U.shape[0]
    with pytest.raises(LaunchError, match=r"thread_index\(\) alone"):
        one_launch_and_chunks(chain_without_owned_start, STENCIL_U, depth=size)
    index = np.random.default_rng(2).permutation(size)
    with pytest.raises(LaunchError, match=r"`out\[index\[i\]\]` assigns to an element that may not be the "
                                          r"thread's own(.|\n)*\+="):
        one_launch_and_chunks(assigns_through_a_gather, STENCIL_U, index, depth=size)
    expected, chunked = one_launch_and_chunks(grad_chain, STENCIL_U, depth=size)
    np.testing.assert_allclose(chunked, expected, rtol=1e-14, atol=1e-15)


# -- CuPy chunks on the cuda target (no host copies) ------------------------------------------

@pytest.mark.gpu
def test_cupy_chunks_run_on_the_cuda_target_and_stay_on_the_device():
    cp = pytest.importorskip("cupy")
    size = sum(UNEQUAL)
    xs = np.linspace(-2.0, 3.0, size)
    bump_cuda = gpuad.kernel(grad_bump.pyfunc, target="cuda")
    expected = np.zeros(size)
    bump_cuda.launch(size, xs, expected)
    on_device = da.from_array(cp.asarray(xs), chunks=(UNEQUAL,), asarray=False, name="gpu-xs")
    out = gpuad.dask.map_blocks(bump_cuda, on_device, da.zeros_like(on_device), outputs="dxs")
    dxs = out["dxs"].compute(scheduler="sync")
    assert isinstance(dxs, cp.ndarray) and isinstance(out["dxs"]._meta, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(dxs), expected)

    u = cp.asarray(STENCIL_U)  # a stencil with halos, and a shared shadow, on the device
    chain_cuda = gpuad.kernel(grad_chain.pyfunc, target="cuda")
    expected = np.zeros(size)
    chain_cuda.launch(size, STENCIL_U, expected, 0, size)
    du = gpuad.dask.map_blocks(chain_cuda, da.from_array(u, chunks=(UNEQUAL,), asarray=False, name="gpu-u"),
                               da.zeros_like(on_device), gpuad.dask.owned_start, gpuad.dask.owned_stop,
                               depth=1, outputs="du")["du"].compute(scheduler="threads")
    assert isinstance(du, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(du), expected, rtol=1e-14, atol=1e-15)

    horner_cuda = gpuad.kernel(grad_horner.pyfunc, target="cuda")
    c, dc_start = np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.0, -3.0])
    expected_dc, expected_dxs = dc_start.copy(), np.zeros(size)
    horner_cuda.launch(size, c, expected_dc, xs, expected_dxs, 3)
    result = gpuad.dask.map_blocks(horner_cuda, cp.asarray(c), cp.asarray(dc_start), on_device,
                                   da.zeros_like(on_device), 3, reduce={"dc": "sum"}, outputs=["dc"])
    dc = result["dc"].compute(scheduler="threads")
    assert isinstance(dc, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(dc), expected_dc, rtol=1e-13)


@pytest.mark.gpu
def test_cupy_chunks_with_halos_launch_on_device_arrays_only_and_compile_once(monkeypatch):
    """Every launch of a stencil over CuPy chunks gets device arrays (a numpy array would be copied
    to the GPU and back), and chunks of three lengths (the ends have one halo) share one compile."""
    cp = pytest.importorskip("cupy")
    from gpuad.kernel import Kernel

    size = 4000
    u_host = np.sin(np.linspace(0.0, 6.0, size)) + 0.1
    expected = np.zeros(size)
    gpuad.kernel(grad_chain.pyfunc, target="cuda").launch(size, u_host, expected, 0, size)
    chain_cuda = gpuad.kernel(grad_chain.pyfunc, target="cuda")  # a fresh kernel: its own caches
    launched = []
    launch = Kernel.launch

    def recording_launch(self, n, *args, **kwargs):
        launched.append([type(a) for a in args if not np.isscalar(a)])
        return launch(self, n, *args, **kwargs)

    monkeypatch.setattr(Kernel, "launch", recording_launch)
    u = da.from_array(cp.asarray(u_host), chunks=1000, asarray=False, name="gpu-chain-u")
    du = gpuad.dask.map_blocks(chain_cuda, u, u.map_blocks(cp.zeros_like), gpuad.dask.owned_start,
                               gpuad.dask.owned_stop, depth=1, outputs="du")["du"].compute(scheduler="sync")
    assert isinstance(du, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(du), expected, rtol=1e-14, atol=1e-15)
    assert len(launched) == 4 and all(kinds == [cp.ndarray, cp.ndarray] for kinds in launched), launched
    assert len(chain_cuda._cuda) == 1  # one compiled variant for every chunk length


def host_copy_warnings(recorded) -> list:
    """numba-cuda's NumbaPerformanceWarning for a numpy array passed to a CUDA launch."""
    return [w for w in recorded if "Host array used in CUDA kernel" in str(w.message)]


@pytest.mark.gpu
def test_cupy_chunks_get_numpy_coefficients_and_shadows_on_the_device_once(monkeypatch, recwarn):
    """With CuPy chunks, numpy coefficients go to the device once per content (not per chunk),
    the shared shadow is made and summed on the device, and it comes back as numpy, as passed."""
    cp = pytest.importorskip("cupy")
    from gpuad.kernel import Kernel

    size = sum(UNEQUAL)
    xs = np.linspace(-1.5, 1.5, size)
    c, dc_start = np.array([0.5, -1.0, 2.0, 0.25]), np.array([1.0, 0.0, -3.0, 0.5])
    horner_cuda = gpuad.kernel(grad_horner.pyfunc, target="cuda")

    def one_launch(c):
        dc, dxs = dc_start.copy(), np.zeros(size)
        horner_cuda.launch(size, c, dc, xs, dxs, 4)
        return dc, dxs

    expected_dc, expected_dxs = one_launch(c)
    assert host_copy_warnings(recwarn), "numba-cuda warns of host copies here: the check below can fail"
    recwarn.clear()
    launched = []
    launch = Kernel.launch

    def recording_launch(self, n, *args, **kwargs):
        launched.append(args)
        return launch(self, n, *args, **kwargs)

    monkeypatch.setattr(Kernel, "launch", recording_launch)
    on_device = da.from_array(cp.asarray(xs), chunks=(UNEQUAL,), asarray=False, name="gpu-horner-xs")

    def chunked(c):
        zeros = on_device.map_blocks(cp.zeros_like)
        out = gpuad.dask.map_blocks(horner_cuda, c, dc_start, on_device, zeros, 4, reduce={"dc": "sum"},
                                    split_every=2)
        return dask.compute(out["dc"], out["dxs"], scheduler="threads")

    made = gpuad.dask._device_copies.made
    dc, dxs = chunked(c)
    assert not host_copy_warnings(recwarn), [str(w.message) for w in recwarn]
    assert type(dc) is np.ndarray and isinstance(dxs, cp.ndarray)  # numpy in, numpy out
    np.testing.assert_allclose(dc, expected_dc, rtol=1e-13, atol=1e-13)  # summed in another order
    np.testing.assert_allclose(cp.asnumpy(dxs), expected_dxs, rtol=1e-13)
    assert len(launched) == len(UNEQUAL)
    assert all(isinstance(a, cp.ndarray) for args in launched for a in args if not np.isscalar(a))
    # one host-to-device copy for every chunk (c may be written as far as gpuad.dask knows, so
    # each chunk launches on a device copy of that one copy, checked unchanged afterwards)
    assert gpuad.dask._device_copies.made == made + 1

    chunked(c.copy())  # the same content again: the same device copy
    assert gpuad.dask._device_copies.made == made + 1
    c[0] = -0.75  # changed in place between gradients: a new copy, not the stale one
    expected_dc, expected_dxs = one_launch(c)
    launched.clear()
    dc, dxs = chunked(c)
    assert len(launched) == len(UNEQUAL) and gpuad.dask._device_copies.made == made + 2
    np.testing.assert_allclose(dc, expected_dc, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(cp.asnumpy(dxs), expected_dxs, rtol=1e-13)


@pytest.mark.gpu
def test_cupy_chunks_still_refuse_a_written_broadcast_array_and_leave_its_device_copy_intact(recwarn):
    cp = pytest.importorskip("cupy")
    horner_cuda = gpuad.kernel(grad_horner.pyfunc, target="cuda")
    xs = da.from_array(cp.linspace(0.0, 1.0, 12), chunks=5, asarray=False, name="gpu-guard-xs")
    dc = np.zeros(3)
    out = gpuad.dask.map_blocks(horner_cuda, np.ones(3), dc, xs, xs.map_blocks(cp.zeros_like), 3)
    with pytest.raises(LaunchError, match=r"wrote the broadcast argument 'dc'.*\n.*reduce=\{'dc': 'sum'\}"):
        dask.compute(out["dxs"], scheduler="sync")
    assert not host_copy_warnings(recwarn)
    assert (dc == 0).all()
    token = gpuad.dask._broadcast_snapshots([dc], ("guard",))[1][0]
    cached = gpuad.dask._device_copies._copies[token, cp.cuda.runtime.getDevice()]
    assert (cached == 0).all()  # the chunk wrote a copy of it, not the copy later chunks start from


# -- benchmarks/dask_scaling.py's smoke mode ----------------------------------------------------

def test_the_scaling_benchmark_runs_on_cpu_workers_and_checks_its_gradients(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    pytest.importorskip("distributed")
    path = Path(__file__).parent.parent / "benchmarks" / "dask_scaling.py"
    spec = importlib.util.spec_from_file_location("dask_scaling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    smoke = ["--check-cpu", "--size", "300", "--chunks", "3", "--reps", "1", "--out", str(tmp_path)]
    assert module.main(smoke) == 0
    (written,) = tmp_path.glob("dask-scaling-cpu-*.json")
    report = json.loads(written.read_text())
    assert report["target"] == "cpu" and report["size"] == 300 and report["unit"] == "workers"
    assert [row["name"] for row in report["cases"]] == ["elementwise", "stencil"]
    for row in report["cases"]:
        assert row["correct"] and row["deviation"] < 1e-12
        assert set(row["ms"]) == {"1", "2"} and all(ms > 0 for ms in row["ms"].values())
        assert row["efficiency"] == pytest.approx(row["speedup"] / 2)
        # the breakdown: per-chunk kernel times measured on the workers, below the wall time
        assert all(len(row["chunk_kernel_ms"][k]) == 3 for k in ("1", "2"))
        assert all(0 < row["kernel_bound_ms"][k] < row["ms"][k] for k in ("1", "2"))
        assert len(row["kernel_ms_per_worker"]["2"]) == 2  # the data spans both workers
        assert row["bytes_between_workers"]["1"] == 0 and row["bytes_spilled"] == {"1": 0, "2": 0}
        assert "run_chunk" not in row["bytes_received_by_kind"]["2"]  # no launch result moves
    assert report["chunk_worker"] == {"1": [0, 0, 0], "2": [0, 0, 1]}
    assert "WRONG" not in capsys.readouterr().out
    assert report["cluster"] == "distributed.LocalCluster"

    # the GPU machine's fallback without dask-cuda: one pinned worker process per device
    assert module.main(smoke + ["--cluster", "pinned", "--gpus", "2"]) == 0
    report = json.loads(written.read_text())
    assert report["cluster"].startswith("distributed.SpecCluster") and set(report["cases"][0]["ms"]) == {"2"}
    assert all(row["correct"] for row in report["cases"])


# -- every bound check form, at every depth: refused, or equal to one launch ---------------------

GUARDED_CELL = """\
import gpuad
from gpuad import autodiff, Reverse, Duplicated, Const

def energy(u, i):
    e = 0.5 * u[i] * u[i]
    if {guard}:
        d = u[i + ({k})] - u[i]
        e += d * d * d
    return e

@gpuad.kernel(target="cpu")
def grad(u, du, start, stop):
    i = start + gpuad.thread_index()
    if i < stop:
        autodiff(Reverse, energy, Duplicated(u, du), Const(i))
"""


@pytest.mark.parametrize("k, guard, needed", [
    (2, "i + 2 < u.shape[0]", 2),
    (2, "i < u.shape[0] - 2", 2),
    (2, "i + 2 <= u.shape[0] - 1", 2),
    (2, "u.shape[0] > i + 2", 2),
    (1, "i + 2 < u.shape[0]", 2),  # a stricter check than the read: the check's own reach counts
    (-2, "i - 2 >= 0", 2),
    (-2, "i >= 2", 2),
    (-2, "i > 1", 2),
    (-1, "0 < i", 1),
    (-3, "i >= 3 and i + 1 < u.shape[0]", 3),
    (3, "i + 3 < u.shape[0] and not i == 0", 3),
])
def test_a_neighbour_behind_any_bound_check_is_refused_below_its_depth_and_exact_from_it(k, guard, needed):
    cell = run_cell(GUARDED_CELL.format(guard=guard, k=k), f"<cell-guard-{k}-{guard}>")
    for depth in range(needed + 2):
        if depth < needed:
            with pytest.raises(LaunchError, match=rf"pass depth={needed}\b"):
                one_launch_and_chunks(cell["grad"], STENCIL_U, depth=depth)
        else:
            expected, chunked = one_launch_and_chunks(cell["grad"], STENCIL_U, depth=depth)
            np.testing.assert_allclose(chunked, expected, rtol=1e-13, atol=1e-14)
