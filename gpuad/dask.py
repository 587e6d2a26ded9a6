"""gpuad kernels over Dask arrays: one launch per chunk, results as Dask arrays (optional extra `dask`).

    import dask, dask.array as da, gpuad, gpuad.dask

    out = gpuad.dask.map_blocks(grad_kernel, x, dx, coeffs, dcoeffs, reduce={"dcoeffs": "sum"})
    dx, dcoeffs = dask.compute(out["dx"], out["dcoeffs"])

`map_blocks(kernel, *args, n=None, depth=0, reduce=None, outputs=None, split_every=None,
depth_verified=False)`:

- `args` are the kernel's arguments. **Dask arrays** are split into chunks along their first axis
  (all of them the same way: the first Dask argument's chunks; other axes are one chunk), and each
  chunk runs one `kernel.launch(n, ...)` in whichever process Dask runs it. Inside the kernel
  `thread_index()` is the index **within the chunk**. Every other argument (numpy arrays,
  scalars) is **broadcast**: each chunk sees the whole value, as it was when `map_blocks` was
  called (numpy arrays are copied then: an in-place change afterwards does not reach the graph).
- **CuPy chunks** on the cuda target launch on device arrays only (numba-cuda would copy a numpy
  argument to the GPU and back around every chunk's launch): a broadcast numpy array the kernel
  only reads is copied to the worker's GPU once per content (keyed by its Dask token; a bounded
  per-process cache, `DeviceCopies`) and shared by every chunk there, and each chunk's shared
  shadows (`reduce=`) are zeros on its GPU, summed there.
- `n`: threads per chunk. None (default) launches one thread per element the chunk owns; an int
  launches that many for every chunk; a callable gets the chunk's length and returns the count.
- Markers, passed as arguments, are replaced per chunk by an int64: `chunk_offset`, the global
  index of the chunk's local element 0 (global index = chunk_offset + local index);
  `owned_start` and `owned_stop`, the local indices of the chunk's first owned element and one
  past its last (0 and the chunk length without halos).
- **Halos** (`depth=d`, for stencils): each chunk also gets the d elements on either side of it
  from its neighbours, as `dask.array.map_overlap` would, with boundary "none": no halo, and no
  padding, beyond the array's ends, so bounds checks such as `i + 1 < u.shape[0]` see the
  array's true ends. Threads run over the owned elements only: write the kernel as
  `i = owned_start + thread_index(); if i < owned_stop: ...` (one launch over the whole array
  passes 0 and its length). What a chunk's launch adds to the halo elements of a written array
  (a stencil's shadow `du`) is added back to the chunks that own them, so the gradient of an
  energy equals the single-launch gradient, contributions across chunk borders included.
- **Depth is checked before anything runs** (`gpuad.halo`): the kernel's source and the functions
  it reaches are read, and each index of a chunked array must be the thread's element
  (`owned_start + thread_index()`) plus a constant k, which needs `depth >= |k|`; so does each
  bound check against the element (`i + 2 < u.shape[0]`, `i > 0`). Too small a depth is a
  LaunchError naming the file, line and array and saying `pass depth=K`. Refused too, as no
  depth makes them right: the chunk-local index or length used as a value (`x = i * h`,
  `1 / u.shape[0]`: use `chunk_offset + i`), a broadcast array indexed by the chunk-local
  index, a fixed element of a chunk (`u[0]`), a plain assignment to another element than the
  thread's own (halo writes are added to their owners: right for `+=` and shadows only), a
  neighbour compared with `owned_stop`, and `n` together with `depth`. What the analysis cannot
  follow (an index through a loop variable, a data-dependent gather `u[idx[i]]`) is refused
  unless `depth` covers the whole array (every chunk then holds all of it, local indices are
  global ones; the thread's element, `owned_stop` and plain assignments are still checked) or
  `depth_verified=True` says the user has checked the kernel: then nothing is checked, and a
  wrong depth gives a wrong result: the user's responsibility.
- **Outputs**: every Dask argument the kernel may write comes back as a Dask array chunked like
  the inputs. Chunks are written in copies, so the arrays passed in are never changed.
- **Shared shadows** (`reduce={"dc": "sum"}`): a broadcast array that every element adds into —
  the gradient of coefficients, parameters or a scalar loss. Each chunk adds into its own zeros,
  the chunks' arrays are summed with Dask's tree reduction (`split_every` as in `dask.array.sum`)
  and the array passed in is added: the single-launch result, up to the order of float additions.
  The result has the array type passed in (numpy in, numpy out; CuPy in, CuPy out), whatever the
  chunks are: with CuPy chunks a numpy shadow comes to the host once, at the end of the sum.
  A broadcast array that is not declared and that a chunk writes is refused (LaunchError):
  its writes would otherwise be lost (each chunk writes a copy, on the device with CuPy chunks).
- `outputs`: parameter names to return (default: every written Dask argument and every
  reduced one). The result is a dict from parameter name to a lazy Dask array; compute the ones
  you need together (`dask.compute(...)`) so each chunk launches once.

Shipping and compiling: the kernel travels to worker processes as its Python function and
options, pickled with cloudpickle (by value for functions of `__main__`, notebook cells and
`exec`'d code), together with the source lines of those of its functions whose file does not
exist (notebook cells): gpuad reads a function's source through `linecache`, and a worker process
has no cell history. Each process keeps one `Kernel` per shipped function, so a worker compiles a
kernel once, however many chunks it runs (the kernel's own compilation caches; the client process
reuses the very kernel passed in). Rules registered with `gpuad.rule` in the client only are not
shipped: define them in a module the workers import.

Errors: a chunk whose launch raises (TapeOverflow, OutOfBounds, ...) makes `compute` raise the
same gpuad error class on the client; nothing is returned and no array passed in is changed.
"""
from __future__ import annotations

