"""The outline of a module's text: which lines belong to which function.

LLVM IR (`define … { … }`) and PTX (`.entry`/`.func … { … }`) are both
split into function spans so that views can fold, pick and diff by
function. Text only: no LLVM is loaded, so it works on any machine.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# `@"quoted name"` (numba's mangled symbols) or `@plain.name`, before the `(`.
_LLVM_SYMBOL = re.compile(r'@(?:"((?:[^"\\]|\\.)*)"|([-\w$.]+))\s*\(')
_PTX_FUNCTION = re.compile(r"\.(entry|func)\s+(?:\([^)]*\)\s*)?([\w$.]+)")


@dataclass(frozen=True)
class FunctionSpan:
    """A function body: lines `start` (its header) up to `end` (exclusive)."""

    name: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ModuleOutline:
    """The functions a module defines, in text order."""

    functions: tuple[FunctionSpan, ...]
    line_count: int

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.functions]

    def function(self, name: str) -> FunctionSpan | None:
        return next((f for f in self.functions if f.name == name), None)

    def segments(self) -> list[tuple[FunctionSpan | None, int, int]]:
        """The whole module as consecutive (function or None, start, end) runs."""
        runs, cursor = [], 0
        for fn in self.functions:
            if fn.start > cursor:
                runs.append((None, cursor, fn.start))
            runs.append((fn, fn.start, fn.end))
            cursor = fn.end
        if cursor < self.line_count:
            runs.append((None, cursor, self.line_count))
        return runs


def llvm_outline(text: str) -> ModuleOutline:
    """Function definitions of an LLVM IR module (`define` up to the closing `}`)."""
    lines = text.splitlines()
    functions, start, name = [], None, ""
    for i, line in enumerate(lines):
        if start is None and line.startswith("define "):
            match = _LLVM_SYMBOL.search(line)
            start, name = i, (match.group(1) or match.group(2)) if match else f"<line {i + 1}>"
            if line.rstrip().endswith("}"):  # a one-line body
                functions.append(FunctionSpan(name, start, i + 1))
                start = None
        elif start is not None and line.startswith("}"):
            functions.append(FunctionSpan(name, start, i + 1))
            start = None
    return ModuleOutline(tuple(functions), len(lines))


def ptx_outline(text: str) -> ModuleOutline:
    """Kernels and device functions of a PTX module; `.extern` prototypes are skipped."""
    lines = text.splitlines()
    functions, i = [], 0
    while i < len(lines):
        match = _PTX_FUNCTION.search(lines[i])
        if match and not lines[i].lstrip().startswith("//"):
            body = _ptx_body_start(lines, i)
            if body is not None:
                end = next((j for j in range(body, len(lines)) if lines[j].startswith("}")), len(lines) - 1)
                functions.append(FunctionSpan(match.group(2), i, end + 1))
                i = end
        i += 1
    return ModuleOutline(tuple(functions), len(lines))


def _ptx_body_start(lines: list[str], header: int) -> int | None:
    """The line of the `{` opening a definition, or None for a prototype (ends in `;`)."""
    for j in range(header, len(lines)):
        stripped = lines[j].strip()
        if stripped.startswith("{") or (j > header and stripped.endswith("{")):
            return j
        if stripped.endswith(";"):
            return None
    return None


def outline(text: str, language: str) -> ModuleOutline:
    """The outline for `language` ("llvm" or "ptx")."""
    return ptx_outline(text) if language == "ptx" else llvm_outline(text)


def defined_functions(text: str) -> list[str]:
    """Names of the functions an LLVM module defines, in order."""
    return llvm_outline(text).names
