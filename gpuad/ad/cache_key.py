"""What a derivative depends on: the key of every derivative cache, and the source check.

A derivative of `fn` is a function of the code of `fn` and of every Python
function it reaches, of what the globals and closure cells those functions
read hold (numbers are inlined as constants, other objects are bound by
identity), of their default arguments, and of the registered derivative rules.
numba freezes a global numpy array into the compiled code like a constant, so
arrays (also inside global tuples, and behind their methods such as `W.sum`)
are keyed by content: dtype, shape, strides and a digest of their bytes, up to
`CONTENT_LIMIT` bytes each; a larger one is keyed by identity, and a
GpuadWarning says once that changes made to it after compiling are not seen.
`derivative_key(fn)` collects exactly these, so a cache keyed by it (plus the
argument types, target and options of the cache at hand) can never hand back
a derivative of an older state: change a global from 2 to 2.5, redefine a
helper, register a rule, and the key changes.

It is on the launch path of cached kernels, so it is cheap: the dotted names
a code object reads (`K`, `math.sqrt`, `cfg.alpha`) are found once per code
object from its bytecode; each call only looks the current values up.

`source_matches(fn, tree)` guards the other way a derivative can go stale:
gpuad differentiates the source text it finds for a function (a file edited
since, or two `exec`s under one filename), so the text is compiled and its
code compared with the function's own before it is used.
"""
from __future__ import annotations
import __future__

import ast
import builtins
import dis
import hashlib
import inspect
import sys
import sysconfig
import types as pytypes
import warnings
import weakref

from gpuad.ad.rules import rules_version, user_rule

# Callees from libraries are keyed by identity only: their code does not change
# under a running process, and following them would walk their modules.
LIBRARY_ROOTS = ("numba", "numpy", "llvmlite", "gpuad")
LIBRARY_DIRS = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})
ROOT_LOADS = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF"}
ATTR_LOADS = {"LOAD_ATTR", "LOAD_METHOD"}
FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag
# Flags that change what a function is (the others record where it was compiled).
SHAPE_FLAGS = (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS | inspect.CO_GENERATOR | inspect.CO_COROUTINE
               | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR)
_MISSING = ("missing",)
# Fast paths of `value_token`, by exact type.
BY_VALUE = frozenset({bool, int, str, type(None)})
BY_IDENTITY = frozenset({pytypes.FunctionType, pytypes.ModuleType, pytypes.BuiltinFunctionType, type})
# Not compared: no meaning of their own. PUSH_NULL is where 3.13 puts the NULL of a call that
# earlier versions fold into LOAD_GLOBAL/LOAD_ATTR (which one depends on how `math` was bound).
SKIPPED_OPS = {"CACHE", "EXTENDED_ARG", "NOP", "PUSH_NULL"}
JUMP_OPS = set(dis.hasjrel) | set(dis.hasjabs) | set(getattr(dis, "hasjump", ()))
METHOD_LOADS = {"LOAD_METHOD": "LOAD_ATTR"}

# Global arrays up to this many bytes are keyed by content, and compared at every launch of a
# cached kernel (`targets/dispatch.KeyWatch`): ~60 µs per MiB there, a SHA-1 here only on change.
CONTENT_LIMIT = 1 << 20

_reads: dict[int, tuple] = {}  # id(code) -> (code, reads); the code is kept so its id stays unique
_digests: dict[int, tuple] = {}  # id(array) -> (weak reference, its state, content digest)
_warned: set[tuple] = set()  # (file, line, function, dotted name) of large arrays warned about


