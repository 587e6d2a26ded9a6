"""Rendering the normalised form back to Python source, and the namespace it runs in.

`Namespace` binds every global object the generated source refers to under a
name, by identity, renaming on clashes so that callees from different modules
can share one generated module. `Writer` collects indented lines. The
`*_text` helpers render atoms, expressions and targets; `primal_code` renders
a statement list unchanged (used to type the normalised function and as the
forward part of every derivative). Rule templates are filled in `gpuad.ad.rules`.
"""
from __future__ import annotations

import ast
import linecache
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass

from gpuad.ad import ir


class Namespace:
    """Name → object bindings of one generated module, resolved by identity."""

    def __init__(self):
        self.objects: dict[str, object] = {}

    def bind(self, name: str, obj: object) -> str:
        """Bind `obj` under `name`, or under `name_1`, `name_2`... if `name` is taken."""
        candidate, n = name, 0
        while candidate in self.objects and self.objects[candidate] is not obj:
            n += 1
            candidate = f"{name}_{n}"
        self.objects[candidate] = obj
        return candidate


class Writer:
    """Indented source lines."""

    def __init__(self, indent: int = 0):
        self.lines: list[str] = []
        self.level = indent

    def line(self, text: str) -> None:
        for part in text.split("\n"):
            self.lines.append("    " * self.level + part)

    def extend(self, other: Writer) -> None:
        for text in other.lines:
            self.lines.append("    " * self.level + text)

    @contextmanager
    def block(self, header: str):
        self.line(header)
        self.level += 1
        mark = len(self.lines)
        yield
        if len(self.lines) == mark:
            self.line("pass")
        self.level -= 1

    def text(self) -> str:
        return "\n".join(self.lines)


def const_text(value) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "1e999" if value > 0 else "-1e999"
        if math.isnan(value):
            return "(1e999 - 1e999)"
    return repr(value)


def atom_text(a) -> str:
    if isinstance(a, ir.Const):
        return const_text(a.value)
    return a.name


def index_text(index: tuple) -> str:
    return ", ".join(slice_text(i) if isinstance(i, ir.Slice) else atom_text(i) for i in index)


def slice_text(s: ir.Slice) -> str:
    start, stop, step = ("" if a == ir.Const(None) else atom_text(a) for a in s.atoms)
    return f"{start}:{stop}:{step}" if step else f"{start}:{stop}"


def target_text(target) -> str:
    if isinstance(target, str):
        return target
    inner = ", ".join(target_text(t) for t in target)
    return f"({inner},)" if len(target) == 1 else f"({inner})"


def expr_text(e) -> str:
    """Python source of one right-hand side."""
    if isinstance(e, ir.Copy):
        return atom_text(e.a)
    if isinstance(e, ir.BinOp | ir.Compare):
        return f"{atom_text(e.a)} {e.op} {atom_text(e.b)}"
    if isinstance(e, ir.UnaryOp):
        sep = " " if e.op == "not" else ""
        return f"{e.op}{sep}{atom_text(e.a)}"
    if isinstance(e, ir.Call):
        return f"{e.name}({', '.join(atom_text(a) for a in e.args)})"
    if isinstance(e, ir.Load):
        return f"{atom_text(e.array)}[{index_text(e.index)}]"
    if isinstance(e, ir.Attr):
        return f"{e.var}.{e.attr}"
    if isinstance(e, ir.Pack):
        return target_text(tuple(atom_text(a) for a in e.items))
    if isinstance(e, ir.TupleGet):
        return f"{e.var}[{e.k}]"
    if isinstance(e, ir.AutodiffCall):
        wrapped = [f"{cname}({', '.join(atom_text(a) for a in atoms)})" for _, cname, atoms in e.wrappers]
        return f"{e.name}({', '.join([e.mode_name, e.f_name, *wrapped])})"
    raise TypeError(e)


def range_text(loop: ir.Loop) -> str:
    start, stop, step = (atom_text(a) for a in (loop.start, loop.stop, loop.step))
    if step == "1":
        return f"range({stop})" if start == "0" else f"range({start}, {stop})"
    return f"range({start}, {stop}, {step})"


def loop_header(loop: ir.Loop) -> str:
    if loop.var is None:
        return "while True:"
    return f"for {loop.var} in {range_text(loop)}:"


def index_text_of(s: ir.Loop, k: str) -> str:
    """The loop variable's value in iteration `k` (an expression text)."""
    start, step = atom_text(s.start), atom_text(s.step)
    index = k if step == "1" else f"({k}) * {step}" if " " in k else f"{k} * {step}"
    return index if start == "0" else f"{start} + {index}"


