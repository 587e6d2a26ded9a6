"""Source ↔ IR ↔ PTX line mapping, from the debug locations numba and NVVM keep.

The cuda target lowers with numba-cuda's `lineinfo` (a compile unit of kind
`DebugDirectivesOnly`: a `!dbg` location on each instruction, no variables kept alive,
no change to optimisation), and NVVM turns those locations into PTX `.loc` directives.
The record keeps the IR and PTX without that debug info — the text reads as before and
the PTX that is loaded carries no line table — and, beside them, the map this module
reads off the debug info before removing it: for each line of each artefact, the
(file, line) locations it was generated from (an inlined line names its call site too).

`line_map(...)` packs the map compactly for the record's JSON (the JupyterLab viewer
reads it): per artefact, runs of consecutive lines sharing their locations.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

Location = tuple[str, int]  # (absolute file path, 1-based line)

_MD_LINE = re.compile(r"^!(\d+)\s*=\s*(.*)$")
_NAMED_MD = re.compile(r"^!([A-Za-z_.][-\w.]*)\s*=\s*!\{(.*)\}\s*$")
_MD_REF = re.compile(r"!(\d+)\b")
_DBG_ATTACHMENT = re.compile(r"\s*,?\s*!dbg !(\d+)")
_DBG_INTRINSIC = re.compile(r'@"?llvm\.dbg\.(?:declare|value|label|assign)"?\(')
_FIELD = re.compile(r'(\w+):\s*(!\d+|"(?:[^"\\]|\\.)*"|-?\d+)')
# Module flags that only debug info needs; the verifier wants them only with it.
_DEBUG_FLAGS = ('"Dwarf Version"', '"Debug Info Version"')


@dataclass
class Mapped:
    """An artefact's text as the record keeps it, and the locations of each of its lines."""

    text: str
    # Per line of `text` (0-based): the source lines it comes from, innermost first
    # (an inlined line, then where it was inlined); () where the compiler kept none.
    locations: list[tuple[Location, ...]] = field(default_factory=list)


# ---------------------------------------------------------------------------------- LLVM IR

def locations_only(ir_text: str) -> str:
    """The IR without its `llvm.dbg.*` variable records (calls and declarations), keeping the
    `!dbg` locations that become PTX `.loc` lines. The viewer needs only the locations, and NVVM
    refuses some records numba-cuda writes even in line-info mode (a `llvm.dbg.value` of a
    derivative's temporary: "Symbol name with unsupported characters", ERROR_COMPILATION)."""
    return "\n".join(line for line in ir_text.split("\n") if not _DBG_INTRINSIC.search(line))


def strip_ir(ir_text: str) -> Mapped:
    """The IR without its debug info (`!dbg` attachments, `llvm.dbg.*` calls, DI metadata), and
    the location each remaining line had. Metadata the module keeps for other reasons
    (`nvvm.annotations`, branch weights, ranges) stays, renumbered from 0 in its order."""
    lines = ir_text.split("\n")
    nodes = {int(m.group(1)): m.group(2) for line in lines if (m := _MD_LINE.match(line))}
    kept_lines: list[str] = []
    locations: list[tuple[Location, ...]] = []
    roots: set[int] = set()
    resolve = _Resolver(nodes)
    for line in lines:
        if _MD_LINE.match(line):
            kept_lines.append(line)
            locations.append(())
            continue
        if _DBG_INTRINSIC.search(line):
            continue  # a call of, or the declaration of, llvm.dbg.declare / llvm.dbg.value
        attached = _DBG_ATTACHMENT.search(line)
        where = resolve.location(int(attached.group(1))) if attached else ()
        line = _DBG_ATTACHMENT.sub("", line) if attached else line
        if named := _NAMED_MD.match(line):
            line = _named_without_debug(named, nodes)
            if line is None:
                continue
        roots.update(int(r) for r in _MD_REF.findall(line))
        kept_lines.append(line)
        locations.append(where)
    keep = _reachable(roots, nodes)
    renumber = {old: new for new, old in enumerate(sorted(keep))}
    out_lines: list[str] = []
    out_locations: list[tuple[Location, ...]] = []
    for line, where in zip(kept_lines, locations):
        if (m := _MD_LINE.match(line)) and int(m.group(1)) not in keep:
            continue
        if not line.strip() and out_lines and not out_lines[-1].strip():
            continue  # the blank line that separated a dropped node
        out_lines.append(_MD_REF.sub(lambda r: f"!{renumber.get(int(r.group(1)), r.group(1))}", line))
        out_locations.append(where)
    while len(out_lines) > 1 and not out_lines[-1].strip() and not out_lines[-2].strip():
        out_lines.pop()
        out_locations.pop()
    return Mapped("\n".join(out_lines), out_locations)