import hashlib
import inspect
import linecache
import os
import threading
import types
import uuid
from typing import Callable

import numpy as np

from gpuad.ad.cache_key import reached_functions
from gpuad.errors import LaunchError
from gpuad.kernel import Kernel

__all__ = ["map_blocks", "chunk_offset", "owned_start", "owned_stop"]

REDUCTIONS = ("sum",)


class _Marker:
    """An argument `map_blocks` replaces, per chunk, by an int64 (see the module docstring)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"gpuad.dask.{self.name}"

    def __reduce__(self):
        return self.name  # one marker per process, compared by identity


chunk_offset = _Marker("chunk_offset")
owned_start = _Marker("owned_start")
owned_stop = _Marker("owned_stop")
MARKERS = {"offset": chunk_offset, "owned_start": owned_start, "owned_stop": owned_stop}


# -- shipping a kernel to worker processes --------------------------------------------------

_kernels: dict[str, Kernel] = {}  # per process: the Kernel of each shipped function
KEPT_KERNELS = 64  # a session re-defines kernels: the oldest are forgotten (recompiled if shipped again)
_kernels_lock = threading.Lock()


class ShippedKernel:
    """A Kernel as it travels: its function and options (cloudpickled) and its cells' source lines.

    Unpickling gives one Kernel per process and payload, so its compilation caches serve every
    chunk that process runs. The token is a digest of the payload: a function edited or
    re-defined with other globals ships as a new kernel rather than reusing a stale one.
    """

    def __init__(self, kernel: Kernel):
        import cloudpickle

        options = {"target": kernel.target, "arch": kernel.arch, "fastmath": kernel.fastmath,
                   "tape_capacity": kernel.tape_capacity}
        functions = reached_functions(kernel.pyfunc)  # the user's functions, shipped by value
        # cloudpickle renames the file of every function it ships by value to "<dynamic-code>";
        # gpuad finds a function's source, and names it in errors, by its file: ship the names.
        files = [(fn, fn.__code__.co_filename) for fn in functions]
        self.payload = cloudpickle.dumps((kernel.pyfunc, options, files))
        self.token = hashlib.sha256(self.payload).hexdigest()
        self.sources = cell_sources(functions)
        self.kernel = kernel
        with _kernels_lock:
            _kernels.setdefault(self.token, kernel)
            _forget_oldest()

    def __reduce__(self):
        return (_revive, (self.token, self.payload, self.sources))


def _forget_oldest() -> None:
    while len(_kernels) > KEPT_KERNELS:
        del _kernels[next(iter(_kernels))]


def _revive(token: str, payload: bytes, sources: dict) -> ShippedKernel:
    shipped = ShippedKernel.__new__(ShippedKernel)
    shipped.token, shipped.payload, shipped.sources = token, payload, sources
    with _kernels_lock:
        kernel = _kernels.get(token)
        if kernel is None:
            import cloudpickle

            register_sources(sources)
            pyfunc, options, files = cloudpickle.loads(payload)
            for fn, filename in files:
                fn.__code__ = _in_file(fn.__code__, filename)
            kernel = _kernels[token] = Kernel(pyfunc, **options)
            _forget_oldest()
    shipped.kernel = kernel
    return shipped


def _in_file(code: types.CodeType, filename: str) -> types.CodeType:
    """`code` (and the code nested in it) with its file named `filename`."""
    if code.co_filename == filename:
        return code
    consts = tuple(_in_file(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def cell_sources(functions: list[types.FunctionType]) -> dict[str, list[str]]:
    """Source lines, per file, of those `functions` whose file does not exist (notebook cells,
    `exec`'d strings): what a fresh process cannot read from disk."""
    sources: dict[str, list[str]] = {}
    for fn in functions:
        filename = fn.__code__.co_filename
        if filename in sources or os.path.exists(filename):
            continue
        lines = linecache.getlines(filename, fn.__globals__)
        if lines:
            sources[filename] = list(lines)
    return sources


def register_sources(sources: dict[str, list[str]]) -> None:
    """Make `inspect.getsource` find shipped cell sources (only where no such file exists)."""
    for filename, lines in sources.items():
        if not os.path.exists(filename):
            linecache.cache[filename] = (sum(map(len, lines)), None, list(lines), filename)


# -- one launch per chunk ------------------------------------------------------------------

def _run_chunk(shipped: ShippedKernel, n, place: tuple, roles: tuple, tokens: tuple, *args) -> dict:
    """Launch the kernel on one chunk (its halos included); returns {(k, part): array}.

    place: (global index of the chunk's local element 0, local index of its first owned element,
    local index past its last). roles[k]: "chunk" (a Dask argument's chunk, read only), "out"
    (a chunk the kernel may write), "reduce" (a shared shadow), "guard" (a broadcast array the
    kernel may write, which it must not), a marker's name, or "value". tokens[k]: the content
    token of a broadcast numpy array (None for other arguments), its key in the device cache.
    Parts: "owned" (the owned elements of an "out" chunk, or a shadow), "left" and "right" (what
    the launch added to the halos of an "out" chunk, which belong to the neighbours).
    """
    offset, lo, stop = place
    markers = {"offset": offset, "owned_start": lo, "owned_stop": stop}
    device = _launches_on_device(shipped.kernel, args, roles)
    originals, launch_args = [], []
    for value, role, token in zip(args, roles, tokens):
        if device and token is not None:
            value = _device_copies.get(token, value)  # read-only: shared by every chunk of the worker
        originals.append(value)
        if role in ("out", "guard"):
            value = value.copy()  # a chunk may be a view of the caller's array
        elif role == "reduce":
            value = _zeros_on_device(value) if device else np.zeros_like(value)  # this chunk's alone
        elif role in markers:
            value = np.int64(markers[role])
        launch_args.append(value)
    owned = stop - lo
    threads = owned if n is None else (n(owned) if callable(n) else n)
    shipped.kernel.launch(int(threads), *launch_args)
    _refuse_broadcast_writes(shipped.kernel, originals, launch_args, roles)
    parts = {}
    for k, (before, after, role) in enumerate(zip(args, launch_args, roles)):
        if role == "reduce":
            parts[k, "owned"] = after
        elif role == "out":
            parts[k, "owned"] = after[lo:stop]
            parts[k, "left"] = after[:lo] - before[:lo]  # exact where the halo starts at zero
            parts[k, "right"] = after[stop:] - before[stop:]
    return parts


def _on_device(value) -> bool:
    return hasattr(value, "__cuda_array_interface__")


def _launches_on_device(kernel: Kernel, args, roles) -> bool:
    """A cuda-target launch over device (CuPy) chunks: its other arrays belong on the device too,
    or numba-cuda copies each to the GPU and back around every chunk's launch."""
    from gpuad.targets import default_target

    if (kernel.target or default_target()) != "cuda":
        return False
    return any(_on_device(a) for a, role in zip(args, roles) if role in ("chunk", "out"))


def _zeros_on_device(value):
    import cupy

    return cupy.zeros(value.shape, dtype=value.dtype)


class DeviceCopies:
    """Per process: device copies of broadcast numpy arrays, by (content token, device).

    Every chunk a worker runs with the same coefficients reads one copy, made at the first; a
    later `map_blocks` with the same content reuses it. Bounded by count and bytes (least
    recently used forgotten first). Only read-only arguments are shared: a guarded one is
    copied on the device per chunk. `to_device` is cupy.asarray (a parameter for the tests).
    """

    def __init__(self, entries: int = 32, nbytes: int = 256 << 20, to_device=None):
        from collections import OrderedDict

        self.entries, self.nbytes, self._to_device = entries, nbytes, to_device
        self._copies: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.made = 0  # how many copies were made (host to device transfers)

    def get(self, token: str, value):
        key = (token, self._device())
        with self._lock:
            copy = self._copies.get(key)
            if copy is not None:
                self._copies.move_to_end(key)
                return copy
        made = self.to_device(value)
        with self._lock:
            copy = self._copies.setdefault(key, made)  # another thread may have made one meanwhile
            self.made += copy is made
            self._forget_oldest()
        return copy

    def to_device(self, value):
        if self._to_device is not None:
            return self._to_device(value)
        import cupy

        return cupy.asarray(value)

    def _device(self) -> int:
        if self._to_device is not None:
            return 0
        import cupy

        return cupy.cuda.runtime.getDevice()

    def _forget_oldest(self) -> None:
        while len(self._copies) > 1 and (len(self._copies) > self.entries or
                                         sum(c.nbytes for c in self._copies.values()) > self.nbytes):
            self._copies.popitem(last=False)


_device_copies = DeviceCopies()


def _add_halos(owned, start: int, pieces: list):
    """`owned` (global elements from `start`) plus the neighbours' halo additions that fall in it."""
    owned = owned.copy()
    for delta, at in pieces:
        lo, hi = max(start, at), min(start + len(owned), at + len(delta))
        if lo < hi:
            owned[lo - start:hi - start] += delta[lo - at:hi - at]
    return owned


def _refuse_broadcast_writes(kernel: Kernel, before, after, roles) -> None:
    names = list(inspect.signature(kernel.pyfunc).parameters)
    for k, role in enumerate(roles):
        if role == "guard" and not _same_bytes(before[k], after[k]):
            raise LaunchError(
                f"kernel {kernel.name} wrote the broadcast argument {names[k]!r} in a chunk; "
                "each chunk writes its own copy, so these writes would be lost",
                kernel._location(),
                hint=f"declare reduce={{{names[k]!r}: 'sum'}} if every element adds into it, "
                     "or pass it as a Dask array chunked like the others",
            )


def _same_bytes(a, b) -> bool:
    if hasattr(a, "__cuda_array_interface__"):  # compared on the device: no host copy
        import cupy

        bits = [cupy.ascontiguousarray(x).reshape(-1).view(cupy.uint8) for x in (a, b)]
        return bool(cupy.array_equal(*bits))
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()


# -- the Dask graph --------------------------------------------------------------------------

def map_blocks(kernel: Kernel, *args, n: int | Callable[[int], int] | None = None, depth: int = 0,
               reduce: dict[str, str] | None = None, outputs=None, split_every=None,
               depth_verified: bool = False) -> dict:
    """Run `kernel` once per chunk of its Dask-array arguments (see the module docstring).

    Returns {parameter name: lazy Dask array} for `outputs` (default: every Dask argument the
    kernel may write, and every name in `reduce`).
    """
    try:
        import dask
        import dask.array as da
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"gpuad.dask needs {exc.name}: pip install 'gpuad[dask]' "
                                  "(dask[array] and distributed)", name=exc.name) from exc

    from dask.array.utils import meta_from_array

    from gpuad.targets.launch import may_write

    if not isinstance(kernel, Kernel):
        raise LaunchError(f"gpuad.dask.map_blocks takes a gpuad.kernel, got {type(kernel).__name__}",
                          hint="decorate the function with @gpuad.kernel")
    names = list(inspect.signature(kernel.pyfunc).parameters)
    if len(args) != len(names):
        raise LaunchError(f"kernel {kernel.name} takes {len(names)} arguments, got {len(args)}",
                          kernel._location())
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise LaunchError(f"gpuad.dask.map_blocks: depth must be an int >= 0, got {depth!r}",
                          kernel._location(), hint="depth: how many neighbours each side a thread reads")
    reduce = dict(reduce or {})
    _check_reduce(kernel, names, args, reduce)
    chunked = [k for k, a in enumerate(args) if isinstance(a, da.Array)]
    if not chunked:
        raise LaunchError(f"gpuad.dask.map_blocks: no argument of kernel {kernel.name} is a Dask array",
                          kernel._location(), hint="pass the chunked data as dask.array arrays")
    args = _align_chunks(kernel, names, list(args), chunked)
    writes = may_write(kernel.pyfunc, [_like(a) for a in args])
    roles = tuple(_role(a, names[k], writes[k], reduce) for k, a in enumerate(args))
    outputs = _check_outputs(kernel, names, roles, outputs)
    if not depth_verified:
        _check_neighbours(kernel, args, roles, depth, n, whole=depth >= args[chunked[0]].shape[0])

    lengths = args[chunked[0]].chunks[0]
    bounds = _chunk_bounds(lengths, args[chunked[0]].shape[0], depth)
    args, tokens = _broadcast_snapshots(args, roles)
    # one graph key per broadcast array, not one per chunk; a CuPy array is named, not hashed (its
    # hash would copy it to the host)
    broadcast = {k: dask.delayed(a, name=f"gpuad-{names[k]}-{tokens[k] or uuid.uuid4().hex}")
                 for k, a in enumerate(args) if k not in chunked and _is_array(a)}
    inputs = {k: _extended_blocks(args[k], bounds) for k in chunked}
    shipped = ShippedKernel(kernel)
    runs = []
    for j, (left, start, stop, _) in enumerate(bounds):
        chunk_args = [inputs[k][j] if k in inputs else broadcast.get(k, a) for k, a in enumerate(args)]
        place = (left, start - left, stop - left)
        runs.append(dask.delayed(_run_chunk, pure=False)(shipped, n, place, roles, tokens, *chunk_args))
    arrays = {}
    for k, name in enumerate(names):
        if name not in outputs:
            continue
        value = args[k]
        if roles[k] == "out":
            parts = _halos_added(runs, k, bounds) if depth else [_part(run, k, "owned") for run in runs]
            arrays[name] = _chunked_output(f"{kernel.name}-{name}", parts, lengths, value)
        else:
            meta = meta_from_array(value, value.ndim)  # numpy or CuPy, as passed in
            # CuPy chunks add into shadows on their device, summed there by the tree reduction
            where = meta_from_array(args[chunked[0]]._meta if _on_device(args[chunked[0]]._meta) else value,
                                    value.ndim, dtype=value.dtype)
            parts = [da.from_delayed(_part(run, k, "owned"), shape=value.shape, dtype=value.dtype, meta=where)
                     for run in runs]
            total = da.stack(parts).sum(axis=0, split_every=split_every, dtype=value.dtype)
            # the single launch adds into the array passed in; the result has its array type
            arrays[name] = total.map_blocks(_added_to, value, dtype=value.dtype, meta=meta,
                                            name=f"gpuad-{kernel.name}-{name}-{uuid.uuid4().hex}")
    return {name: arrays[name] for name in outputs}


