"""gpuad kernels over Dask arrays: one launch per chunk, results as Dask arrays (optional extra `dask`).

    import dask, dask.array as da, gpuad, gpuad.dask

    out = gpuad.dask.map_blocks(grad_kernel, x, dx, coeffs, dcoeffs, reduce={"dcoeffs": "sum"})
    dx, dcoeffs = dask.compute(out["dx"], out["dcoeffs"])

`map_blocks(kernel, *args, n=None, reduce=None, outputs=None, split_every=None)`:

- `args` are the kernel's arguments. **Dask arrays** are split into chunks along their first axis
  (all of them the same way: the first Dask argument's chunks; other axes are one chunk), and each
  chunk runs one `kernel.launch(n, ...)` in whichever process Dask runs it. Inside the kernel
  `thread_index()` is the index **within the chunk**. Every other argument (numpy arrays,
  scalars) is **broadcast**: each chunk sees the whole value.
- `n`: threads per chunk. None (default) launches one thread per element of the chunk; an int
  launches that many for every chunk; a callable gets the chunk's length and returns the count.
- `chunk_offset`: pass this marker as an argument and each chunk's launch receives, in its
  place, the global index (an int64) of the chunk's first element — for kernels that need to
  know where their chunk lies in the whole array (`i + offset`).
- **Outputs**: every Dask argument the kernel may write comes back as a Dask array chunked like
  the inputs. Chunks are written in copies, so the arrays passed in are never changed.
- **Shared shadows** (`reduce={"dc": "sum"}`): a broadcast array that every element adds into —
  the gradient of coefficients, parameters or a scalar loss. Each chunk adds into its own zeros,
  the chunks' arrays are summed with Dask's tree reduction (`split_every` as in `dask.array.sum`)
  and the array passed in is added: the single-launch result, up to the order of float additions.
  A broadcast array that is not declared and that a chunk writes is refused (LaunchError):
  its writes would otherwise be lost.
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
from typing import Callable

import numpy as np

from gpuad.errors import LaunchError
from gpuad.kernel import Kernel

__all__ = ["map_blocks", "chunk_offset"]

REDUCTIONS = ("sum",)


class _ChunkOffset:
    """The marker `gpuad.dask.chunk_offset`: replaced per chunk by its first element's global index."""

    def __repr__(self) -> str:
        return "gpuad.dask.chunk_offset"

    def __reduce__(self):
        return "chunk_offset"  # one marker per process, compared by identity


chunk_offset = _ChunkOffset()


# -- shipping a kernel to worker processes --------------------------------------------------

_kernels: dict[str, Kernel] = {}  # per process: the Kernel of each shipped function
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
        functions = _reachable_functions(kernel.pyfunc)
        # cloudpickle renames the file of every function it ships by value to "<dynamic-code>";
        # gpuad finds a function's source, and names it in errors, by its file: ship the names.
        files = [(fn, fn.__code__.co_filename) for fn in functions]
        self.payload = cloudpickle.dumps((kernel.pyfunc, options, files))
        self.token = hashlib.sha256(self.payload).hexdigest()
        self.sources = cell_sources(functions)
        self.kernel = kernel
        with _kernels_lock:
            _kernels.setdefault(self.token, kernel)

    def __reduce__(self):
        return (_revive, (self.token, self.payload, self.sources))


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


def _reachable_functions(root: Callable) -> list[types.FunctionType]:
    """User functions reachable from `root` through the global names and closure cells its code
    uses (nested code objects included); library functions are not followed."""
    seen: dict[int, types.FunctionType] = {}
    stack = [root]
    while stack:
        fn = stack.pop()
        if not isinstance(fn, types.FunctionType) or id(fn) in seen or _is_library(fn):
            continue
        seen[id(fn)] = fn
        cells = [c.cell_contents for c in fn.__closure__ or () if _filled(c)]
        stack.extend(fn.__globals__[name] for name in _names(fn.__code__) if name in fn.__globals__)
        stack.extend(getattr(v, "pyfunc", v) for v in cells)  # a Kernel in a cell: its function
    return list(seen.values())


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _filled(cell) -> bool:
    try:
        return cell.cell_contents is not cell  # reading an empty cell raises
    except ValueError:
        return False


def _is_library(fn: types.FunctionType) -> bool:
    module = (fn.__module__ or "").split(".")[0]
    return module in ("gpuad", "numba", "numpy", "math", "dask", "distributed")


# -- one launch per chunk ------------------------------------------------------------------

