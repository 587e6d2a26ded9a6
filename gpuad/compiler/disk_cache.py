"""Compiled CUDA kernels on disk, shared by processes: a restarted notebook does not recompile.

Key: a SHA-256 of everything that changes what is compiled: the kernel's `derivative_key`
(the code of every function it reaches, the values those read, defaults) made stable across
processes, the argument types, arch, fastmath, tape capacity and atomics variant, and the
versions of gpuad (a digest of its source), Python, numba, numba-cuda, llvmlite, numpy and NVVM.
Global arrays are in the key by content (`cache_key.array_token`). A kernel whose key holds
something with no stable name across processes (an object read by identity, such as an instance
of the user's class or a global array too large to key by content), or compiled while the process
has user rules or user overlays registered, is not kept on disk: it compiles as before.

Entries: one file per key, `<key>.gpuad`, a header with the body's SHA-256, then the pickled
entry. Written to a temporary file and renamed, so a reader sees a whole entry or none, and
processes writing one key write the same bytes. An entry that fails its checksum or does not
load is deleted and compiled again. After a write, the least recently used entries are deleted
until the directory is under its size limit.

Settings (environment): GPUAD_CACHE_DIR (default: the platform's user cache directory, e.g.
~/.cache/gpuad), GPUAD_CACHE=0 turns the cache off, GPUAD_CACHE_MAX_MB (default 512).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import sys
import threading
import types as pytypes
from pathlib import Path

log = logging.getLogger("gpuad")

SUFFIX = ".gpuad"
MAGIC = b"gpuad-cache 1 "
DEFAULT_MAX_MB = 512


class NotStable(Exception):
    """A key part that has no name valid in another process."""


# ------------------------------------------------------------------ where and how much

def enabled() -> bool:
    return os.environ.get("GPUAD_CACHE", "1") not in ("0", "", "off", "false")


def directory() -> Path:
    if configured := os.environ.get("GPUAD_CACHE_DIR"):
        return Path(configured)
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "gpuad" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "gpuad"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuad"


def max_bytes() -> int:
    try:
        return int(float(os.environ.get("GPUAD_CACHE_MAX_MB", DEFAULT_MAX_MB)) * 2**20)
    except ValueError:
        return DEFAULT_MAX_MB * 2**20


# ------------------------------------------------------------------ the key

def kernel_key(derived: tuple, *parts) -> str | None:
    """The entry name of a kernel whose `cache_key.derivative_key` is `derived` (the in-memory
    cache computed it already), compiled with `parts` (types, arch, options); None when it
    cannot be named across processes."""
    from gpuad.method_table import CUDA

    if not enabled() or not rules_keyed_by_code() or not CUDA.only_builtin():
        return None
    try:
        derived = stable(derived)
    except NotStable:
        return None
    text = repr((toolchain(), derived, tuple(map(repr, parts))))
    return hashlib.sha256(text.encode()).hexdigest()


def rules_keyed_by_code() -> bool:
    """Every user rule is for a function of the user's Python code: a derivative key reaching that
    function holds the rule's functions too (`cache_key.function_entry`). A rule for a builtin or a
    library function is known only to this process's registry."""
    from gpuad.ad.cache_key import followed
    from gpuad.ad.rules import rule_targets

    return all(followed(fn) is fn for fn in rule_targets())


def stable(token):
    """A `derivative_key` token as plain data with the same meaning in every process."""
    from gpuad.ad.cache_key import Ident

    if isinstance(token, Ident):
        return stable_object(token.obj)
    if isinstance(token, tuple):
        return tuple(stable(t) for t in token)
    if isinstance(token, type):
        return ("type", token.__module__, token.__qualname__)
    if token is None or isinstance(token, str | int | float | bool):
        return token
    raise NotStable(repr(token))