def _check_neighbours(kernel: Kernel, args: list, roles: tuple, depth: int, n, whole: bool) -> None:
    """Refuse what would make a chunk's launch differ from one launch: a neighbour farther than
    `depth`, a chunk-local index or length used as a value (gpuad.halo), threads past the owned
    elements when halos are there."""
    from gpuad.halo import check_depth

    if depth and n is not None:
        raise LaunchError(
            f"gpuad.dask.map_blocks: n={n!r} with depth={depth}: threads past a chunk's own elements "
            "would run on its halo too, and what they add there would count twice", kernel._location(),
            hint="leave n=None (one thread per owned element), or pass depth_verified=True if the kernel "
                 "guards every thread with i < gpuad.dask.owned_stop (your responsibility)")
    kinds = {"out": "chunk", "reduce": "whole", "guard": "whole"}
    halo_roles = [kinds.get(role, "whole" if role == "value" and _is_array(a) else role)
                  for a, role in zip(args, roles)]
    check_depth(kernel.pyfunc, args, halo_roles, depth, whole)


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or hasattr(value, "__cuda_array_interface__")


def _added_to(total, start):
    """`total + start` as the array type of `start`: numpy in, numpy out (the reduction's only
    device-to-host copy), CuPy in, CuPy out."""
    if _on_device(total) and not _on_device(start):
        total = total.get()
    elif _on_device(start) and not _on_device(total):
        import cupy

        total = cupy.asarray(total)
    return (total + start).astype(start.dtype)


