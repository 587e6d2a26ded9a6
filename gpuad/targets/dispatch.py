"""The repeated-launch path: what a launch of a cached kernel may skip, and how it knows.

A launch types its arguments, checks the kernel's source and argument types, finds which
arguments it may write, checks the local frame and looks up (or compiles) the kernel for the
argument types and the state of everything the derivative depends on (`derivative_key`).
None of that changes from one launch to the next unless an argument's type or the state
changes, so `Kernel` keeps it per argument signature in a `Plan`:

- `signature(args)` is a cheap key that determines numba's type of every argument exactly
  (None where it cannot: then the launch types the arguments the slow way, every time);
- `KeyWatch` says whether `derivative_key(fn)` and the method tables' versions are still
  what they were when the plan was made, by identity of what they read — no key is built.

What depends on argument values — shadow shapes, overlapping host arrays, thread ownership
of aliased arrays — is still checked at every launch (`gpuad.kernel`).
"""
from __future__ import annotations

import sys
import threading

import numpy as np

from gpuad.ad import cache_key as ck
from gpuad.ad.cache_key import reached, read_value, reads
from gpuad.ad.rules import rules_version

# Exact types whose numba type does not depend on the value.
FIXED_TYPES = frozenset({float, bool, complex, np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                         np.uint16, np.uint32, np.uint64, np.float16, np.float32, np.float64, np.complex64,
                         np.complex128})
INT64 = (-2**63, 2**63)  # numba types a Python int in this range as int64, others as uint64 or not at all


def signature(args) -> tuple | None:
    """Per argument, what its numba type (as a kernel argument) is a function of; None if unknown.

    numpy arrays: dtype, ndim, C/F contiguity and writeability (numba's `_typeof_ndarray`);
    numba-cuda and CuPy device arrays: dtype, shape and strides (their layout comes from these).
    """
    key = []
    for value in args:
        kind = type(value)
        if kind is np.ndarray:
            flags = value.flags
            key.append((kind, value.dtype, value.ndim, flags.c_contiguous, flags.f_contiguous,
                        flags.writeable))
        elif kind in FIXED_TYPES:
            key.append(kind)
        elif kind is int and INT64[0] <= value < INT64[1]:
            key.append(kind)
        elif kind in _device_array_types():
            key.append((kind, value.dtype, value.shape, value.strides))
        else:
            return None
    return tuple(key)


_DEVICE_TYPES: dict[str, type] = {}


def _device_array_types() -> tuple:
    """numba-cuda's DeviceNDArray and cupy.ndarray, where already imported (nothing is imported)."""
    for module, name in (("numba.cuda.cudadrv.devicearray", "DeviceNDArray"), ("cupy", "ndarray")):
        if name + module not in _DEVICE_TYPES and module in sys.modules:
            found = getattr(sys.modules[module], name, None)
            if isinstance(found, type):
                _DEVICE_TYPES[name + module] = found
    return tuple(_DEVICE_TYPES.values())


class KeyWatch:
    """Whether `derivative_key(fn)` would still be what it was when this watch was made.

    The key is a function of the reached functions' code, defaults and the values of the
    names they read, and of the rules' version; `derivative_key` builds it (and hashes it)
    every time. Here the same values are looked up and compared by identity with what they
    were, which implies an equal key (a number's token is its value, every other token
    the identity of an immutable value or of the object). What a read makes anew (a bound
    method `obj.f`, a view `W.T`) is compared by its token instead. Any difference — a global set
    to an equal but new float, a redefined helper — says "changed", and the launch takes
    the slow path, which keys by the real `derivative_key`. Make it before compiling: a
    change during the compile then makes the next launch look again.

    Global arrays are the exception: numba freezes their bytes into the code and the key has
    their content, so the arrays among the values (small enough to be keyed by content) are
    compared with a copy of their state — an in-place change (`W[1] = 5.0`) is a change.
    """

    __slots__ = ("_functions", "_rules", "_tables", "_table_versions", "_arrays")

    def __init__(self, fn, tables=()):
        self._rules = rules_version()
        self._tables = tuple(tables)
        self._table_versions = tuple(t.version for t in self._tables)
        self._functions = []
        for f, _ in reached(fn):
            code = f.__code__
            paths = reads(code)
            values = tuple(read_value(f, kind, path) for kind, path in paths)
            tokens = tuple(afresh_token(v) if ck.read_afresh(v) else None for v in values)
            self._functions.append((f, code, f.__defaults__, paths, values, tokens))
        arrays = {id(a): a for v in self._values() for a in ck.frozen_arrays(v) if ck.content_keyed(a)}
        self._arrays = tuple((a, ck.array_state(a)) for a in arrays.values())

    def _values(self):
        for _, _, defaults, _, values, _ in self._functions:
            yield defaults  # an omitted argument's default is a constant to numba too
            yield from values

    def holds(self) -> bool:
        if rules_version() != self._rules:
            return False
        for table, version in zip(self._tables, self._table_versions):
            if table.version != version:
                return False
        for f, code, defaults, paths, values, tokens in self._functions:
            if f.__code__ is not code or f.__defaults__ is not defaults:
                return False
            for (kind, path), value, token in zip(paths, values, tokens):
                now = read_value(f, kind, path)
                if now is not value and (token is None or afresh_token(now) != token):
                    return False
        for array, state in self._arrays:
            if ck.array_state(array) != state:
                return False
        return True


def afresh_token(value) -> tuple:
    """What a value read anew each time is compared by: a view by its state (its bytes), a
    method by its object's identity (an array object's bytes are watched beside) and function."""
    if ck.is_array(value):
        return ck.array_state(value)
    if ck.bound_method(value):
        return (ck.Ident(value.__self__), value.__name__)
    return (ck.Ident(value.__self__), ck.Ident(value.__func__))


class BoundedCache(dict):
    """A dict that forgets its oldest entries past `limit` (launch signatures with many shapes)."""

    def __init__(self, limit: int = 64):
        super().__init__()
        self.limit = limit
        self._lock = threading.Lock()

    def put(self, key, value):
        with self._lock:
            while len(self) >= self.limit:
                del self[next(iter(self))]
            self[key] = value
        return value
