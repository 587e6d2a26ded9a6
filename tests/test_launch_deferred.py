"""`gpuad.kernel(check="deferred")` (issue 11, goal 5): the status of a launch that can overflow is
read at the kernel's next launch or `kernel.check()`, never lost; the default stays blocking.

Without a GPU, the device is simulated below the real `PtxKernel.__call__`: a kernel "launch"
writes an overflow report into the status slot it was given, and its completion event is done
only once waited for. The same behaviour on a real GPU: `test_deferred_on_gpu` (marked gpu).
"""
import numpy as np
import pytest
from corpus import LONG_LOOP_LINE, OVERFLOW_KERNEL, exec_source, long_loop

import gpuad
from gpuad import Active, Reverse, autodiff
from gpuad.compiler import numba_adapter
from gpuad.errors import TapeOverflow
from gpuad.targets import status as st


class FakeEvent:
    """numba-cuda's Event, as far as a launch uses it; `done` once waited for (or set)."""

    def __init__(self, log=None):
        self.done, self.log = False, log

    def record(self, stream):
        self.done = False
        self.log.append(self)

    def query(self):
        return self.done

    def synchronize(self):
        self.done = True


class HostSlots(numba_adapter.StatusSlots):
    """Status slots in plain host memory; a slot's "device pointer" is its index."""

    def __init__(self, size):
        super().__init__(size)
        self.rows, self.events = {}, []  # events in the order they were recorded

    def _grow(self):
        chunk = np.zeros((self.CHUNK, self.size), dtype=np.int64)
        self._chunks.append(chunk)
        for k in range(self.CHUNK):
            pointer = len(self.rows) + 1
            self.rows[pointer] = chunk[k]
            self._free.append(numba_adapter._Slot(chunk[k], numba_adapter._status_args(pointer, self.size),
                                                  FakeEvent(self.events)))


class Device:
    """What the simulated GPU does at each launch: overflow the tape or not, as told."""

    def __init__(self):
        self.overflow = []  # per launch, in order: whether it overflows
        self.slots_used = []
        self.loaded = []

    def load(self, ptx, symbol, argtypes, checks_status):
        kernel = numba_adapter.PtxKernel.__new__(numba_adapter.PtxKernel)
        kernel.argtypes, kernel.checks_status = argtypes[:-1], checks_status
        kernel._stream, kernel._configs = None, {}
        kernel._config_type = lambda **kw: kw
        kernel._prepare = lambda packer, ty, value, stream, writebacks, args: args.append(value)
        kernel._cu_kernel = None
        kernel._slots = HostSlots(st.SIZE)
        kernel._launch = lambda stream, config, fn, *args: self.run(kernel, args)
        self.loaded.append(kernel)
        return kernel

    def run(self, kernel, args):
        pointer = args[-3]  # the status array's data pointer (`_status_args`)
        status = kernel._slots.rows[pointer]
        assert not status.any(), "a status slot in use was handed out again"
        self.slots_used.append(pointer)
        if self.overflow.pop(0):
            status[st.FLAG], status[st.LINE] = st.TAPE_OVERFLOW, LONG_LOOP_LINE
            status[st.NEEDED] = 20


class DeviceArray:
    """A stand-in for a device array: typed through the CUDA array interface, never copied."""

    def __init__(self, host):
        self.host = host
        self.shape, self.dtype, self.ndim = host.shape, host.dtype, host.ndim
        self.__cuda_array_interface__ = {"shape": host.shape, "typestr": host.dtype.str, "strides": None,
                                         "data": (host.ctypes.data, False), "version": 3}


@pytest.fixture
def device(monkeypatch):
    from gpuad.targets import cuda as cuda_target

    simulated = Device()
    monkeypatch.setattr(gpuad.Kernel, "_device_arch", lambda self: "sm_90")
    monkeypatch.setattr(cuda_target, "load_ptx", simulated.load)
    return simulated


def overflow_kernel(**options):
    namespace = exec_source(OVERFLOW_KERNEL, "<deferred overflow kernel>",
                            {"gpuad": gpuad, "autodiff": autodiff, "Reverse": Reverse,
                             "Active": Active, "long_loop": long_loop})
    return gpuad.kernel(namespace["overflow_kernel"], target="cuda", tape_capacity=8, **options)


def device_args(n=4):
    return (DeviceArray(np.linspace(0.1, 0.9, n)), DeviceArray(np.full(n, 3, dtype=np.int64)),
            DeviceArray(np.zeros(n)))