def _named_without_debug(named: re.Match, nodes: dict[int, str]) -> str | None:
    """A named-metadata line without its debug operands; None when nothing is left."""
    name = named.group(1)
    if name == "llvm.dbg.cu":
        return None
    operands = [o.strip() for o in named.group(2).split(",") if o.strip()]
    if name == "llvm.module.flags":
        operands = [o for o in operands
                    if not any(f in nodes.get(_ref(o), "") for f in _DEBUG_FLAGS)]
    if not operands:
        return None
    return f"!{name} = !{{ {', '.join(operands)} }}"


def _ref(operand: str) -> int:
    return int(operand[1:]) if operand.startswith("!") and operand[1:].isdigit() else -1


def _reachable(roots: set[int], nodes: dict[int, str]) -> set[int]:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n in seen or n not in nodes:
            continue
        seen.add(n)
        stack.extend(int(r) for r in _MD_REF.findall(nodes[n]))
    return seen


class _Resolver:
    """Reads DILocation / DISubprogram / DILexicalBlock / DIFile nodes into (file, line)."""

    def __init__(self, nodes: dict[int, str]):
        self.nodes = nodes
        self._fields: dict[int, dict[str, str]] = {}
        self._locations: dict[int, tuple[Location, ...]] = {}

    def fields(self, n: int) -> dict[str, str]:
        if n not in self._fields:
            self._fields[n] = dict(_FIELD.findall(self.nodes.get(n, "")))
        return self._fields[n]

    def location(self, n: int) -> tuple[Location, ...]:
        """The location node `n` names, then the chain of places it was inlined at."""
        if n not in self._locations:
            self._locations[n] = ()  # a cycle in malformed metadata ends here
            f = self.fields(n)
            path, line = self.file(n), f.get("line")
            here: tuple[Location, ...] = ((path, int(line)),) if path and line and int(line) > 0 else ()
            inlined = f.get("inlinedAt")
            self._locations[n] = here + (self.location(_ref(inlined)) if inlined else ())
        return self._locations[n]

    def file(self, n: int, depth: int = 0) -> str | None:
        f = self.fields(n)
        if "filename" in f:
            return _path(_unquote(f.get("directory", '""')), _unquote(f["filename"]))
        if depth > 32:
            return None
        for key in ("file", "scope"):
            if key in f and (path := self.file(_ref(f[key]), depth + 1)):
                return path
        return None


def _unquote(text: str) -> str:
    return text[1:-1].replace('\\"', '"') if text.startswith('"') else text


def _path(directory: str, filename: str) -> str:
    return filename if os.path.isabs(filename) or not directory else os.path.join(directory, filename)


# -------------------------------------------------------------------------------------- PTX

_PTX_LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)\s+\d+(?:.*?\binlined_at\s+(\d+)\s+(\d+)\s+\d+)?")
_PTX_FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"((?:[^"\\]|\\.)*)"')
_PTX_SECTION = re.compile(r"^\s*\.section\s+\.debug_")
_PTX_FUNC_END = re.compile(r"^\$L__func_end\d+:\s*$")


