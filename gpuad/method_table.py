"""Method tables: per-target overlays, `Base.Experimental.@overlay` style.

A `MethodTable` maps an object (a function, a numba stub, a property such as
`cuda.threadIdx.x`) to its replacement inside kernels compiled for that
target. Lookup is by identity, never by spelling, so `import math as m`,
`from math import sin` and a closure over `sin` all find the same overlay.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gpuad import api


@dataclass(frozen=True)
class Overlay:
    original: Any
    replacement: Any
    # The replacement needs the per-thread context (the hidden status array):
    # the cpu target's emulation of thread indices reads it from there.
    needs_context: bool = False
    # numba types some stubs (`cuda.local.array`) only when reached as an
    # attribute of their module: (module, "local.array") spells it so.
    spelled: tuple[Any, str] | None = None
    # Listed in the compilation record's overlays; not for arithmetic helpers of generated code
    # (`guarded_mul`), which appear at every update and lower to one instruction.
    listed: bool = True


class MethodTable:
    """Overlays for one target, keyed by the identity of the original."""

    def __init__(self, name: str):
        self.name = name
        self._overlays: dict[int, Overlay] = {}
        self._attributes: dict[tuple[int, str], Overlay] = {}
        # Bumped by every change, so compiled kernels know when to recompile.
        self.version = 0
        # Inside any kernel, `autodiff` is deferred: its derivative becomes a
        # separate job linked into the kernel (CUDA.jl overlays Enzyme's the same way).
        self.add(api.autodiff, api.autodiff_deferred)
        self._builtin: tuple[dict, dict] = ({}, {})
        self.mark_builtin()

    def mark_builtin(self) -> None:
        """The overlays now are gpuad's own (a target calls this once it installed them)."""
        self._builtin = (dict(self._overlays), dict(self._attributes))

    def only_builtin(self) -> bool:
        """Only gpuad's own overlays are in place: a kernel compiled now does not depend on the
        user's, so it may be kept on disk (`gpuad.compiler.disk_cache`)."""
        return all(now.keys() == then.keys() and all(now[k] is then[k] for k in now)
                   for now, then in zip((self._overlays, self._attributes), self._builtin))

    def add(self, original: Any, replacement: Any, *, needs_context: bool = False,
            spelled: tuple[Any, str] | None = None, listed: bool = True) -> None:
        self._overlays[id(original)] = Overlay(original, replacement, needs_context, spelled, listed)
        self.version += 1

    def add_attribute(self, owner: Any, attr: str, replacement: Any, *, needs_context: bool = False) -> None:
        """Overlay `owner.attr` where the attribute alone is not unique.

        numba-cuda's `threadIdx.x` and `blockIdx.x` are one inherited
        property object, so they are told apart by their owner.
        """
        self._attributes[(id(owner), attr)] = Overlay((owner, attr), replacement, needs_context)
        self.version += 1

    def lookup_attribute(self, owner: Any, attr: str) -> Overlay | None:
        overlay = self._attributes.get((id(owner), attr))
        return overlay if overlay is not None and overlay.original[0] is owner else None

    def remove(self, original: Any) -> None:
        """Undo an overlay; kernels compiled with it recompile on next use."""
        if self.lookup(original) is None:
            raise KeyError(f"{qualified_name(original)} has no overlay in {self.name}")
        del self._overlays[id(original)]
        self.version += 1

    def lookup(self, obj: Any) -> Overlay | None:
        overlay = self._overlays.get(id(obj))
        # The id of a dead object can be reused; the stored original keeps
        # ours alive, so an identity check is enough.
        return overlay if overlay is not None and overlay.original is obj else None

    def __contains__(self, obj: Any) -> bool:
        return self.lookup(obj) is not None

    def __repr__(self) -> str:
        return f"<MethodTable {self.name}: {len(self._overlays)} overlays>"


CUDA = MethodTable("CUDA")
CPU = MethodTable("CPU")


def overlay(table: MethodTable, original: Any) -> Callable:
    """Decorator: replace `original` by the decorated function in `table`'s kernels.

    >>> @gpuad.overlay(gpuad.CUDA, math.exp)
    ... def fast_exp(x):
    ...     return 2.0 ** (x * 1.4426950408889634)
    """

    def register(replacement):
        table.add(original, replacement)
        return replacement

    return register


def qualified_name(obj: Any) -> str:
    """A readable dotted name for an overlay record."""
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], str):
        return f"{qualified_name(obj[0])}.{obj[1]}"
    if isinstance(obj, property):
        return getattr(obj.fget, "__qualname__", repr(obj))
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{name}" if module and module != "builtins" else name
