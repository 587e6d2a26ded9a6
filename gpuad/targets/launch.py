"""What both targets check and share before a launch: configuration, arguments, copies.

Everything here runs before anything compiles or runs, so a bad launch is a
`LaunchError` (or `AutodiffCallError` for mismatched shadows) naming the
kernel and the bad value, the same on the cpu and the cuda target.
"""
from __future__ import annotations

import ast
import functools
import numbers
from dataclasses import dataclass

import numpy as np

from gpuad import api
from gpuad.errors import AutodiffCallError, LaunchError, SourceLocation

# CUDA's limits (every architecture gpuad targets, sm_50 and later).
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_THREADS = 2**63 - 1  # launch(n): n must fit the kernel's int64 thread index
AXES = "xyz"


def kernel_location(pyfunc) -> SourceLocation:
    code = pyfunc.__code__
    return SourceLocation(code.co_filename, code.co_firstlineno, "kernel", pyfunc.__name__)


def _is_int(value) -> bool:
    # numpy integers are fine; bools are not sizes.
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def launch_dims(pyfunc, griddim, blockdim) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block) as 3-tuples of ints, checked against CUDA's limits."""
    grid = _dims(pyfunc, "grid", griddim, MAX_GRID)
    block = _dims(pyfunc, "block", blockdim, MAX_BLOCK)
    threads = block[0] * block[1] * block[2]
    if threads > MAX_THREADS_PER_BLOCK:
        raise LaunchError(
            f"kernel {pyfunc.__name__}: a block of {blockdim!r} has {threads} threads; CUDA allows "
            f"at most {MAX_THREADS_PER_BLOCK}", kernel_location(pyfunc),
            hint="use fewer threads per block and more blocks",
        )
    return grid, block


def _dims(pyfunc, what: str, dim, limits) -> tuple[int, int, int]:
    values = dim if isinstance(dim, tuple) else (dim,)
    if not (1 <= len(values) <= 3 and all(_is_int(v) for v in values)):
        raise LaunchError(
            f"kernel {pyfunc.__name__}: the {what} dimension {dim!r} must be an int or a tuple of "
            "1 to 3 ints", kernel_location(pyfunc), hint=f"e.g. {pyfunc.__name__}[blocks, threads](...)",
        )
    values = tuple(int(v) for v in values) + (1,) * (3 - len(values))
    for axis, value, limit in zip(AXES, values, limits):
        if not 1 <= value <= limit:
            raise LaunchError(
                f"kernel {pyfunc.__name__}: the {what} dimension {dim!r} has {value} on axis {axis}; "
                f"CUDA allows 1 to {limit}", kernel_location(pyfunc),
                hint="launch(n, ...) picks the grid for n threads",
            )
    return values


# Checked configurations of plain ints (bools and numpy ints are checked every time): the
# repeated-launch path looks them up.
_CHECKED: dict = {}
_CHECKED_LIMIT = 1024


def _remember(key, value):
    if len(_CHECKED) >= _CHECKED_LIMIT:
        _CHECKED.clear()
    _CHECKED[key] = value
    return value


def _plain(value) -> bool:
    """An int (not a bool, not a numpy int) or a tuple of them: a cache key that means one config."""
    return type(value) is int or (type(value) is tuple and all(type(v) is int for v in value))


def launch_config(pyfunc, config) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """`kernel[config]`: (blocks, threads), checked."""
    if type(config) is tuple and len(config) == 2 and _plain(config[0]) and _plain(config[1]):
        key = ("config", config)
        found = _CHECKED.get(key)
        return found if found is not None else _remember(key, _launch_config(pyfunc, config))
    return _launch_config(pyfunc, config)


def _launch_config(pyfunc, config) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    if not (isinstance(config, tuple) and len(config) == 2):
        raise LaunchError(
            f"kernel {pyfunc.__name__}: the launch configuration {config!r} must be [blocks, threads]",
            kernel_location(pyfunc),
            hint=f"use {pyfunc.__name__}[blocks, threads](...) or {pyfunc.__name__}.launch(n, ...); "
            "gpuad launches take no stream or dynamic shared memory",
        )
    return launch_dims(pyfunc, *config)