def strip_ptx(ptx: str) -> Mapped:
    """The PTX without `.loc`, `.file` and debug sections, and each remaining line's location:
    a `.loc` holds for the lines after it, up to the next one or the end of the function."""
    lines = ptx.split("\n")
    files = {int(m.group(1)): _unquote('"' + m.group(2) + '"') for line in lines
             if (m := _PTX_FILE.match(line))}
    out_lines: list[str] = []
    out_locations: list[tuple[Location, ...]] = []
    current: tuple[Location, ...] = ()
    in_section = False
    for line in lines:
        if in_section:
            in_section = line.strip() != "}"
            continue
        if _PTX_SECTION.match(line):
            in_section = True
            continue
        if m := _PTX_LOC.match(line):
            current = _ptx_location(files, m)
            continue
        if _PTX_FILE.match(line) or _PTX_FUNC_END.match(line):
            continue
        if line.startswith("}") or line.startswith((".visible", ".func", ".entry", ".weak")):
            current = ()  # a function ends or begins: its locations do not reach further
        out_lines.append(line)
        out_locations.append(current if line.strip() else ())
    return Mapped("\n".join(out_lines), out_locations)


def _ptx_location(files: dict[int, str], m: re.Match) -> tuple[Location, ...]:
    where = []
    for file_group, line_group in ((1, 2), (3, 4)):
        if m.group(file_group) is None:
            continue
        path, line = files.get(int(m.group(file_group))), int(m.group(line_group))
        if path and line > 0:
            where.append((path, line))
    return tuple(where)


# ------------------------------------------------------------------------- the record's map

_LINE_LABEL = re.compile(r"^\s*# line (\d+):")


def derivative_lines(source: str) -> list[tuple[int, int, int]]:
    """Runs `(first, last, user line)` of a generated derivative's lines (1-based, inclusive):
    each `# line N:` comment labels the code after it, up to the next label, another comment
    (`# reverse sweep`) or the function's end (`emit.render` writes one per change of line)."""
    runs: list[tuple[int, int, int]] = []
    label: int | None = None
    lines = source.split("\n")
    for k, line in enumerate(lines, start=1):
        if m := _LINE_LABEL.match(line):
            label = int(m.group(1))
        elif line.lstrip().startswith(("#", "def ")) or not line.strip():
            label = None
        if label is None:
            continue
        if runs and runs[-1][1] == k - 1 and runs[-1][2] == label:
            runs[-1] = (runs[-1][0], k, label)
        else:
            runs.append((k, k, label))
    return runs


def line_map(artefacts: dict[str, Mapped], sources: dict[str, tuple[str, int]],
             derivatives: dict[int, str]) -> dict:
    """The JSON-ready map the record keeps (`CompilationRecord.line_map`).

    `artefacts`: name → mapped text (`ir_before_link`, `ir_after_link`, `ptx`).
    `sources`: each shown source (`kernel`, `job N` for the function job N differentiates,
    `derivative N` for its generated derivative) → (file, line of its first shown line).
    `derivatives`: job id → derivative source, whose `# line N:` labels name lines of
    the function `job N` differentiates.

    Layout: `files` lists paths; a location is the pair (index into `files`, line). Each
    artefact is a list of runs `[first, last, f1, l1, f2, l2, ...]`: lines first..last
    (1-based, inclusive) come from locations (f1, l1), (f2, l2)... (innermost first).
    `sources` maps a shown source to `[file index, first line]`; `derivative_lines` maps a job
    id to runs `[first, last, user line]` of its derivative source.
    """
    files: dict[str, int] = {}

    def index(path: str) -> int:
        return files.setdefault(path, len(files))

    packed_sources = {name: [index(path), first] for name, (path, first) in sources.items()}
    packed: dict[str, list[list[int]]] = {}
    for name, mapped in artefacts.items():
        runs: list[list[int]] = []
        previous: tuple[Location, ...] = ()
        for k, where in enumerate(mapped.locations, start=1):
            if where and where == previous and runs and runs[-1][1] == k - 1:
                runs[-1][1] = k
            elif where:
                runs.append([k, k, *(v for path, line in where for v in (index(path), line))])
            previous = where
        packed[name] = runs
    return {"files": list(files), **packed, "sources": packed_sources,
            "derivative_lines": {str(job): [list(run) for run in derivative_lines(text)]
                                 for job, text in derivatives.items()}}


def python_source(function) -> tuple[str, int] | None:
    """(absolute file, first line) of a function's source as `inspect.getsource` shows it,
    in the form the compiler's debug info names the file; None when Python cannot find it."""
    import inspect

    try:
        first = inspect.getsourcelines(function)[1]
    except (OSError, TypeError):
        return None
    return os.path.abspath(function.__code__.co_filename), max(first, 1)