def _broadcast_snapshots(args: list, roles: tuple) -> tuple[list, tuple]:
    """Broadcast numpy arrays as they are now (copies: a later change to the caller's array does
    not reach the graph) and a token of each copy's content, which keys its device copy on a GPU
    worker. Reduced shadows are left as they are: the graph reads them at its end only."""
    from dask.base import tokenize

    args, tokens = list(args), [None] * len(args)
    for k, (a, role) in enumerate(zip(args, roles)):
        if isinstance(a, np.ndarray) and role in ("value", "guard"):
            args[k] = a.copy(order="K")
            tokens[k] = tokenize(args[k])
    return args, tuple(tokens)


def _as_chunk(part):
    """A chunk as Dask holds it: CuPy arrays stay on their device, anything else is a numpy array."""
    return part if hasattr(part, "__cuda_array_interface__") else np.asarray(part)


def _chunk_bounds(lengths, size: int, depth: int) -> list[tuple[int, int, int, int]]:
    """Per chunk, global indices: (halo start, owned start, owned stop, halo stop); boundary
    "none": no halo beyond the array's ends."""
    stops = np.cumsum(lengths).astype(int)
    return [(max(0, stop - length - depth), stop - length, stop, min(size, stop + depth))
            for stop, length in zip(stops.tolist(), lengths)]