def store_text(s: ir.Store, array: str | None = None, value: str | None = None) -> str:
    """`a[i] = v` or, for an increment, `a[i] += v`; `array` / `value` replace the store's own."""
    value = atom_text(s.value) if value is None else value
    return f"{array or s.array}[{index_text(s.index)}] {s.increment}= {value}"


def primal_code(stmts: list, expr=expr_text, filename: str | None = None) -> list:
    """Statements as plain Python (no derivative code), in the nested form `render` takes; with
    `filename`, each statement's code is labelled with its source line (`SourceLine`)."""
    code = []
    for s in stmts:
        if filename is not None:
            code.append(source_line(filename, s.line))
        if isinstance(s, ir.Assign):
            code.append(f"{target_text(s.target)} = {expr(s.value)}")
        elif isinstance(s, ir.Store):
            code.append(store_text(s))
        elif isinstance(s, ir.If):
            code.append((f"if {atom_text(s.test)}:", primal_code(s.body, expr, filename)))
            if s.orelse:
                code.append(("else:", primal_code(s.orelse, expr, filename)))
        elif isinstance(s, ir.Loop):
            exit_ = [(f"if {s.exit_flag}:", ["break"])] if s.exit_flag else []
            code.append((loop_header(s), primal_code(s.body, expr, filename) + exit_))
        else:
            raise TypeError(s)
    return code


def emit_function(fir: ir.FunctionIR, expr=expr_text) -> str:
    """The normalised function as a standalone `def` (for typing and display)."""
    w = Writer()
    with w.block(f"def {fir.name}({', '.join(fir.params)}):"):
        for line in render(primal_code(fir.body, expr)):
            w.line(line)
        if fir.ret is not None:
            w.line(f"return {target_text(fir.ret)}")
    return w.text() + "\n"


def names_read(line: str) -> set:
    """Names a generated line reads (to know which values the reverse sweep needs)."""
    tree = ast.parse(line.strip() if not line.strip().endswith(":") else line.strip() + " pass")
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def one_text(ty) -> str:
    from numba.core import types
    return "np.float32(1.0)" if types.unliteral(ty) == types.float32 else "1.0"


def zero_text(ty) -> str:
    from numba.core import types
    ty = types.unliteral(ty)
    if ty == types.float64:
        return "0.0"
    if ty == types.float32:
        return "np.float32(0.0)"
    if isinstance(ty, types.Boolean):
        return "False"
    if isinstance(ty, types.Integer):
        return "0"
    return "None"


def cast_text(text: str, ty) -> str:
    from numba.core import types
    ty = types.unliteral(ty)
    if ty in (types.float64, types.int64) or not isinstance(ty, types.Number | types.Boolean):
        return text
    if isinstance(ty, types.Boolean):
        return f"bool({text})"
    return f"np.{ty}({text})"


@dataclass(frozen=True)
class SourceLine:
    """In a code list: the code after it comes from user line `line` (rendered `# line N: text`)."""

    line: int
    text: str


SOURCE_TEXT_WIDTH = 60  # a `# line N:` comment shows at most this much of the user's line


def source_line(filename: str, line: int) -> SourceLine:
    """The label of code generated from `line` of `filename`: the line stripped and shortened."""
    text = "".join(c if c.isprintable() else " " for c in linecache.getline(filename, line).strip())
    if len(text) > SOURCE_TEXT_WIDTH:
        text = text[:SOURCE_TEXT_WIDTH - 3] + "..."
    return SourceLine(line, text)


def labelled(label: SourceLine, code: list) -> list:
    """`code` preceded by its source line's label (nothing for no code)."""
    return [label, *code] if code else []


def render(code: list, level: int = 0, last: list | None = None) -> list:
    """Lines of a nested code list: items are strings, (header, [body]) or `SourceLine` labels.

    A label is written only where the source line changes (`last` holds the line of the label
    written last); a comment line (`# reverse sweep`) starts over, so the next label is written.
    """
    last = [None] if last is None else last
    out = []
    for item in code:
        if isinstance(item, SourceLine):
            if item.line != last[0]:
                out.append("    " * level + f"# line {item.line}: {item.text}".rstrip())
                last[0] = item.line
        elif isinstance(item, str):
            out.append("    " * level + item)
            if item.startswith("#"):
                last[0] = None
        else:
            header, body = item
            out.append("    " * level + header)
            out += render(body, level + 1, last) if body else ["    " * (level + 1) + "pass"]
    return out