def _run_chunk(shipped: ShippedKernel, n, offset: int, roles: tuple, *args) -> tuple:
    """Launch the kernel on one chunk; returns the written chunks, then the reduced shadows.

    roles[k]: "chunk" (a Dask argument's chunk, read only), "out" (a chunk the kernel may write),
    "reduce" (a shared shadow), "guard" (a broadcast array the kernel may write, which it must
    not), "offset", or "value".
    """
    length = next((len(a) for a, role in zip(args, roles) if role in ("chunk", "out")), 0)
    launch_args = []
    for value, role in zip(args, roles):
        if role == "out":
            value = value.copy()  # a chunk may be a view of the caller's array
        elif role == "reduce":
            value = np.zeros_like(value)  # this chunk's contributions alone
        elif role == "guard":
            value = value.copy()
        elif role == "offset":
            value = np.int64(offset)
        launch_args.append(value)
    threads = length if n is None else (n(length) if callable(n) else n)
    shipped.kernel.launch(int(threads), *launch_args)
    _refuse_broadcast_writes(shipped.kernel, args, launch_args, roles)
    return tuple(a for a, role in zip(launch_args, roles) if role in ("out", "reduce"))


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
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()


# -- the Dask graph --------------------------------------------------------------------------

def map_blocks(kernel: Kernel, *args, n: int | Callable[[int], int] | None = None,
               reduce: dict[str, str] | None = None, outputs=None, split_every=None) -> dict:
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

    from gpuad.targets.launch import may_write

    if not isinstance(kernel, Kernel):
        raise LaunchError(f"gpuad.dask.map_blocks takes a gpuad.kernel, got {type(kernel).__name__}",
                          hint="decorate the function with @gpuad.kernel")
    names = list(inspect.signature(kernel.pyfunc).parameters)
    if len(args) != len(names):
        raise LaunchError(f"kernel {kernel.name} takes {len(names)} arguments, got {len(args)}",
                          kernel._location())
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

    lengths = args[chunked[0]].chunks[0]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    blocks = {k: args[k].to_delayed().ravel() for k in chunked}
    broadcast = {k: dask.delayed(a) for k, a in enumerate(args)  # one graph key, not one per chunk
                 if k not in blocks and isinstance(a, np.ndarray)}
    shipped = ShippedKernel(kernel)
    runs = []
    for j, start in enumerate(starts):
        chunk_args = [blocks[k][j] if k in blocks else broadcast.get(k, a) for k, a in enumerate(args)]
        runs.append(dask.delayed(_run_chunk, pure=False)(shipped, n, int(start), roles, *chunk_args))
    results = [k for k, role in enumerate(roles) if role in ("out", "reduce")]
    arrays = {}
    for position, k in enumerate(results):
        if names[k] not in outputs:
            continue
        value = args[k]
        if roles[k] == "out":
            arrays[names[k]] = _chunked_output(f"{kernel.name}-{names[k]}", runs, position, lengths, value)
        else:
            parts = [da.from_delayed(run[position], shape=value.shape, dtype=value.dtype) for run in runs]
            total = da.stack(parts).sum(axis=0, split_every=split_every, dtype=value.dtype)
            arrays[names[k]] = (total + value).astype(value.dtype)  # the single launch adds into it
    return {name: arrays[name] for name in outputs}


def _chunked_output(label: str, runs: list, position: int, lengths: tuple, value):
    """The `position`th array each run returns, as the chunks of one Dask array (empty ones kept)."""
    import operator

    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    name = f"gpuad-{label}-{tokenize([run.key for run in runs], position)}"
    inner = (0,) * (value.ndim - 1)
    layer = {(name, j, *inner): (operator.getitem, run.key, position) for j, run in enumerate(runs)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=runs)
    chunks = (tuple(lengths),) + tuple((size,) for size in value.shape[1:])
    return da.Array(graph, name, chunks, dtype=value.dtype)


def _role(value, name: str, written: bool, reduce: dict) -> str:
    import dask.array as da

    if name in reduce:
        return "reduce"
    if isinstance(value, da.Array):
        return "out" if written else "chunk"
    if value is chunk_offset:
        return "offset"
    if isinstance(value, np.ndarray) and written:
        return "guard"
    return "value"


def _like(value):
    """A stand-in for `may_write`, which looks at dimensions only."""
    import dask.array as da

    if isinstance(value, da.Array):
        return np.empty((0,) * value.ndim, dtype=value.dtype)
    return np.int64(0) if value is chunk_offset else value


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
        if isinstance(value, da.Array) or not isinstance(value, np.ndarray):
            raise LaunchError(f"reduce={{{name!r}: ...}}: a shared shadow is a numpy array every chunk "
                              f"adds into, got {type(value).__name__}", kernel._location(),
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
