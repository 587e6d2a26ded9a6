"""The one place that reads a user function: its source, checked against its code object, and
what its free names mean.

Both stage 1 (the interpreter, for kernels and the functions they call) and stage 2 (the
engine's normaliser, for the functions it differentiates) start here, so a function is read by
one set of rules: source that does not compile to the function's own code object (an edited
file, two `exec`s under one filename, a decorator's wrapper) is refused, lambdas and `async def`
are refused, and closure cells shadow globals as they do in Python.
"""
from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass

from gpuad.ad.cache_key import source_matches, source_mismatch
from gpuad.compiler.compile_lock import locked
from gpuad.errors import SourceLocation


@dataclass(frozen=True)
class FunctionSource:
    """A function's `def` node (lines counted from its first line), file, line offset and text."""

    tree: ast.FunctionDef
    filename: str
    offset: int  # add to the tree's line numbers to get the file's
    text: str


# Under the compile lock: a kernel's first launch reads its source outside any compilation, and
# CPython 3.11's ast conversions share one recursion counter, so an `ast.parse` here beside one in
# another thread's compilation failed that compilation ("AST constructor recursion depth mismatch").
@locked
def function_source(fn, error: type, cannot_read_hint: str) -> FunctionSource:
    """The source of `fn`, or `error` (a GpuadError class) saying why it cannot be used."""
    code = fn.__code__
    try:
        lines, _ = inspect.getsourcelines(fn)
    except (OSError, TypeError) as exc:
        raise error(f"cannot read the source of {getattr(fn, '__qualname__', fn)!r}",
                    SourceLocation(code.co_filename, code.co_firstlineno, "def", fn.__name__),
                    cannot_read_hint) from exc
    text = textwrap.dedent("".join(lines))
    filename = inspect.getsourcefile(fn) or code.co_filename
    offset = code.co_firstlineno - 1
    try:
        node = ast.parse(text).body[0]
    except SyntaxError:
        node = None  # not a whole statement: the file changed since fn was defined
    if code.co_name == "<lambda>" or isinstance(node, ast.AsyncFunctionDef):
        raise error("only functions defined with `def` can be used here",
                    SourceLocation(filename, offset + 1, "lambda" if node is None else "async def",
                                   fn.__name__), "write the function with def at module level")
    if not (isinstance(node, ast.FunctionDef) and source_matches(fn, node)):
        message, hint = source_mismatch(fn, filename)
        raise error(message, SourceLocation(filename, offset + 1, "def", fn.__name__), hint)
    return FunctionSource(node, filename, offset, text)


def function_scope(fn) -> dict:
    """Globals of `fn` with its closure variables on top, as the body sees them."""
    scope = dict(fn.__globals__)
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            scope[name] = cell.cell_contents
        except ValueError:  # an empty cell: a name assigned later in the outer scope
            pass
    return scope