def threads_config(pyfunc, n, block) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """`launch(n, block=...)`: (grid, block) for n threads, or None for n = 0 (nothing runs)."""
    if type(n) is int and type(block) is int and n > 0:
        key = ("threads", n, block)
        found = _CHECKED.get(key)
        return found if found is not None else _remember(key, _threads_config(pyfunc, n, block))
    return _threads_config(pyfunc, n, block)


def _threads_config(pyfunc, n, block) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    if not (_is_int(n) and 0 <= n <= MAX_THREADS):
        got = f"an array of shape {n.shape}" if hasattr(n, "shape") else repr(n)
        raise LaunchError(
            f"kernel {pyfunc.__name__}: launch(n, ...) needs the number of threads n first, an int "
            f"0 <= n < 2**63, got {got}", kernel_location(pyfunc),
            hint=f"launch {pyfunc.__name__} as kernel.launch(n, *arguments), e.g. "
                 "kernel.launch(xs.shape[0], xs, dxs)",
        )
    if not _is_int(block):
        raise LaunchError(f"kernel {pyfunc.__name__}: block={block!r} must be an int",
                          kernel_location(pyfunc))
    launch_dims(pyfunc, 1, block)  # as asked, even where n threads need fewer
    if n == 0:
        return None
    _, block3 = launch_dims(pyfunc, 1, min(int(block), int(n)))
    blocks = -(-int(n) // block3[0])
    if blocks > MAX_GRID[0]:
        raise LaunchError(
            f"kernel {pyfunc.__name__}: launch({n}) needs {blocks} blocks of {block3[0]} threads; "
            f"CUDA allows at most {MAX_GRID[0]} blocks", kernel_location(pyfunc),
            hint="loop over the elements inside the kernel (a grid-stride loop)",
        )
    return (blocks, 1, 1), block3


# -- what a kernel may take and contain (the CUDA pipeline's rules) ----------

def check_argument_type(pyfunc, index: int, numba_type) -> None:
    """Lists, dicts and sets need numba's runtime (NRT), which CUDA kernels do not have."""
    from numba.core import types

    containers = (types.List, types.ListType, types.DictType, types.Set, types.UnicodeType)
    pending = [numba_type]
    while pending:
        t = pending.pop()
        if isinstance(t, types.BaseTuple):
            pending.extend(t.types)
        elif isinstance(t, containers):
            raise LaunchError(
                f"argument {index} of kernel {pyfunc.__name__} has type {numba_type}: NRT required "
                "but not enabled (CUDA kernels cannot take lists, dicts, sets or strings)",
                kernel_location(pyfunc), hint="pass a numpy array instead, e.g. np.asarray(values)",
            )


@functools.lru_cache(maxsize=512)
def check_kernel_source(pyfunc) -> None:
    """A kernel returns nothing: CUDA refuses `return value` (numba: no conversion to none)."""
    from gpuad.interpreter import parse_function

    parsed = parse_function(pyfunc)
    for node in _own_nodes(parsed.tree):
        if isinstance(node, ast.Return) and node.value is not None \
                and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            raise LaunchError(
                f"kernel {pyfunc.__name__} returns a value; CUDA kernels return nothing",
                SourceLocation(parsed.filename, node.lineno, ast.unparse(node)[:80], pyfunc.__name__),
                hint="write results into an output array argument",
            )


def _own_nodes(tree: ast.FunctionDef):
    """The function's nodes, not those of functions or lambdas defined inside it."""
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            pending.extend(ast.iter_child_nodes(node))


# -- which parameters the kernel provably only reads -------------------------

_METADATA = frozenset({"shape", "size", "ndim", "dtype", "itemsize", "nbytes", "strides"})


@dataclass(frozen=True)
class ParameterUse:
    """How a kernel uses one parameter: None if it may write it (or let anything else do so),
    else the index arities of its element reads (a read is a scalar when arity == ndim)."""

    arities: frozenset[int] | None


@functools.lru_cache(maxsize=512)
def parameter_uses(pyfunc) -> tuple[ParameterUse, ...]:
    from gpuad.interpreter import name_uses, parse_function

    tree = parse_function(pyfunc).tree
    uses = name_uses(tree)
    # A slice object in a local could make `a[s]` a view that escapes: prove nothing then.
    mentions_slice = any(isinstance(n, ast.Name) and n.id == "slice" for n in ast.walk(tree))
    return tuple(
        ParameterUse(None if mentions_slice else _read_arities(uses.get(arg.arg, [])))
        for arg in tree.args.args
    )


def _read_arities(uses) -> frozenset[int] | None:
    arities = set()
    for use, parent in uses:
        if not isinstance(use.ctx, ast.Load):
            return None  # reassigned: the name may hold anything
        if isinstance(parent, ast.Attribute) and parent.value is use and parent.attr in _METADATA:
            continue
        if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) \
                and parent.func.id == "len" and parent.args == [use]:
            continue
        if isinstance(parent, ast.Subscript) and parent.slice is use:
            continue  # used as an index: not written through
        if isinstance(parent, ast.Subscript) and parent.value is use \
                and isinstance(parent.ctx, ast.Load) and not _has_slice(parent.slice):
            index = parent.slice
            arities.add(len(index.elts) if isinstance(index, ast.Tuple) else 1)
            continue
        if isinstance(parent, (ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp)):
            continue  # a scalar operand (array arithmetic needs NRT: CUDA refuses it)
        return None
    return frozenset(arities)