def stable_object(obj):
    """Code by content; functions, modules, classes and library singletons by name."""
    if isinstance(obj, pytypes.CodeType):
        return ("code", code_digest(obj))
    if isinstance(obj, pytypes.ModuleType):
        return ("module", obj.__name__)
    if isinstance(obj, pytypes.FunctionType):  # its code and what it reads are keyed beside it
        return ("function", obj.__module__, obj.__qualname__)
    if isinstance(obj, pytypes.BuiltinFunctionType | type):
        return ("named", getattr(obj, "__module__", None), obj.__qualname__)
    if hasattr(obj, "py_func"):  # a numba dispatcher: its Python function is followed
        return ("dispatcher", type(obj).__qualname__, stable_object(obj.py_func))
    module = sys.modules.get(type(obj).__module__)
    for name, value in vars(module).items() if module is not None else ():
        if value is obj:  # a library's module-level object: gpuad.Reverse, cuda.threadIdx
            return ("attribute", module.__name__, name)
    raise NotStable(repr(obj))


def code_digest(code: pytypes.CodeType) -> str:
    """A code object's content (line numbers and file included: errors name them)."""
    consts = tuple(("code", code_digest(c)) if isinstance(c, pytypes.CodeType)
                   else (type(c).__qualname__, sorted(map(repr, c)) if isinstance(c, frozenset) else repr(c))
                   for c in code.co_consts)
    fields = (code.co_code, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
              code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags,
              code.co_filename, code.co_name, code.co_firstlineno, getattr(code, "co_linetable", b""),
              getattr(code, "co_exceptiontable", b""), consts)
    return hashlib.sha256(repr(fields).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def toolchain() -> tuple:
    """gpuad's own source and the versions of everything that compiles a kernel."""
    from importlib import metadata

    root = Path(__file__).resolve().parent.parent
    source = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        source.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    versions = []
    for package in ("numba", "numba-cuda", "llvmlite", "numpy"):
        try:
            versions.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            versions.append((package, None))
    return (source.hexdigest(), sys.version, tuple(versions), nvvm_version())


def nvvm_version():
    try:
        from numba.cuda.cudadrv import nvvm

        return tuple(nvvm.NVVM().get_version())
    except Exception:  # noqa: BLE001 - without NVVM nothing compiles; the compile says why
        return None


# ------------------------------------------------------------------ entries

def load(key: str):
    """The entry stored under `key`, or None (absent, damaged: a damaged one is deleted)."""
    path = directory() / (key + SUFFIX)
    try:
        data = path.read_bytes()
    except OSError:
        return None
    header, _, body = data.partition(b"\n")
    try:
        if header != MAGIC + hashlib.sha256(body).hexdigest().encode():
            raise ValueError("checksum")
        entry = pickle.loads(body)  # noqa: S301 - our own files, checksummed
    except Exception as exc:  # noqa: BLE001 - any damage: compile again
        log.warning("gpuad: deleting damaged cache entry %s (%s)", path, exc)
        _remove(path)
        return None
    try:
        os.utime(path)  # recently used: kept longest
    except OSError:
        pass
    return entry


def store(key: str, entry) -> None:
    """Write `entry` under `key` atomically, then keep the directory under its size limit."""
    folder = directory()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        body = pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)
        temporary = folder / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        temporary.write_bytes(MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
        os.replace(temporary, folder / (key + SUFFIX))
    except Exception as exc:  # noqa: BLE001 - a cache that cannot write only costs time
        log.warning("gpuad: could not write the kernel cache in %s (%s)", folder, exc)
        return
    evict(max_bytes())


def entries() -> list[tuple[Path, int, float]]:
    """(path, bytes, last use) of every entry."""
    found = []
    for path in directory().glob("*" + SUFFIX):
        try:
            stat = path.stat()
        except OSError:  # deleted meanwhile by another process
            continue
        found.append((path, stat.st_size, stat.st_mtime))
    return found


def evict(limit: int) -> int:
    """Delete the least recently used entries until the total is at most `limit`; how many."""
    listed = sorted(entries(), key=lambda e: e[2])
    total, removed = sum(size for _, size, _ in listed), 0
    for path, size, _ in listed:
        if total <= limit:
            break
        _remove(path)
        total -= size
        removed += 1
    return removed


def clear() -> int:
    """Delete every entry; how many there were."""
    listed = entries()
    for path, _, _ in listed:
        _remove(path)
    return len(listed)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
