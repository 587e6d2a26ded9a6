"""Short, readable forms of what the record spells out in full.

Mangled LLVM symbols (`_ZN13_3cdynamic_3e9reverse_fB2v3B72cw51c…E…`) become
their Python name (`<dynamic>.reverse_f…`), and call sites become places a
reader recognises: a path relative to the working directory, a file name,
or the notebook cell and line (`cell [3], line 5`). The views show the short
form and keep the full one in a tooltip.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ELLIPSIS = "…"

# numba escapes characters outside [A-Za-z0-9_] of a name component as `_xx` (hex).
_ESCAPE = re.compile(r"_([0-9a-f]{2})")


@dataclass(frozen=True)
class Short:
    """A short text for display and the full text it abbreviates (for a tooltip)."""

    text: str
    full: str

    @property
    def shortened(self) -> bool:
        return self.text != self.full


def demangle(symbol: str) -> tuple[str, bool] | None:
    """(dotted Python name, whether anything followed it) of an Itanium nested name, else None.

    Only the name is decoded: ABI tags (`B2v3`, numba's per-process counter
    and its hash of the target options) and the argument types after `E` are
    dropped, which the boolean reports.
    """
    if not symbol.startswith("_ZN"):
        return None
    parts, i, dropped = [], 3, False
    while i < len(symbol) and symbol[i] != "E":
        tag = symbol[i] == "B"
        if tag:
            i += 1
        digits = re.match(r"\d+", symbol[i:])
        if digits is None:
            return None
        length, i = int(digits.group()), i + len(digits.group())
        if length <= 0 or i + length > len(symbol):
            if tag and parts:  # a malformed tag after the name: keep the name
                return ".".join(parts), True
            return None
        if tag:
            dropped = True
        else:
            parts.append(_unescape(symbol[i:i + length]))
        i += length
    if not parts:
        return None
    return ".".join(parts), dropped or i + 1 < len(symbol)


def _unescape(component: str) -> str:
    def one(match: re.Match) -> str:
        char = chr(int(match.group(1), 16))
        return match.group(0) if char.isalnum() or char == "_" else char

    return _ESCAPE.sub(one, component)


def truncate(text: str, limit: int = 48) -> str:
    """`text` cut in the middle with an ellipsis when longer than `limit`."""
    if len(text) <= limit:
        return text
    head = (limit - 1) * 2 // 3
    return text[:head] + ELLIPSIS + text[len(text) - (limit - 1 - head):]


def short_symbol(symbol: str, limit: int = 48) -> Short:
    """The Python name of a mangled symbol, with an ellipsis for what was left out."""
    decoded = demangle(symbol)
    if decoded is None:
        return Short(truncate(symbol, limit), symbol)
    name, dropped = decoded
    if len(name) + dropped > limit:
        return Short(truncate(name + ELLIPSIS, limit), symbol)
    return Short(name + (ELLIPSIS if dropped else ""), symbol)


# A numba symbol in IR or PTX text: the Itanium prefix and its [A-Za-z0-9_] body
# (PTX parameter names append `_param_N` to the function's symbol).
MANGLED = re.compile(r"_ZN\w+")
_PTX_PARAM = re.compile(r"^(.*E)(_param_\d+)$")


def readable_symbol(symbol: str) -> Short:
    """The whole dotted Python name of a symbol (no ellipsis, nothing cut), the symbol as `.full`.

    `_ZN5gpuad7targets4cuda17cuda_thread_indexB2v2B100cw51c…E5Array…` reads
    `gpuad.targets.cuda.cuda_thread_index`; a PTX parameter keeps its
    `_param_N`; names that are not mangled are returned as they are.
    """
    param = _PTX_PARAM.match(symbol)
    base, suffix = (param.group(1), param.group(2)) if param else (symbol, "")
    decoded = demangle(base)
    if decoded is None:
        return Short(symbol, symbol)
    return Short(decoded[0] + suffix, symbol)


def readable_labels(symbols: list[str]) -> list[str]:
    """`readable_symbol` of each, made distinct: a name shared by several symbols gets ` #2`, ` #3`…"""
    labels = [readable_symbol(s).text for s in symbols]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label} #{seen[label]}")
    return out


def split_call_site(call_site: str) -> tuple[str, int | None]:
    """("file", line) of a `"file:line"` call site; the line is None when absent."""
    filename, sep, line = call_site.rpartition(":")
    if sep and line.isdigit():
        return filename, int(line)
    return call_site, None


def short_location(call_site: str, *, cwd: str | os.PathLike | None = None) -> Short:
    """Where a call is, as a reader of the notebook would name it.

    `%%gpukernel` cells and IPython cells become `cell [N], line L` (the cell
    line, counting the `%%gpukernel` line); files under the working directory
    a relative path; other files their name. The full call site stays in
    `.full`.
    """
    filename, line = split_call_site(call_site)
    if line is None:
        return Short(call_site, call_site)
    cell = _cell_label(filename, line)
    if cell is not None:
        return Short(cell, call_site)
    if filename.startswith("<"):  # <string>, <gpuad-…>: nothing shorter to say
        return Short(call_site, call_site)
    return Short(f"{_short_path(filename, cwd)}:{line}", call_site)


def _short_path(filename: str, cwd) -> str:
    path = Path(filename)
    if not path.is_absolute():
        return filename
    try:
        return path.relative_to(Path(cwd) if cwd is not None else Path.cwd()).as_posix()
    except ValueError:
        return path.name


def _cell_label(filename: str, line: int) -> str | None:
    from gpuad.notebook.cells import registered_cell

    cell = registered_cell(filename)
    if cell is not None:
        where = f"line {cell.cell_line(line)}"
        if cell.execution_count is not None:
            return f"cell [{cell.execution_count}], {where}"
        return f"%%gpukernel cell, {where}"
    number = ipython_cell_number(filename)
    return None if number is None else f"cell [{number}], line {line}"


def ipython_cell_number(filename: str, shell=None) -> int | None:
    """The execution count of the IPython cell compiled under `filename`, if any.

    IPython's `CachingCompiler.cache` (and ipykernel's subclass, whose names are
    `/tmp/ipykernel_<pid>/<hash>.py`) records each cell's filename with its
    execution count in `_filename_map`; `format_code_name` is its public face.
    `shell` defaults to the running IPython, if any.
    """
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return None
        shell = get_ipython()
    compiler = getattr(shell, "compile", None)
    if compiler is None:
        return None
    number = getattr(compiler, "_filename_map", {}).get(filename)
    if number is None:
        try:
            label = compiler.format_code_name(filename)
        except Exception:  # noqa: BLE001 (a front end's compiler may not have it)
            label = None
        found = re.fullmatch(r"In\s*\[(\d+)\]", label[1]) if label else None
        number = int(found.group(1)) if found else None
    return number if isinstance(number, int) else None


def running_cell_number(shell=None, *, depth: int = 64) -> int | None:
    """The execution count of the IPython cell whose code is running now, if any.

    Found on the call stack: a cell magic is called from the code IPython
    compiled for the cell. (`shell.execution_count` is no help: IPython 9
    advances it before running the cell, IPython 8 after.)
    """
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            break
        number = ipython_cell_number(frame.f_code.co_filename, shell)
        if number is not None:
            return number
        frame = frame.f_back
    return None