def _extended_blocks(array, bounds) -> list:
    """One Delayed per chunk: its elements with its halos (the chunk itself without depth)."""
    if all(left == start and stop == right for left, start, stop, right in bounds):
        return list(array.to_delayed().ravel())
    return [array[left:right].rechunk({0: -1}).to_delayed().ravel()[0] for left, _, _, right in bounds]


def _part(run, k: int, part: str):
    """One part of a chunk's launch (`_run_chunk`'s dict), as a task of a task group of its own.

    Dask's scheduler places the tasks of a group larger than twice the cluster's threads whose
    dependencies are fewer than 5 tasks ("root-ish") on any free worker, ignoring where their
    data is: `run[k, "left"]` for every chunk made one "getitem" group of ~3 tasks per chunk
    depending on the chunks' launches only, so with up to 4 chunks a launch's whole result
    (its owned chunk) was copied to another worker to take a part of it, and a CuPy chunk went
    through host memory. A group of one task is never root-ish: it runs where its launch ran.
    """
    import operator

    import dask

    key = (f"gpuad-part-{uuid.uuid4().hex}", 0)  # group: the name; prefix (dashboard): "gpuad-part"
    return dask.delayed(operator.getitem, pure=False)(run, (k, part), dask_key_name=key)


def _halos_added(runs: list, k: int, bounds) -> list:
    """Per chunk of argument k: its owned elements plus what the neighbours' launches added to them."""
    import dask

    parts = []
    for j, (_, start, stop, _) in enumerate(bounds):
        pieces = []
        for i, (left, own_start, own_stop, right) in enumerate(bounds):
            if i != j and left < stop and start < own_start:
                pieces.append((_part(runs[i], k, "left"), left))
            if i != j and own_stop < stop and start < right:
                pieces.append((_part(runs[i], k, "right"), own_stop))
        parts.append(dask.delayed(_add_halos, pure=False)(_part(runs[j], k, "owned"), start, pieces))
    return parts