def test_the_default_raises_at_the_launch_itself(device):
    kernel = overflow_kernel()
    device.overflow = [True]
    with pytest.raises(TapeOverflow, match="needed 20 tape entries") as info:
        kernel.launch(4, *device_args())
    assert "earlier launch" not in str(info.value)
    assert all(event.done for event in device.loaded[0]._slots.events)  # it waited


def test_deferred_raises_at_the_next_launch_naming_the_earlier_one(device):
    kernel = overflow_kernel(check="deferred")
    device.overflow = [True, False]
    args = device_args()
    kernel.launch(4, *args)  # returns at once: the kernel is still "running"
    first = device.loaded[0]._slots.events[0]
    assert not first.done
    first.done = True  # it ends
    with pytest.raises(TapeOverflow, match="launch 1 of kernel overflow_kernel .an earlier launch") as info:
        kernel.launch(4, *args)
    assert info.value.location.line == LONG_LOOP_LINE
    assert "results in device arrays are not valid" in str(info.value)
    assert device.overflow == [False]  # the second launch did not run
    kernel.check()  # raised once: the status was consumed


def test_deferred_raises_at_check(device):
    kernel = overflow_kernel(check="deferred")
    device.overflow = [False, True, True]
    args = device_args()
    for _ in range(3):
        kernel.launch(4, *args)  # none ended yet: nothing is read, each has its own slot
    assert len(set(device.slots_used)) == 3
    with pytest.raises(TapeOverflow, match="launch 2 of kernel") as info:
        kernel.check()  # waits for all three
    assert "later launches of kernel overflow_kernel reported errors too: 3" in "".join(info.value.__notes__)
    kernel.check()
    device.overflow = [False]
    kernel.launch(4, *args)  # slots are reused once read
    assert device.slots_used[-1] in device.slots_used[:3]


def test_a_launch_still_running_is_not_read_at_the_next_launch(device):
    kernel = overflow_kernel(check="deferred")
    device.overflow = [True, False]
    args = device_args()
    kernel.launch(4, *args)
    kernel.launch(4, *args)  # the first has not ended: it stays pending, nothing waits
    assert len(kernel._pending) == 2
    with pytest.raises(TapeOverflow, match="launch 1 of kernel"):
        kernel.check()


def test_deferred_with_host_arrays_checks_before_copying_back(device, monkeypatch):
    """Results copied back to numpy arrays are never written from an overflowed launch."""
    kernel = overflow_kernel(check="deferred")
    device.overflow = [True]
    copied = []

    def prepare(packer, ty, value, stream, writebacks, args):
        args.append(value)
        if isinstance(value, np.ndarray):
            writebacks.append(lambda: copied.append(value))

    from gpuad.targets import cuda as cuda_target

    monkeypatch.setattr(cuda_target.cuda, "to_device", lambda a: DeviceArray(a))
    kernel._load = lambda compiled, load=kernel._load: setattr_prepare(load(compiled), prepare)
    xs, ns, out = np.linspace(0.1, 0.9, 4), np.full(4, 3, dtype=np.int64), np.zeros(4)
    with pytest.raises(TapeOverflow, match="no result was written back"):
        kernel.launch(4, xs, ns, out)
    assert copied == []


def setattr_prepare(ptx_kernel, prepare):
    ptx_kernel._prepare = prepare
    return ptx_kernel


def test_pending_reads_in_launch_order_and_keeps_what_is_running():
    released = []
    pending = st.Pending("k")
    statuses = [st.new_status() for _ in range(3)]
    statuses[2][st.FLAG] = 99
    events = [FakeEvent() for _ in range(3)]
    for k in range(3):
        pending.add(st.InFlight(statuses[k], events[k], lambda k=k: released.append(k)),
                    lambda status, earlier: st.status_error(status, "k", [], 8, earlier))
    events[0].done = events[2].done = True
    pending.check()  # the first ended; the second has not, so the third waits behind it
    assert released == [0] and len(pending) == 2
    with pytest.raises(TapeOverflow, match="launch 3 of kernel k .an earlier launch.*error code 99"):
        pending.check(keep=0)
    assert released == [0, 1, 2] and len(pending) == 0


