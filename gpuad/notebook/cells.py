"""Run a notebook cell's source so that errors point at lines of the cell.

The cell is compiled under a filename of our own and registered in
`linecache`, so `inspect.getsource` — which the interpreter and numba use —
finds the source of functions defined in it, and any error (a syntax error,
a `GpuadError` with its `.location`, or a traceback frame) can be mapped
back to a line number the user sees in the notebook.
"""
from __future__ import annotations

import itertools
import linecache
import traceback
from dataclasses import dataclass

from gpuad.errors import GpuadError, SourceLocation

_cell_numbers = itertools.count(1)
# Like linecache's entries, kept for the session: records name these filenames.
_registered: dict[str, Cell] = {}


@dataclass(frozen=True)
class Cell:
    """The body of a cell, registered under `filename`.

    `line_offset` is added to a body line to get the cell line: 1 when the
    body follows a `%%gpukernel` line, which is line 1 of the cell.
    `execution_count` is the cell's `In [N]` number, when IPython ran it.
    """

    source: str
    filename: str
    line_offset: int = 1
    execution_count: int | None = None

    def cell_line(self, body_line: int) -> int:
        return body_line + self.line_offset

    def text_of(self, body_line: int) -> str:
        lines = self.source.splitlines()
        return lines[body_line - 1] if 0 < body_line <= len(lines) else ""


def register_cell(source: str, line_offset: int = 1, execution_count: int | None = None) -> Cell:
    """Give the cell a unique filename and make its source findable by `inspect`."""
    filename = f"<gpukernel-cell-{next(_cell_numbers)}>"
    # mtime None: linecache.checkcache() keeps entries it cannot stat.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    cell = Cell(source, filename, line_offset, execution_count)
    _registered[filename] = cell
    return cell


def registered_cell(filename: str) -> Cell | None:
    """The cell registered under `filename` (views use it to name call sites)."""
    return _registered.get(filename)


def run_cell(cell: Cell, namespace: dict, code: str | None = None) -> None:
    """Execute the cell in `namespace`; `code` is the source after IPython's transforms."""
    compiled = compile(code if code is not None else cell.source, cell.filename, "exec")
    # Running user code in the user's namespace is the point of a cell magic.
    exec(compiled, namespace)  # noqa: S102


class CellError(GpuadError):
    """An error in a `%%gpukernel` cell, located in cell coordinates.

    IPython renders it through `_render_traceback_`: one short message, the
    offending cell line, and the internal traceback only when `verbose`.
    """

    def __init__(self, kind: str, message: str, *, doing: str, cell_line: int | None = None,
                 code: str = "", function: str = "", hint: str = "", verbose: bool = False):
        location = SourceLocation("cell", cell_line or 0, code.strip(), function) if cell_line else None
        super().__init__(f"{kind} while {doing}: {message}", location, hint)
        self.kind, self.detail, self.doing = kind, message, doing
        self.cell_line, self.code, self.verbose = cell_line, code, verbose

    def describe(self) -> list[str]:
        """The message as lines: what, where, the cell line, the hint."""
        where = ""
        if self.cell_line:
            where = f" at cell line {self.cell_line}"
            if self.location and self.location.function:
                where += f" (in {self.location.function})"
        lines = [f"{self.kind}{where} while {self.doing}:", f"    {self.detail}"]
        if self.cell_line and self.code:
            lines.append(f"  {self.cell_line:>4} | {self.code.rstrip()}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        if not self.verbose:
            lines.append("  (add --verbose to %%gpukernel for the full traceback)")
        return lines

    def _render_traceback_(self) -> list[str]:
        lines = self.describe()
        cause = self.__cause__
        if self.verbose and cause is not None:
            lines = ["".join(traceback.format_exception(cause)).rstrip(), ""] + lines
        return ["\x1b[1;31m" + lines[0] + "\x1b[0m", *lines[1:]] if not self.verbose else lines


def locate(cell: Cell, exc: BaseException) -> tuple[int | None, str]:
    """(body line, function) of the innermost place in the cell that `exc` points at."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        found = _locate_one(cell, exc)
        if found[0] is not None:
            return found
        exc = exc.__cause__ or exc.__context__
    return None, ""


def _locate_one(cell: Cell, exc: BaseException) -> tuple[int | None, str]:
    if isinstance(exc, SyntaxError) and exc.filename == cell.filename:
        return exc.lineno, ""
    location = getattr(exc, "location", None)
    if isinstance(exc, GpuadError) and location is not None and location.filename == cell.filename:
        return location.line, location.function
    line, function = None, ""
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == cell.filename:
            line, function = lineno, frame.f_code.co_name
    return line, ("" if function == "<module>" else function)


def cell_error(cell: Cell, exc: BaseException, *, doing: str, verbose: bool = False) -> CellError:
    """Translate any exception raised while handling `cell` into a `CellError`."""
    body_line, function = locate(cell, exc)
    kind = type(exc).__name__
    if isinstance(exc, GpuadError):
        message, hint = exc.message, exc.hint
        if exc.location is not None and body_line is None:
            message = f"{exc.location}: {message}"  # a location outside the cell: keep it
    elif isinstance(exc, SyntaxError):
        message, hint = exc.msg, ""
    else:
        message, hint = str(exc) or kind, ""
    return CellError(
        kind, message, doing=doing,
        cell_line=cell.cell_line(body_line) if body_line else None,
        code=cell.text_of(body_line) if body_line else "",
        function=function, hint=hint, verbose=verbose,
    )
