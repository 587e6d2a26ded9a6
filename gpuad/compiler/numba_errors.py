"""numba's compile errors in the user's terms: the line of the kernel, the key sentence, a hint.

numba reports a typing failure as a long text: nested "Failed in ... pipeline" lines, candidate
lists, and `File "x.py", line N:` markers for each frame. A user needs the kernel's line,
the one sentence that says what failed, and what to do about it.
"""
from __future__ import annotations

import linecache
import re

from gpuad.errors import LoweringError, SourceLocation

_TYPING_AT = re.compile(r"During: typing of [^\n]*? at (?P<file>[^\n(]+) \((?P<line>\d+)\)")
_FILE_LINE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+):')
_UNDEFINED = re.compile(r"(?:[Uu]ntyped global name|NameError: name) '(?P<name>\w+)'")
_NOISE = ("Failed in ", "During:", "There are ", "- Of which", "Overload of", "With argument", "No match")

# (pattern in numba's message, hint): the mistakes a newcomer makes first
_HINTS = [
    (re.compile(r"setitem\(.*\bnone\)"),
    "a derivative that is None was stored into an array: integers (and Const arguments) have no "
    "derivative; pass the value as a float (`Active(float(n[i]))`) or do not store that one"),
    (re.compile(r"No conversion from \w+ to none"),
     "a kernel returns nothing: write its results into an output array argument"),
    (_UNDEFINED,
     "`{name}` is not defined where the kernel was created: check its spelling, or define or import it"),
]


def numba_failure(exc: Exception, kernel_name: str, fallback: SourceLocation, target: str) -> LoweringError:
    """The LoweringError for numba's failure `exc` compiling kernel `kernel_name`."""
    text = str(exc)
    return LoweringError(f"numba could not compile kernel {kernel_name} for the {target} target: "
                         f"{key_sentence(text)}", user_location(text, fallback), hint=hint_for(text, target))


def user_location(text: str, fallback: SourceLocation) -> SourceLocation:
    """The first line numba names in the kernel's own file; for an undefined name that numba
    places nowhere, the kernel's first line using it; else `fallback` (the kernel's def)."""
    for pattern in (_TYPING_AT, _FILE_LINE):
        for m in pattern.finditer(text):
            file = m.group("file").strip()
            if file == fallback.filename or fallback.filename.endswith(("/" + file, "\\" + file)):
                line = int(m.group("line"))
                code = _line_text(text, m) or linecache.getline(fallback.filename, line).strip() or "kernel"
                return SourceLocation(fallback.filename, line, code, fallback.function)
    if m := _UNDEFINED.search(text):
        lines = linecache.getlines(fallback.filename)
        for number in range(fallback.line, len(lines) + 1):
            if re.search(rf"\b{m.group('name')}\b", lines[number - 1]):
                return SourceLocation(fallback.filename, number, lines[number - 1].strip(), fallback.function)
    return fallback


def _line_text(text: str, match: re.Match) -> str:
    """The source line numba prints under a `File ..., line N:` marker (the one before `^`)."""
    lines = text[match.end():].splitlines()
    for k, line in enumerate(lines[:12]):
        if line.strip().startswith("^") and k > 0:
            return lines[k - 1].strip()
    return ""


def key_sentence(text: str) -> str:
    """numba's message up to its first source excerpt, without the pipeline and candidate-list noise."""
    head = text.split('File "', 1)[0]
    kept = [line.strip().removeprefix(">>> ") for line in head.splitlines()
            if line.strip() and not line.strip().startswith(_NOISE)]
    return " ".join(kept[:3]) or text.strip().splitlines()[0]


def hint_for(text: str, target: str) -> str:
    for pattern, hint in _HINTS:
        if m := pattern.search(text):
            return hint.format(**m.groupdict())
    if target == "cpu" and re.search(r"shared|syncthreads|threadIdx\.[yz]|blockIdx\.[yz]", text):
        return ("the cpu target emulates 1-D grids, atomics and local arrays; shared memory and "
                "syncthreads need the cuda target")
    return ("the kernel uses something numba cannot compile here (numba's message above); "
            "kernels take arrays and scalars and write results into arrays")