@pytest.mark.gpu
def test_deferred_on_gpu():
    from numba import cuda

    kernel = overflow_kernel(check="deferred")
    n = 64
    xs, ns, out = (cuda.to_device(np.linspace(0.1, 0.9, n)), cuda.to_device(np.full(n, 3, dtype=np.int64)),
                   cuda.to_device(np.zeros(n)))
    kernel.launch(n, xs, ns, out)
    kernel.check()  # no overflow
    assert np.all(out.copy_to_host() != 0)
    ns[37:38].copy_to_device(np.array([20]))
    kernel.launch(n, xs, ns, out)  # does not wait
    with pytest.raises(TapeOverflow, match="launch 2 of kernel overflow_kernel .an earlier launch"):
        kernel.check()
    kernel.launch(n, xs, ns, out)
    cuda.synchronize()
    with pytest.raises(TapeOverflow, match="launch 3 of kernel"):
        kernel.launch(n, xs, ns, out)  # raised at the next launch
    kernel.check()
    blocking = overflow_kernel()
    with pytest.raises(TapeOverflow, match="needed"):
        blocking.launch(n, xs, ns, out)
    host_ns = np.full(n, 3, dtype=np.int64)
    host_ns[5] = 20
    host_out = np.zeros(n)
    with pytest.raises(TapeOverflow, match="no result was written back"):
        kernel.launch(n, np.linspace(0.1, 0.9, n), host_ns, host_out)  # copies back: checked at once
    assert not host_out.any()


def test_statuses_nobody_read_are_a_warning_at_exit():
    import gc

    pending = st.Pending("forgotten")
    status = st.new_status()
    status[st.FLAG] = 99
    pending.add(st.InFlight(status, FakeEvent(), lambda: None),
                lambda status, earlier: st.status_error(status, "forgotten", [], 8, earlier))
    del pending  # its kernel was dropped: the launch is still read at exit
    gc.collect()
    with pytest.warns(gpuad.errors.GpuadWarning, match="at exit, unchecked: launch 1 of kernel forgotten"):
        st._warn_unchecked()


@pytest.mark.gpu
def test_threads_launching_one_kernel_each_get_their_own_status_on_gpu():
    """Blocking launches from several host threads: each reads its own launch's report (one shared
    status array, reset by one thread while another's kernel ran, lost or misattributed them)."""
    import threading

    from numba import cuda

    kernel = overflow_kernel()
    n = 64
    xs = cuda.to_device(np.linspace(0.1, 0.9, n))
    good, bad = np.full(n, 3, dtype=np.int64), np.full(n, 3, dtype=np.int64)
    bad[11] = 20
    outcomes = {}

    def run(name, ns):
        d_ns, out = cuda.to_device(ns), cuda.device_array(n)
        results = []
        for _ in range(50):
            try:
                kernel.launch(n, xs, d_ns, out)
                results.append("ok")
            except TapeOverflow:
                results.append("overflow")
        outcomes[name] = results

    threads = [threading.Thread(target=run, args=(f"{kind}{k}", ns))
               for k in range(2) for kind, ns in (("good", good), ("bad", bad))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, results in outcomes.items():
        assert set(results) == ({"overflow"} if name.startswith("bad") else {"ok"}), (name, results)


def test_real_slots_are_numpy_views_of_mapped_memory(monkeypatch):
    """StatusSlots._grow over a mapped array (numba's MappedNDArray, an ndarray subclass): each
    slot's host row must be a plain numpy view. The mapped array's own `.view(np.ndarray)` took
    np.ndarray for a dtype (an object array), and zeroing a slot then failed on the GPU."""
    from types import SimpleNamespace

    from numba.cuda.cudadrv.devicearray import MappedNDArray

    def mapped_array(shape, dtype):
        return np.ndarray.view(np.full(shape, 7, dtype=dtype), type=MappedNDArray)

    fake_cuda = SimpleNamespace(mapped_array=mapped_array, event=lambda timing=False: FakeEvent([]))
    monkeypatch.setattr(numba_adapter, "cuda_modules", lambda: fake_cuda)
    monkeypatch.setattr(numba_adapter, "_device_pointer", lambda array: 4096)
    slots = numba_adapter.StatusSlots(8)
    first, second = slots.take(), slots.take()
    assert type(first.host) is np.ndarray and first.host.dtype == np.int64
    assert not first.host.any()  # zeroed when handed out
    first.host[2] = 5  # the kernel's write, seen through the chunk's memory
    assert np.ndarray.view(slots._chunks[0], np.ndarray)[0, 2] == 5  # row 0 is handed out first
    assert second.args[4] != first.args[4]  # different rows, different device pointers