def _statement(line: str) -> ast.stmt | None:
    """A generated line (or block header, given a body) parsed; None for a comment, `else:` or
    anything that is not one statement."""
    text = line.strip()
    if text.endswith(":"):
        text += " pass"
    try:
        tree = ast.parse(text).body
    except SyntaxError:
        return None
    return tree[0] if len(tree) == 1 else None


def _names(node: ast.AST, ctx: type) -> set:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}


def _mentions(item, name: str) -> bool:
    """`name` appears anywhere in a code item (a conservative test: any word equal to it)."""
    if isinstance(item, SourceLine):
        return False
    if isinstance(item, str):
        return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", item) is not None
    header, body = item
    return _mentions(header, name) or any(_mentions(i, name) for i in body)


def first_use_overwrites(name: str, code: list) -> bool:
    """In straight-line order, `code`'s first use of `name` assigns it without reading it, or
    `code` never uses it: a value `name` held before `code` is never read. Conservative: a
    block (if, for) that mentions `name` at all counts as a read."""
    for item in code:
        if isinstance(item, SourceLine) or isinstance(item, str) and item.lstrip().startswith("#"):
            continue
        if not _mentions(item, name):
            continue
        return _overwrites(_statement(item) if isinstance(item, str) else None, name)
    return True


def live_inits(inits: list, rest: list) -> list:
    """The initialisations `name = value` among `inits` whose value `rest` may read (pre-inits
    that `rest` overwrites before any read, or never uses, are dead lines).

    `first_use_overwrites` for every name in one walk over `rest`: asked per name, the walk was
    quadratic in the derivative's length (each adjoint's init scanned the reverse sweep)."""
    undecided = {line.split(" = ", 1)[0] for line in inits}
    read = set()
    for item in rest:
        if not undecided:
            break
        if isinstance(item, SourceLine) or isinstance(item, str) and item.lstrip().startswith("#"):
            continue
        met = undecided & _words(item)
        if not met:
            continue
        undecided -= met
        stmt = _statement(item) if isinstance(item, str) else None
        read |= {name for name in met if not _overwrites(stmt, name)}
    return [line for line in inits if line.split(" = ", 1)[0] in read]


_WORD = re.compile(r"(?<![\w.])\w+")  # a name as `_mentions` matches one: not after a dot


def _words(item) -> set:
    """Every name `_mentions` finds in a code item."""
    if isinstance(item, SourceLine):
        return set()
    if isinstance(item, str):
        return set(_WORD.findall(item))
    header, body = item
    return _words(header).union(*(_words(i) for i in body))


def _overwrites(stmt: ast.stmt | None, name: str) -> bool:
    """`stmt`, the first to use `name`, assigns it without reading it."""
    if stmt is None or isinstance(stmt, ast.AugAssign) or name in _names(stmt, ast.Load):
        return False
    return isinstance(stmt, ast.Assign) and name in _names(stmt, ast.Store)


def _pure(node: ast.expr) -> bool:
    """An expression that computes a value and does nothing else: names, constants, arithmetic
    and `np.float32(...)` (no other calls, no subscripts)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and ast.unparse(n.func) != "np.float32" or isinstance(n, ast.Subscript):
            return False
    return True


def drop_dead_stores(code: list, after: list) -> list:
    """`code` (top-level statements a function ends with, before `after`) without the plain
    assignments whose name nothing after them uses (`d_s = 0.0` zeroing an adjoint no later
    line reads), and without the `SourceLine` labels left with no code."""
    kept: list = []
    for item in reversed(code):
        stmt = _statement(item) if isinstance(item, str) else None
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and _pure(stmt.value) and not any(_mentions(k, stmt.targets[0].id) for k in kept + after)):
            continue
        if isinstance(item, SourceLine) and not (kept and not isinstance(kept[-1], SourceLine)):
            continue
        kept.append(item)
    return kept[::-1]


def binds(code: list, name: str) -> bool:
    """Some line of `code` (nested blocks included) assigns `name` (or may: conservative)."""
    for item in code:
        if isinstance(item, SourceLine) or not _mentions(item, name):
            continue
        header = item if isinstance(item, str) else item[0]
        stmt = _statement(header)  # a header's own bindings: a for loop's variable, a walrus
        if stmt is None or name in _names(stmt, ast.Store):
            return True
        if not isinstance(item, str) and binds(item[1], name):
            return True
    return False