def _chunked_output(label: str, parts: list, lengths: tuple, value):
    """Delayed arrays, one per chunk, as the chunks of one Dask array (empty chunks kept)."""
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    name = f"gpuad-{label}-{tokenize([part.key for part in parts])}"
    inner = (0,) * (value.ndim - 1)
    layer = {(name, j, *inner): (_as_chunk, part.key) for j, part in enumerate(parts)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=parts)
    chunks = (tuple(lengths),) + tuple((size,) for size in value.shape[1:])
    return da.Array(graph, name, chunks, dtype=value.dtype, meta=value._meta)


def _role(value, name: str, written: bool, reduce: dict) -> str:
    import dask.array as da

    if name in reduce:
        return "reduce"
    if isinstance(value, da.Array):
        return "out" if written else "chunk"
    for role, marker in MARKERS.items():
        if value is marker:
            return role
    if _is_array(value) and written:
        return "guard"
    return "value"


def _like(value):
    """A stand-in for `may_write`, which looks at dimensions only."""
    import dask.array as da

    if isinstance(value, da.Array):
        return np.empty((0,) * value.ndim, dtype=value.dtype)
    return np.int64(0) if any(value is marker for marker in MARKERS.values()) else value


def _check_reduce(kernel: Kernel, names, args, reduce: dict) -> None:
    import dask.array as da

    for name, how in reduce.items():
        if name not in names:
            raise LaunchError(f"reduce names {name!r}, which is not a parameter of kernel {kernel.name}",
                              kernel._location(), hint=f"its parameters: {', '.join(names)}")
        if how not in REDUCTIONS:
            raise LaunchError(f"reduce={{{name!r}: {how!r}}}: gpuad.dask combines shared shadows by "
                              f"{' or '.join(map(repr, REDUCTIONS))} only", kernel._location())
        value = args[names.index(name)]
        if isinstance(value, da.Array) or not _is_array(value):
            raise LaunchError(f"reduce={{{name!r}: ...}}: a shared shadow is a numpy (or CuPy) array every "
                              f"chunk adds into, got {type(value).__name__}", kernel._location(),
                              hint="pass it as a numpy array (np.zeros(shape)) that is not chunked")