def _has_slice(index: ast.expr) -> bool:
    """Slices, `...` and `None` (newaxis) make views, not scalars."""
    return any(isinstance(n, ast.Slice) or (isinstance(n, ast.Constant) and n.value in (None, Ellipsis))
               for n in ast.walk(index))


def may_write(pyfunc, args) -> list[bool]:
    """Per argument: whether the kernel might write it (True unless provably only read)."""
    result = []
    for use, value in zip(parameter_uses(pyfunc), args):
        ndim = getattr(value, "ndim", None)
        reads_scalars = use.arities is not None and ndim is not None and all(a == ndim for a in use.arities)
        result.append(not reads_scalars)
    return result


# -- shadows passed straight from kernel parameters --------------------------

@dataclass(frozen=True)
class ShadowPair:
    primal: int  # parameter positions
    shadow: int
    location: SourceLocation


@dataclass(frozen=True)
class DuplicatedArgument:
    """A `Duplicated(primal, shadow)` argument of an `autodiff(mode, f, ...)` call in a kernel."""

    call: ast.Call  # the autodiff call
    arg: ast.Call  # Duplicated(primal, shadow)


def duplicated_arguments(pyfunc) -> tuple:
    """(parsed source, namespace, locals, [DuplicatedArgument]) of a kernel: every `Duplicated`
    (or `DuplicatedNoNeed`) argument with two parts of its `autodiff` calls."""
    from gpuad.interpreter import (
        _activity_class,
        function_namespace,
        local_names,
        parse_function,
        static_value,
    )

    parsed = parse_function(pyfunc)
    namespace, locals_ = function_namespace(pyfunc), local_names(parsed.tree)
    found = []
    for node in ast.walk(parsed.tree):
        if not (isinstance(node, ast.Call) and static_value(node.func, namespace, locals_) is api.autodiff):
            continue
        for arg in node.args[2:]:
            try:
                wrapper = _activity_class(arg, namespace, locals_)
            except Exception:  # noqa: BLE001 - stage 1 reports malformed calls
                wrapper = None
            if wrapper is not None and issubclass(wrapper, api.Duplicated) and len(arg.args) == 2:
                found.append(DuplicatedArgument(node, arg))
    return parsed, namespace, locals_, found


