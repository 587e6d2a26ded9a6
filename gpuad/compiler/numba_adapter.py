"""Every use of numba / numba-cuda internals, behind one small surface.

A numba-cuda upgrade should touch this file only. Nothing here knows about
differentiation; it lowers Python functions to LLVM IR text, emits the
deferred-codegen marker, compiles IR to PTX and launches PTX on a device.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from gpuad.compiler.llvm_text import MARKER_SYMBOL

DEFAULT_CC = (9, 0)


def cuda_modules():
    """numba.cuda imported lazily: its import is slow and we want CLI start fast."""
    from gpuad.compiler.compile_lock import load_toolchain

    load_toolchain()
    from numba import cuda

    return cuda


@dataclass(frozen=True)
class _FixedDevice:
    """Stands in for the current device so compilation never asks the driver."""

    compute_capability: tuple[int, int]


@contextlib.contextmanager
def compute_capability(cc: tuple[int, int]):
    """Make numba-cuda device-function dispatchers compile for `cc`.

    `cuda.jit(device=True)` dispatchers ask the driver for the current
    device's compute capability, which fails on machines without a GPU; we
    compile for an explicit architecture instead.
    """
    import numba.cuda.dispatcher as dispatcher

    with patched(dispatcher, "get_current_device", lambda saved: lambda: _FixedDevice(cc)):
        yield


@contextlib.contextmanager
def patched(owner, name: str, replacement):
    """`owner.name` replaced by `replacement(original)` for the block, then restored. Under the
    compile lock: another thread's compile would save the patch as "the original" and put it
    back for good."""
    from gpuad.compiler.compile_lock import compiling

    with compiling():
        saved = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        try:
            setattr(owner, name, replacement(saved))
            yield
        finally:
            setattr(owner, name, saved)


@contextlib.contextmanager
def outside_enclosing_compilation():
    """Let a numba CPU compilation run inside a numba-cuda one.

    Deferred jobs are built while numba-cuda types the kernel; numba's
    thread-local flags stack then holds the CUDA flags, which a nested CPU
    compilation (the AD engine's type inference) would inherit and reject,
    and the active target is cuda.
    """
    from numba.core.target_extension import target_override
    from numba.core.targetconfig import _FlagsStack

    stack = _FlagsStack()._stack
    saved = stack[:]
    try:
        stack.clear()
        # numba-cuda compiles under target_override("cuda"); numba's CPU typing
        # context would otherwise load its registries for the wrong target.
        with target_override("cpu"):
            yield
    finally:
        stack[:] = saved


def cuda_jit_options(obj) -> dict | None:
    """The options of a numba-cuda `@cuda.jit` dispatcher (`device`, `link`...), None for anything else."""
    import sys

    dispatcher = sys.modules.get("numba.cuda.dispatcher")  # not imported: obj cannot be one
    if dispatcher is None or not isinstance(obj, dispatcher.CUDADispatcher):
        return None
    return dict(obj.targetoptions)


def device_function(pyfunc, lineinfo: bool = False):
    """A numba-cuda device-function dispatcher for a plain Python function (`lineinfo`: as in
    `lower_cuda`)."""
    return cuda_modules().jit(device=True, lineinfo=lineinfo)(pyfunc)


@contextlib.contextmanager
def memoised_locations():
    """numba-cuda's line info with each (line, function) location made once, not per instruction.

    numba-cuda's `DIBuilder._di_location` asks llvmlite for a DILocation at every instruction,
    and llvmlite keys it by printing its operands, the function's whole DISubprogram included
    (0.2 ms a call: 0.8 s of a 100-statement chain's lowering). llvmlite hands back the same
    node for the same operands anyway, so a builder keeps the ones it made (the IR is unchanged).
    """
    from numba.cuda import debuginfo

    def memoised(saved):
        def _di_location(self, line):
            made = self.__dict__.setdefault("_gpuad_locations", {})
            key = (line, len(self.subprograms))  # subprograms only grow: the last one is the scope
            if key not in made:
                made[key] = saved(self, line)
            return made[key]
        return _di_location

    with patched(debuginfo.DIBuilder, "_di_location", memoised):
        yield


@dataclass
class Lowered:
    """A function lowered by numba-cuda: its modules' IR text and its symbol."""

    symbol: str
    modules: list[str]  # the function's own module first, then linked libraries
    return_type: object
    arg_types: tuple


def lower_cuda(pyfunc, argtypes, *, kernel: bool, cc=DEFAULT_CC, fastmath=False,
               lineinfo: bool = False) -> Lowered:
    """Lower `pyfunc` for `argtypes` to LLVM IR with numba-cuda's own pipeline.

    `lineinfo`: numba-cuda's line info, a `!dbg` location on every instruction (a compile unit
    of kind DebugDirectivesOnly) that NVVM turns into PTX `.loc` lines; unlike `debug`, it
    changes neither the optimisation nor the error model (`gpuad.compiler.lineinfo`).
    """
    from numba.core import types
    from numba.cuda.compiler import compile_cuda, kernel_fixup

    with compute_capability(cc), linear_singly_assigned(), memoised_scalar_typing(), memoised_locations():
        cres = compile_cuda(
            pyfunc, types.void if kernel else None, tuple(argtypes), cc=cc, fastmath=fastmath,
            lineinfo=lineinfo,
        )
    library = cres.library
    symbol = cres.fndesc.llvm_func_name
    if kernel:
        kernel_fixup(library.get_function(symbol), debug=False)
    modules = [str(m) for m in _all_modules(library)]
    return Lowered(symbol, modules, cres.signature.return_type, tuple(cres.signature.args))


@contextlib.contextmanager
def linear_singly_assigned():
    """numba-cuda's lowering with numba core's linear search for singly assigned variables.

    numba-cuda 0.30's `Lower._find_singly_assigned_variable` rescans a variable's whole block
    for every variable defined there: quadratic in the block's length, and a derivative is one
    long block (about 2.8 of the 7 s compile of a 150-statement chain, on 2 cores). numba core's
    own `Lower` counts each block's assignments once; this is that count, for numba-cuda's
    class, while gpuad compiles (under the compile lock, as `compute_capability`).
    """
    from numba.cuda import lowering

    with patched(lowering.Lower, "_find_singly_assigned_variable", lambda _: _find_singly_assigned_variable):
        yield


_SCALAR_TYPING_MEMO: dict | None = None  # while a compile runs: (function, context, args) -> signature


@contextlib.contextmanager
def memoised_scalar_typing():
    """Type each scalar operator or `math` call once per argument types, not once per use.

    numba resolves `a * b` by trying every template registered for `operator.mul` (integers,
    floats, complex, arrays through numpy's ufunc loops, tuples...) at each use, once when
    typing and again when lowering; a derivative is thousands of such scalar operations on a
    handful of types. On numbers and booleans those templates answer from the types alone, so
    the answer is kept for the compile (the outermost block: nested job compiles share it).
    """
    global _SCALAR_TYPING_MEMO
    from numba.core.types import functions

    from gpuad.compiler.compile_lock import compiling

    with compiling():
        if _SCALAR_TYPING_MEMO is not None:  # a job compiled inside the kernel's compile
            yield
            return
        memo: dict = {}  # the closure's own: a call still running after the compile keeps it

        def memoised(original):
            def get_call_type(self, context, args, kws):
                if kws or not _scalar_call(self, args):
                    return original(self, context, args, kws)
                key = (self, context, args)
                sig = memo.get(key)
                if sig is None:
                    sig = memo[key] = original(self, context, args, kws)
                return sig
            return get_call_type

        _SCALAR_TYPING_MEMO = memo
        try:
            with patched(functions.BaseFunction, "get_call_type", memoised):
                yield
        finally:
            _SCALAR_TYPING_MEMO = None


def _scalar_call(function_type, args) -> bool:
    """A call of a Python operator or a `math` function on numbers and booleans only."""
    from numba.core import types

    module = getattr(function_type.typing_key, "__module__", None)
    return (module in ("_operator", "math") and bool(args)
            and all(isinstance(a, (types.Number, types.Boolean)) for a in args))


def singly_assigned_variables(func_ir, blocks) -> set[str]:
    """The variables assigned once, in one block, and used only there (numba's SROA-like
    lowering keeps them in registers instead of stack slots)."""
    from collections import Counter

    from numba.cuda.core import ir as cuda_ir
    from numba.cuda.core.analysis import compute_use_defs, must_use_alloca

    if func_ir.func_id.is_generator:
        return set()
    use_defs = compute_use_defs(func_ir.blocks)
    alloca_vars = must_use_alloca(func_ir.blocks)
    defined_in: dict[str, set] = {}
    for label, names in use_defs.defmap.items():
        for name in names:
            defined_in.setdefault(name, set()).add(label)
    used_before_defined = set().union(*use_defs.usemap.values())  # numba's usemap: live-in uses
    assignments = {label: Counter(stmt.target.name for stmt in block.find_insts(cuda_ir.assign_types))
                   for label, block in blocks.items()}
    return {name for name, labels in defined_in.items()
            if name not in alloca_vars and len(labels) == 1 and name not in used_before_defined
            and assignments[next(iter(labels))][name] == 1}


def _find_singly_assigned_variable(self):
    self._singly_assigned_vars = singly_assigned_variables(self.func_ir, self.blocks)
    self._blk_local_varmap = {}


def _all_modules(library, seen=None):
    """The library's modules followed by those of the libraries it links, depth first."""
    seen = set() if seen is None else seen
    if id(library) in seen:
        return []
    seen.add(id(library))
    modules = list(library.modules)
    for linked in getattr(library, "_linking_libraries", ()):
        modules.extend(_all_modules(linked, seen))
    return modules


def deferred_call_intrinsic(job_for_types, name: str):
    """An intrinsic that lowers one `autodiff_deferred` call site.

    `job_for_types(argtypes)` returns the `(job_id, return_type, job_argtypes)`
    of the deferred job for these argument types. The call lowers to
    `call i8* @gpuad.deferred_codegen(i64 ID)` followed by an indirect call
    through the returned pointer with the numba ABI of the job's function;
    the linker later replaces the marker by the function's address.
    """
    from numba.core import cgutils, types
    from numba.core.typing import signature
    from numba.cuda.extending import intrinsic

    def typer(typingctx, *args):
        job_id, return_type, job_argtypes = job_for_types(tuple(args))
        sig = signature(return_type, types.StarArgTuple.from_types(args))

        def codegen(context, builder, sig, llargs):
            values = cgutils.unpack_tuple(builder, llargs[0])
            return _emit_deferred_call(context, builder, job_id, return_type, job_argtypes, values)

        return sig, codegen

    typer.__name__ = name
    return intrinsic(typer)


def _emit_deferred_call(context, builder, job_id, return_type, argtypes, values):
    from numba.core import cgutils

    i8p = ir.IntType(8).as_pointer()
    marker_type = ir.FunctionType(i8p, [ir.IntType(64)])
    marker = cgutils.get_or_insert_function(builder.module, marker_type, MARKER_SYMBOL)
    address = builder.call(marker, [ir.Constant(ir.IntType(64), job_id)])
    # numba-cuda deprecates Context.call_conv for the function descriptor's; numba's cpu context
    # has only the former
    fndesc = getattr(context, "fndesc", None)
    call_conv = getattr(fndesc, "call_conv", None) or context.call_conv
    fn_type = call_conv.get_function_type(return_type, argtypes)
    callee = builder.bitcast(address, fn_type.as_pointer())
    # Same steps as numba's CallConv.call_function, which needs a Function
    # object where we have a pointer.
    result_type = fn_type.args[0].pointee
    result_slot = cgutils.alloca_once(builder, result_type)
    builder.store(cgutils.get_null_value(result_type), result_slot)
    packed = call_conv._get_arg_packer(argtypes).as_arguments(builder, values)
    builder.call(callee, [result_slot, *packed])
    return context.get_returned_value(builder, return_type, builder.load(result_slot))


def compile_ptx(ir_text: str, *, cc=DEFAULT_CC, fastmath=False, opt=3) -> str:
    """NVVM: one linked LLVM module → PTX. Needs no GPU, only the NVVM library."""
    from numba.cuda.cudadrv import nvvm

    arch = f"compute_{cc[0]}{cc[1]}"
    ptx = nvvm.compile_ir([ir_text], arch=arch, opt=opt, fastmath=fastmath)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


def nvvm_version() -> str | None:
    try:
        from numba.cuda.cudadrv import nvvm

        return ".".join(map(str, nvvm.NVVM().get_version()))
    except Exception:  # noqa: BLE001 - any failure means "not found"
        return None


@functools.cache
def gpu_available() -> bool:
    try:
        return bool(cuda_modules().is_available())
    except Exception:  # noqa: BLE001 - no driver, no GPU
        return False


def device_compute_capability() -> tuple[int, int]:
    """The current GPU's (major, minor); a LaunchError when there is no GPU or driver."""
    try:
        return tuple(cuda_modules().get_current_device().compute_capability)
    except Exception as exc:  # numba-cuda's CudaSupportError / driver errors
        if type(exc).__module__.split(".")[0] not in ("numba", "cuda"):
            raise
        from gpuad.errors import LaunchError

        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LaunchError(f"the cuda target needs a CUDA GPU and driver, and none is usable here ({first})",
                          hint="use the cpu target (gpuad.kernel(target='cpu') or GPUAD_TARGET=cpu), "
                          "or run on a machine with an NVIDIA GPU and its driver") from exc


class PtxKernel:
    """A kernel loaded from PTX that gpuad produced, launched with numba's ABI.

    A kernel that can report an error (a bounded tape) gets its own status
    slot per launch, in mapped host memory (`StatusSlots`): launches in flight
    never share one, so the host reads each launch's report whenever it waits
    for it. The others get one device array of zeros they never write, and are
    asynchronous, like numba-cuda's own launches.
    """

    def __init__(self, ptx: str, symbol: str, argtypes: tuple, status_size: int, checks_status: bool):
        from cuda.core import LaunchConfig, launch
        from numba.cuda.cudadrv import devices, driver
        from numba.cuda.dispatcher import _Kernel

        # The driver's own PTX JIT, not numba's `_Linker` (nvJitLink): for the same PTX the
        # latter kept an atomic add whose result is unused as ATOMG, where the driver makes the
        # fire-and-forget REDG; the kernel then waits for every atomic's reply before it exits
        # (stencil_scatter: 0.43 ms via the linker, 0.33 ms via the driver, on an H200).
        self._module = devices.get_context().create_module_ptx(ptx)
        self._function = self._module.get_function(symbol)
        self._cu_kernel = self._function.kernel
        self.argtypes = argtypes[:-1]  # the status array is packed here (`_status_args`)
        self.checks_status = checks_status
        self._stream = driver._to_core_stream(0)  # the default stream, as numba-cuda's launch config makes it
        self._prepare = _Kernel._prepare_args
        self._launch, self._config_type = launch, LaunchConfig
        self._configs: dict = {}
        if checks_status:
            self._slots = StatusSlots(status_size)
        else:
            self._zeros = cuda_modules().to_device(np.zeros(status_size, dtype=np.int64))
            self._zeros_args = _status_args(_device_pointer(self._zeros), status_size)

    def __call__(self, griddim, blockdim, args, on_status, defer: bool = False, shared_bytes: int = 0):
        """Launch; `on_status(host_status)` runs before results are copied back.

        With `defer`, a launch that copies nothing back returns its `InFlight` instead of
        waiting for it (the caller reads its status later); otherwise it returns None.
        """
        stream = self._stream
        writebacks, kernelargs = [], []
        for ty, value in zip(self.argtypes, args):
            self._prepare(_ArgPacker, ty, value, stream, writebacks, kernelargs)
        slot = self._slots.take() if self.checks_status else None
        kernelargs.extend(slot.args if slot is not None else self._zeros_args)
        config = self._configs.get((griddim, blockdim, shared_bytes))
        if config is None:
            config = self._configs.setdefault((griddim, blockdim, shared_bytes), self._config_type(
                grid=griddim, block=blockdim, shmem_size=shared_bytes))
        try:
            self._launch(stream, config, self._cu_kernel, *kernelargs)
        except BaseException:
            if slot is not None:
                self._slots.give_back(slot)
            raise
        if slot is None:
            for writeback in writebacks:
                writeback()
            return None
        from gpuad.targets.status import InFlight

        slot.event.record(0)  # numba-cuda's handle of the same (legacy default) stream
        flight = InFlight(slot.host, slot.event, lambda: self._slots.give_back(slot))
        if defer and not writebacks:
            return flight
        on_status(flight.read())  # waits for the kernel; may raise before anything is copied back
        for writeback in writebacks:
            writeback()
        return None


@dataclass
class _Slot:
    host: np.ndarray  # the slot's row, as the host sees it
    args: tuple  # the status argument as the kernel takes it
    event: object = None  # recorded behind the slot's launch (numba-cuda's Event: query, synchronize)


class StatusSlots:
    """Status arrays in mapped host memory, handed out one per launch and given back once read.

    Allocated in chunks of `CHUNK` (pinned allocations are slow and page-sized), each slot with
    an event to record behind its launch. A slot is zeroed when handed out: by then no kernel
    writes it (its last launch was read).
    """

    CHUNK = 64

    def __init__(self, size: int):
        import threading

        self.size = size
        self._free: list[_Slot] = []
        self._chunks: list = []  # keeps the mapped memory alive
        self._lock = threading.Lock()

    def take(self) -> _Slot:
        with self._lock:
            if not self._free:
                self._grow()
            slot = self._free.pop()
        slot.host[:] = 0
        return slot

    def give_back(self, slot: _Slot) -> None:
        with self._lock:
            self._free.append(slot)

    def _grow(self) -> None:
        chunk = cuda_modules().mapped_array((self.CHUNK, self.size), dtype=np.int64)
        self._chunks.append(chunk)
        # numpy's view, not the mapped array's own `.view(dtype)` (that one takes np.ndarray for
        # a dtype: an object array, which a device assignment cannot type)
        host, base = np.ndarray.view(chunk, np.ndarray), _device_pointer(chunk)
        row_bytes = self.size * np.dtype(np.int64).itemsize
        cuda = cuda_modules()
        self._free.extend(_Slot(host[k], _status_args(base + k * row_bytes, self.size),
                                cuda.event(timing=False)) for k in reversed(range(self.CHUNK)))


def _device_pointer(array) -> int:
    return int(array.__cuda_array_interface__["data"][0])


def _status_args(pointer: int, size: int) -> tuple:
    """An int64 C array of `size` at `pointer` in numba's kernel ABI (as `_Kernel._prepare_args`
    packs an array: meminfo, parent, size, itemsize, data, shape, strides)."""
    return (0, 0, size, 8, pointer, size, 8)


class _ArgPacker:
    """What `_Kernel._prepare_args` needs of its `self`: no extensions."""

    extensions = ()


def typeof(value):
    """numba's type of a host value (arrays of any kind, scalars)."""
    from gpuad.compiler.compile_lock import load_toolchain

    load_toolchain()  # often the first use of numba
    from numba.cuda.typing.typeof import Purpose
    from numba.cuda.typing.typeof import typeof as cuda_typeof

    return cuda_typeof(value, Purpose.argument)


def cpu_jit(pyfunc):
    import numba

    # The numpy error model gives inf/nan for x/0, as the GPU does, instead
    # of raising ZeroDivisionError.
    return numba.njit(cache=False, error_model="numpy")(pyfunc)


def memory_span(value) -> tuple[str, int, int] | None:
    """("host"|"device", first byte, one past the last byte) of an array argument, else None."""
    interfaces = (("device", getattr(value, "__cuda_array_interface__", None)),
                  ("host", getattr(value, "__array_interface__", None)))
    space, interface = next(((s, i) for s, i in interfaces if i is not None), (None, None))
    if interface is None:
        return None
    start = interface["data"][0]
    shape = interface["shape"]
    itemsize = np.dtype(interface["typestr"]).itemsize
    if 0 in shape:
        return None
    strides = interface.get("strides") or tuple(
        itemsize * math.prod(shape[k + 1:]) for k in range(len(shape)))
    low = start + sum(s * (n - 1) for s, n in zip(strides, shape) if s < 0)
    high = start + sum(s * (n - 1) for s, n in zip(strides, shape) if s > 0) + itemsize
    return space, low, high