class Ident:
    """Hashable by identity, equal only to the same object; keeps the object alive."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other) -> bool:
        return isinstance(other, Ident) and other.obj is self.obj

    def __repr__(self) -> str:
        return f"Ident({self.obj!r})"


def derivative_key(fn) -> tuple:
    """Everything that changes a derivative of `fn`, as a hashable tuple (see the module docstring)."""
    return (rules_version(), tuple(entry for _, entry in reached(fn)))


def reached_functions(fn) -> list:
    """`fn` and every Python function of the user's that a derivative of it depends on (what
    `derivative_key` keys by code; `gpuad.dask` ships them to workers)."""
    return [f for f, _ in reached(fn)]


def reached(fn) -> list[tuple]:
    """(function, its key entry) for `fn` and the functions it reaches, depth first in reading
    order (a deterministic key)."""
    found: list = []
    seen: set[int] = set()
    pending = [fn]
    while pending:
        value = pending.pop()
        f = followed(value, library_too=value is fn)
        if f is None or id(f) in seen:
            continue
        seen.add(id(f))
        entry, values = function_entry(f)
        found.append((f, entry))
        pending.extend(reversed(values))
    return found


def followed(value, library_too: bool = False):
    """The Python function behind `value` whose body matters to a derivative, or None."""
    fn = value if type(value) is pytypes.FunctionType else getattr(value, "py_func", value)  # dispatchers
    if not isinstance(fn, pytypes.FunctionType):
        return None
    module = (getattr(fn, "__module__", None) or "").partition(".")[0]
    library = module in LIBRARY_ROOTS or fn.__code__.co_filename.startswith(LIBRARY_DIRS)
    return fn if library_too or not library else None


def function_entry(fn) -> tuple[tuple, list]:
    """(the key entry of one function, the values it reads that may be functions to follow)."""
    code = fn.__code__
    paths = reads(code)
    values = [read_value(fn, kind, path) for kind, path in paths]
    tokens = [Ident(fn), Ident(code), value_token(fn.__defaults__), *map(value_token, values)]
    for (_, path), value in zip(paths, values):
        for array in frozen_arrays(value):
            if too_large(array):
                name = ".".join(path)
                warn_frozen(fn, f"the global array `{name}`", read_line(code, path[0]), array)
    for array in frozen_arrays(fn.__defaults__):  # an omitted argument's default is frozen too
        if too_large(array):
            warn_frozen(fn, "a default argument array", code.co_firstlineno, array)
    rule = user_rule(fn)
    if rule is not None:  # the rule's functions are compiled into the derivative
        values += [rule.forward_fn, rule.reverse_fn]
        tokens += [Ident(rule.forward_fn), Ident(rule.reverse_fn)]
    return tuple(tokens), values


def value_token(value):
    """What a read value contributes to a key: numbers by type and value, other objects by identity."""
    kind = type(value)
    if kind in BY_IDENTITY and not bound_method(value):
        return Ident(value)
    if kind in BY_VALUE:
        return (kind, value)
    if isinstance(value, (float, complex)) or is_numpy_scalar(value):
        return (kind, repr(value))  # repr tells -0.0 from 0.0, and nan equals itself
    if isinstance(value, (int, str)):
        return (kind, value)
    if isinstance(value, tuple):
        return (tuple, tuple(value_token(v) for v in value))
    if isinstance(value, pytypes.MethodType):  # a fresh bound method at every attribute read
        return ("method", Ident(value.__self__), Ident(value.__func__))
    if bound_method(value):
        return ("method", value_token(value.__self__) if is_array(value.__self__) else Ident(value.__self__),
                value.__name__)
    if is_array(value) and content_keyed(value):
        return array_token(value)
    return Ident(value)


def bound_method(value) -> bool:
    """A builtin method of an object (`W.sum`): a new one at every attribute read. (`math.sin`
    and `len` are bound to their module.)"""
    return (isinstance(value, pytypes.BuiltinMethodType) and value.__self__ is not None
            and not isinstance(value.__self__, pytypes.ModuleType))


def read_afresh(value) -> bool:
    """Whether reading the same name again may give a new but equal object: a bound method, an
    array view (`W.T`). Their tokens are compared instead of their identities (`KeyWatch`)."""
    return (isinstance(value, pytypes.MethodType) or bound_method(value)
            or (is_array(value) and value.base is not None and content_keyed(value)))


def is_numpy_scalar(value) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.generic)


# ------------------------------------------------------------ arrays numba freezes
def is_array(value) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)


def frozen_arrays(value):
    """The numpy arrays a read value puts into compiled code: itself, those in a tuple (nested
    too), the array behind a method (`W.sum`)."""
    if is_array(value):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from frozen_arrays(item)
    elif bound_method(value) and is_array(value.__self__):
        yield value.__self__


def content_keyed(array) -> bool:
    """Keyed (and watched) by content; object arrays are not constants numba can freeze."""
    return array.nbytes <= CONTENT_LIMIT and not array.dtype.hasobject


def array_state(array) -> tuple[tuple, bytes]:
    """(what numba's type of the constant depends on, its bytes in C order); cheap to compare."""
    return (array.dtype, array.shape, array.strides), array.tobytes()


def array_token(array) -> tuple:
    """An array's key token: plain data, the same in every process (`disk_cache.stable`)."""
    dtype = array.dtype
    return ("array", dtype.str, str(dtype.descr) if dtype.fields else None, array.shape, array.strides,
            content_digest(array))


def content_digest(array) -> str:
    """SHA-1 of the array's bytes; remembered per array while its bytes compare equal (a copy and
    a compare cost a tenth of the hash)."""
    state = array_state(array)
    known = _digests.get(id(array))
    if known is not None and known[0]() is array and known[1] == state:
        return known[2]
    digest = hashlib.sha1(state[1], usedforsecurity=False).hexdigest()
    key = id(array)

    def forget(ref, key=key):
        if _digests.get(key, (None,))[0] is ref:
            del _digests[key]

    try:
        _digests[key] = (weakref.ref(array, forget), state, digest)
    except TypeError:  # no weak references (an ndarray subclass with __slots__): hashed each time
        pass
    return digest


def too_large(array) -> bool:
    """Frozen by numba but too large to compare at every launch (object arrays are not frozen)."""
    return array.nbytes > CONTENT_LIMIT and not array.dtype.hasobject


def warn_frozen(fn, what: str, line: int, array) -> None:
    """Once per function and array read: a large array is frozen and not watched."""
    code = fn.__code__
    if (code.co_filename, line, fn.__qualname__, what) in _warned:
        return
    _warned.add((code.co_filename, line, fn.__qualname__, what))
    from gpuad.errors import GpuadWarning

    warnings.warn_explicit(GpuadWarning(
        f"{code.co_filename}:{line}: {fn.__qualname__} reads {what} ({array.nbytes / 2**20:.1f} MiB, "
        f"{array.dtype}, shape {array.shape}): it is frozen into the compiled kernel, as numba does; "
        f"changes after compiling are not seen: pass it as an argument (gpuad watches arrays "
        f"of up to {CONTENT_LIMIT >> 20} MiB for changes)"), GpuadWarning, code.co_filename, line)


def read_value(fn, kind: str, path: tuple):
    """The current value of a dotted name `fn` reads; `_MISSING` if it does not resolve."""
    root, *attrs = path
    try:
        if kind == "cell":
            value = fn.__closure__[fn.__code__.co_freevars.index(root)].cell_contents
        elif root in fn.__globals__:
            value = fn.__globals__[root]
        else:
            value = getattr(builtins, root)
        for attr in attrs:
            value = getattr(value, attr)
    except Exception:  # unbound cell, undefined name, failing attribute: the same next time
        return _MISSING
    return value


def reads(code) -> tuple:
    """The dotted global and closure names `code` (and code nested in it) loads, once per code object."""
    cached = _reads.get(id(code))
    if cached is not None and cached[0] is code:
        return cached[1]
    found: dict[tuple, None] = {}
    collect_reads(code, code.co_freevars, found)
    result = tuple(found)
    _reads[id(code)] = (code, result)
    return result


def global_names(code) -> tuple:
    """The global names `code` loads (attribute names such as `sqrt` of `math.sqrt` are not)."""
    return tuple(dict.fromkeys(path[0] for kind, path in reads(code) if kind == "global"))


def collect_reads(code, freevars: tuple, found: dict) -> None:
    path, kind = None, None
    for ins in dis.get_instructions(code):
        if ins.opname == "EXTENDED_ARG":
            continue
        if path is not None and ins.opname in ATTR_LOADS:
            path = (*path, ins.argval)
            continue
        if path is not None:
            found[(kind, path)] = None
            path = None
        if ins.opname in ROOT_LOADS and isinstance(ins.argval, str):
            kind = "cell" if ins.opname == "LOAD_DEREF" else "global"
            if kind == "global" or ins.argval in freevars:
                path = (ins.argval,)
    if path is not None:
        found[(kind, path)] = None
    for const in code.co_consts:
        if isinstance(const, pytypes.CodeType):
            collect_reads(const, freevars, found)


def read_line(code, name: str) -> int:
    """The first line where `code` loads the global `name` (for error messages)."""
    line = code.co_firstlineno
    for ins in dis.get_instructions(code):
        positions = getattr(ins, "positions", None)  # Python 3.11+
        if positions is not None and positions.lineno:
            line = positions.lineno
        elif isinstance(ins.starts_line, int) and not isinstance(ins.starts_line, bool):
            line = ins.starts_line  # Python 3.10
        if ins.opname in ROOT_LOADS and ins.argval == name:
            return line
    return code.co_firstlineno


# ------------------------------------------------------------ the source check
def source_matches(fn, tree: ast.FunctionDef) -> bool:
    """Whether the `def` found for `fn` compiles to `fn`'s code (ignoring line numbers).

    A function closing over variables is compiled inside an enclosing
    function that has them, so its loads are cell loads as in the original.
    """
    code = fn.__code__
    body: list = [tree]
    if code.co_freevars:
        cells = [ast.Assign([ast.Name(v, ast.Store())], ast.Constant(None)) for v in code.co_freevars]
        body = [ast.FunctionDef("_gpuad_enclosing", ast.arguments([], [], None, [], [], None, []),
                                [*cells, tree], [], None)]
        if sys.version_info >= (3, 12):
            body[0].type_params = []
    module = ast.fix_missing_locations(ast.Module(body, []))
    try:
        compiled = compile(module, code.co_filename, "exec", flags=code.co_flags & FUTURE_FLAGS,
                           dont_inherit=True)
    except (SyntaxError, ValueError, TypeError):
        return False
    found = find_code(compiled, code.co_name)
    return found is not None and same_code(found, code)


def source_mismatch(fn, filename: str) -> tuple[str, str]:
    """(message, hint) of the refusal of a function whose found source is not its code."""
    name = fn.__name__
    if getattr(fn, "__wrapped__", None) is not None:  # inspect reads the wrapped function's source
        return (f"{name} is a wrapper made by a decorator: its source is that of the function it wraps, "
                "its code is the wrapper's",
                f"pass the undecorated function ({name}.__wrapped__), or use a decorator that returns "
                "the function itself")
    return (f"the source found for {name} in {filename} is not the code of this function object: the file "
            "was edited, or another definition (a re-run cell, a second exec under the same filename) "
            "replaced that text since the function was created",
            f"define {name} again from its current source (re-run the cell, reload the module) and use "
            "that function object")


def find_code(code, name: str):
    for const in code.co_consts:
        if isinstance(const, pytypes.CodeType):
            if const.co_name == name:
                return const
            inner = find_code(const, name)
            if inner is not None:
                return inner
    return None


def same_code(a, b) -> bool:
    """The same instructions, variables and constants (nested code compared the same way).

    Compared instruction by instruction, not byte by byte: line numbers do not
    count, and CPython compiles `math.sin(x)` differently depending on whether
    `math` was imported in the compiled text (`LOAD_METHOD` or `LOAD_ATTR` in
    3.10-3.12, where the call's NULL goes in 3.13).
    """
    if (a.co_varnames != b.co_varnames or a.co_freevars != b.co_freevars or a.co_cellvars != b.co_cellvars
            or a.co_argcount != b.co_argcount or a.co_posonlyargcount != b.co_posonlyargcount
            or a.co_kwonlyargcount != b.co_kwonlyargcount or (a.co_flags ^ b.co_flags) & SHAPE_FLAGS):
        return False
    ia, ib = instructions(a), instructions(b)
    return len(ia) == len(ib) and all(x[0] == y[0] and same_const(x[1], y[1]) for x, y in zip(ia, ib))


def instructions(code) -> list[tuple]:
    """(operation, argument) of each instruction; jump targets as instruction indices."""
    listed = [ins for ins in dis.get_instructions(code) if ins.opname not in SKIPPED_OPS]
    index = {ins.offset: k for k, ins in enumerate(listed)}
    out = []
    for ins in listed:
        arg = ins.argval
        if ins.opcode in JUMP_OPS and isinstance(arg, int):
            arg = ("jump", index.get(arg, min((k for off, k in index.items() if off > arg), default=-1)))
        out.append((METHOD_LOADS.get(ins.opname, ins.opname), arg))
    return out


def same_const(x, y) -> bool:
    if type(x) is not type(y):
        return False
    if isinstance(x, pytypes.CodeType):
        return same_code(x, y)
    if isinstance(x, tuple):
        return len(x) == len(y) and all(same_const(p, q) for p, q in zip(x, y))
    if isinstance(x, float | complex):
        return repr(x) == repr(y)
    return x == y