@functools.lru_cache(maxsize=512)
def shadow_pairs(pyfunc) -> tuple[ShadowPair, ...]:
    """`Duplicated(a, da)` or `Duplicated(a[idx], da[idx])` with a and da kernel parameters.

    Such a shadow must have its primal's shape and dtype; stage 1 cannot see
    run-time shapes, so the launch checks them. Shadows built inside the
    kernel or in the functions it calls are not covered.
    """
    from gpuad.interpreter import name_uses

    parsed, _, _, duplicated = duplicated_arguments(pyfunc)
    tree = parsed.tree
    params = [a.arg for a in tree.args.args]
    stored = {name for name, uses in name_uses(tree).items()
              if any(not isinstance(u.ctx, ast.Load) for u, _ in uses)}
    pairs = []
    for found in duplicated:
        names = [_parameter_name(v) for v in found.arg.args]
        if None in names or any(n not in params or n in stored for n in names):
            continue
        primal, shadow = found.arg.args
        if isinstance(primal, ast.Subscript) != isinstance(shadow, ast.Subscript) or (
                isinstance(primal, ast.Subscript) and ast.dump(primal.slice) != ast.dump(shadow.slice)):
            continue
        where = SourceLocation(parsed.filename, found.call.lineno, ast.unparse(found.arg)[:80],
                               pyfunc.__name__)
        pairs.append(ShadowPair(params.index(names[0]), params.index(names[1]), where))
    return tuple(pairs)


def _parameter_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def check_shadows(pyfunc, args) -> None:
    for pair in shadow_pairs(pyfunc):
        primal, shadow = args[pair.primal], args[pair.shadow]
        check_shadow_matches(primal, shadow, pair.location,
                             f"kernel {pyfunc.__name__}, argument {pair.shadow}")


def check_shadow_matches(primal, shadow, location, what: str) -> None:
    """A shadow array has its primal's shape and dtype (else derivatives go out of bounds)."""
    primal_array, shadow_array = _is_array(primal), _is_array(shadow)
    if not (primal_array or shadow_array):
        return
    if primal_array != shadow_array:
        kinds = ("an array", "a scalar") if shadow_array else ("a scalar", "an array")
        raise AutodiffCallError(f"{what}: the shadow in Duplicated is {kinds[0]} but its primal is "
                                f"{kinds[1]}", location, hint="make the shadow like its primal: "
                                "np.zeros_like(primal) for an array")
    if tuple(primal.shape) != tuple(shadow.shape) or np.dtype(primal.dtype) != np.dtype(shadow.dtype):
        raise AutodiffCallError(
            f"{what}: the shadow in Duplicated has shape {tuple(shadow.shape)} and dtype "
            f"{np.dtype(shadow.dtype)} but its primal has shape {tuple(primal.shape)} and dtype "
            f"{np.dtype(primal.dtype)}", location,
            hint="make the shadow like its primal: np.zeros_like(primal)",
        )


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or hasattr(value, "__cuda_array_interface__")


# -- host arrays: one copy per buffer ----------------------------------------

def host_array_groups(pyfunc, args, writes: list[bool]) -> list[list[int]]:
    """Positions of the numpy arguments, grouped by identical memory (one copy each).

    Arrays that overlap without being the same view are refused when one of
    them may be written: two copies would each be written back, and one
    would overwrite the other's results.
    """
    from gpuad.compiler.numba_adapter import memory_span

    host = [k for k, value in enumerate(args) if isinstance(value, np.ndarray)]
    if len(host) < 2:  # nothing to share or overlap
        return [host] if host else []
    groups: dict[tuple, list[int]] = {}
    spans = []
    for k in host:
        value = args[k]
        start = value.__array_interface__["data"][0]
        key = (start, value.shape, value.strides, value.dtype.str)
        groups.setdefault(key, []).append(k)
        if value.flags.contiguous and value.size:  # C order: its bytes from the start on
            spans.append((start, start + value.nbytes, k, key))
        elif (span := memory_span(value)) is not None:
            spans.append((span[1], span[2], k, key))
    spans.sort()
    for i, (_, high, k, key) in enumerate(spans):
        for low2, _, k2, key2 in spans[i + 1:]:
            if low2 >= high:
                break
            if key2 != key and (writes[k] or writes[k2]):
                raise LaunchError(
                    f"arguments {min(k, k2)} and {max(k, k2)} of kernel {pyfunc.__name__} overlap in memory "
                    "but are different views of it; one copy would overwrite the other's results",
                    kernel_location(pyfunc),
                    hint="pass the whole array once and offset the index in the kernel, "
                    "or pass a copy (np.copy) of the view the kernel only reads",
                )
    return list(groups.values())