def _check_outputs(kernel: Kernel, names, roles, outputs) -> list[str]:
    returned = [name for name, role in zip(names, roles) if role in ("out", "reduce")]
    if outputs is None:
        return returned
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    for name in outputs:
        if name not in returned:
            raise LaunchError(f"outputs names {name!r}, which kernel {kernel.name} does not return",
                              kernel._location(),
                              hint=f"returned: the Dask arguments it may write and the reduced "
                                   f"shadows ({', '.join(returned) or 'none here'})")
    return outputs


def _align_chunks(kernel: Kernel, names, args: list, chunked: list[int]) -> list:
    """Every Dask argument chunked like the first along axis 0 and in one chunk along the others."""
    first = args[chunked[0]]
    for k in chunked:
        a = args[k]
        if a.ndim == 0 or a.shape[0] != first.shape[0] or any(np.isnan(c) for c in a.chunks[0]):
            raise LaunchError(
                f"gpuad.dask.map_blocks: Dask argument {names[k]!r} of kernel {kernel.name} has shape "
                f"{a.shape}; every Dask argument needs the length {first.shape[0]} of {names[chunked[0]]!r} "
                "along its first axis, and known chunk sizes", kernel._location(),
                hint="slice or pad the arrays to one length; call .compute_chunk_sizes() on unknown chunks")
        wanted = (first.chunks[0],) + tuple((s,) for s in a.shape[1:])
        if a.chunks != wanted:
            args[k] = a.rechunk(wanted)
    return args
