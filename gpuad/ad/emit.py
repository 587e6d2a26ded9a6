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
import itertools
import linecache
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass

from gpuad.ad import ir, naming


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

    Each list is first tidied where that keeps every value (`fold_zero_inits`,
    `merge_shadow_increments`, `fuse_guarded_increments`: fewer instructions in the kernel, the
    same numbers up to the sign of a zero adjoint and an fma's single rounding), then each shadow
    element an update reads is read as early as that reads the same value (`hoist_shadow_reads`).
    A label is written only where the source line changes (`last` holds the line of the label
    written last); a comment line (`# reverse sweep`) starts over, so the next label is written.
    """
    if last is None:  # the whole function: fusions that must see every use of a name
        code = hoist_shadow_reads(fuse_guarded_temporaries(tidied(code)))
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


def tidied(code: list) -> list:
    """`code` with each of its lists tidied (see `render`)."""
    code = fuse_guarded_increments(merge_shadow_increments(fold_zero_inits(code)))
    return [item if isinstance(item, str | SourceLine) else (item[0], tidied(item[1])) for item in code]


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


# -- tidying a code list: the same values in fewer instructions ---------------

_ZERO_F32 = "np.float32(0.0)"


def _is_code(item) -> bool:
    """A statement or block (not a label or a comment line)."""
    return not isinstance(item, SourceLine) and not (isinstance(item, str) and item.lstrip().startswith("#"))


def fold_zero_inits(code: list) -> list:
    """`d = np.float32(0.0)` ... `d += e` (the first use of `d`, in the same list) as `d = e`
    (`d -= e` as `d = -(e)`). `0 + e` is `e` except that it turns -0.0 into +0.0, so neither
    numba nor NVVM may fold it away: each zeroed adjoint cost an add (in loops, every iteration).
    Only float32 zeros: float32 is the narrowest float, so dropping the zero never changes the
    variable's type (a float64 zero would, where every increment is float32)."""
    code = list(code)
    k = 0
    while k < len(code):
        name = _zero_init_name(code[k])
        later = _first_use(code, k + 1, name) if name else None
        if later is not None and (folded := _folded_increment(code[later], name)) is not None:
            code[later] = folded
            del code[k]
            continue
        k += 1
    return code


def _zero_init_name(item) -> str | None:
    if isinstance(item, str) and item.endswith(f" = {_ZERO_F32}"):
        name = item[:-len(f" = {_ZERO_F32}")]
        return name if name.isidentifier() else None
    return None


def _first_use(code: list, start: int, name: str) -> int | None:
    for k in range(start, len(code)):
        if _is_code(code[k]) and _mentions(code[k], name):
            return k
    return None


def _folded_increment(item, name: str) -> str | None:
    stmt = _statement(item) if isinstance(item, str) else None
    if not (isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name
            and isinstance(stmt.op, ast.Add | ast.Sub) and name not in _names(stmt.value, ast.Load)):
        return None
    value = ast.unparse(stmt.value)
    if isinstance(stmt.op, ast.Sub):
        value = f"-{value}" if isinstance(stmt.value, ast.Name) else f"-({value})"
    return f"{name} = {value}"


def negated(partial: ast.expr) -> ast.expr:
    """`-partial`, a leading minus dropped rather than doubled (`acc - f * p` is `acc + f * -p`
    exactly, so a fused update carries the sign on its partial)."""
    if isinstance(partial, ast.UnaryOp) and isinstance(partial.op, ast.USub):
        return partial.operand
    return ast.UnaryOp(ast.USub(), partial)


def fuse_guarded_increments(code: list) -> list:
    """`d += guarded_mul(a, b)` as `d = guarded_add_mul(d, a, b)` (`d -= ...` with `-b`): the
    guard then selects between `d + a * b` and `d`, and NVVM fuses the multiply-add into one fma,
    which a select between the product and the add prevents. `d` is a name (an adjoint);
    increments of array elements are `merge_shadow_increments`' business."""
    return [_fused_increment(item) or item if isinstance(item, str) else item for item in code]


def _fused_increment(item: str) -> str | None:
    if "= guarded_mul(" not in item:  # cheap test first: parsing every line costs compile time
        return None
    stmt = _statement(item)
    if not (isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name)
            and isinstance(stmt.op, ast.Add | ast.Sub) and isinstance(stmt.value, ast.Call)
            and ast.unparse(stmt.value.func) == "guarded_mul" and len(stmt.value.args) == 2
            and not stmt.value.keywords):
        return None
    factor, partial = stmt.value.args
    if isinstance(stmt.op, ast.Sub):
        partial = negated(partial)
    indent = item[:len(item) - len(item.lstrip())]
    name = stmt.target.id
    return f"{indent}{name} = guarded_add_mul({name}, {ast.unparse(factor)}, {ast.unparse(partial)})"


def fuse_guarded_temporaries(code: list) -> list:
    """`t = guarded_mul(a, b)` ... `u = x + t` (or `t + x`, `x - t`) as `u = guarded_add_mul(x, a,
    ±b)` where that is the only read of `t` (a tangent or adjoint temporary of one operation),
    nothing in between rebinds a name of `a` or `b`, and no block lies in between. `t`'s
    definition and its zero pre-inits go. A tangent is mostly sums of such products (`t_q +
    guarded_mul(t_p, h)`), and the fused form lets NVVM use one fma for the multiply-add."""
    uses: dict = {}
    _count_uses(code, uses)
    fused: set = set()
    code = _fuse_in(code, uses, fused)
    return _without_zero_inits(code, fused) if fused else code


def _count_uses(code: list, uses: dict) -> None:
    """uses[name]: how many lines mention `name`, zero assignments `name = 0.0` left out."""
    for item in code:
        if isinstance(item, SourceLine):
            continue
        lines = [item] if isinstance(item, str) else [item[0]]
        if not isinstance(item, str):
            _count_uses(item[1], uses)
        for line in lines:
            zeroed = _zero_assigned(line)
            for word in _words(line) - {zeroed}:
                uses[word] = uses.get(word, 0) + 1


_ZERO_ASSIGNMENT = re.compile(r"\s*\w+ = [\w.(]*0[\d.e+-]*\)?$")  # what `_zero_assigned` may accept


def _assigned_name(stmt) -> str | None:
    """`name` of a statement `name = e`."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id
    return None


def _zero_assigned(line: str) -> str | None:
    """`name` of a line `name = <zero constant>` (`0.0`, `np.float32(0.0)`), else None."""
    if not _ZERO_ASSIGNMENT.match(line):
        return None
    stmt = _statement(line)
    if _assigned_name(stmt) is None:
        return None
    value = stmt.value
    if isinstance(value, ast.Call) and ast.unparse(value.func) in ("np.float32", "np.float64") \
            and len(value.args) == 1:
        value = value.args[0]
    return stmt.targets[0].id if isinstance(value, ast.Constant) and value.value == 0 else None


def _fuse_in(code: list, uses: dict, fused: set) -> list:
    code = [item if isinstance(item, str | SourceLine) else (item[0], _fuse_in(item[1], uses, fused))
            for item in code]
    k = 0
    while k < len(code):
        definition = _guarded_product(code[k])
        if definition is None or uses.get(definition[0]) != 2:
            k += 1
            continue
        name, factor, partial = definition
        read = _names(factor, ast.Load) | _names(partial, ast.Load)
        for j in range(k + 1, len(code)):
            item = code[j]
            if not _is_code(item):
                continue
            if not isinstance(item, str):
                break
            stmt = _statement(item)
            if _mentions(item, name):
                use = _fused_use(stmt, name, factor, partial)
                if use is not None:
                    code[j] = use
                    del code[k]
                    fused.add(name)
                    k -= 1
                break
            if stmt is None or _names(stmt, ast.Store) & read:
                break
        k += 1
    return code


def _guarded_product(item) -> tuple[str, ast.expr, ast.expr] | None:
    """(`t`, `a`, `b`) of a line `t = guarded_mul(a, b)` whose arguments read no memory."""
    stmt = _statement(item) if isinstance(item, str) and " = guarded_mul(" in item else None
    if _assigned_name(stmt) is None:
        return None
    call = stmt.value
    if not (isinstance(call, ast.Call) and ast.unparse(call.func) == "guarded_mul" and len(call.args) == 2
            and not call.keywords and all(_pure_value(a) for a in call.args)):
        return None
    return stmt.targets[0].id, call.args[0], call.args[1]


def _fused_use(stmt, name: str, factor: ast.expr, partial: ast.expr) -> str | None:
    """The line `stmt` with its sum `... + t` (`... - t`, or `t + ...` at its start) computed as
    `guarded_add_mul(..., a, ±b)`: the same additions in the same order, `t`'s product fused."""
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1) \
            or sum(isinstance(n, ast.Name) and n.id == name for n in ast.walk(stmt)) != 1:
        return None
    node, parent = stmt.value, stmt
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
        left, right = node.left, node.right
        if isinstance(right, ast.Name) and right.id == name:
            if isinstance(node.op, ast.Sub):
                partial = negated(partial)
            return _replaced(stmt, parent, node, left, factor, partial)
        if isinstance(left, ast.Name) and left.id == name and isinstance(node.op, ast.Add):
            return _replaced(stmt, parent, node, right, factor, partial)  # t + x is x + t exactly
        node, parent = left, node
    return None


def _replaced(stmt: ast.Assign, parent, node: ast.BinOp, acc, factor, partial) -> str:
    fused = ast.Call(ast.Name("guarded_add_mul", ast.Load()), [acc, factor, partial], [])
    if parent is stmt:
        stmt.value = fused
    else:
        parent.left = fused
    return ast.unparse(stmt)


def _without_zero_inits(code: list, names: set) -> list:
    """`code` without the lines `t = 0.0` of the fused temporaries `names` (their only other lines)."""
    out = []
    for item in code:
        if isinstance(item, str):
            if _zero_assigned(item) not in names:
                out.append(item)
        elif isinstance(item, SourceLine):
            out.append(item)
        else:
            out.append((item[0], _without_zero_inits(item[1], names)))
    return out


# Calls that compute a value and write no memory (what may move past a shadow increment).
_PURE_CALLS = re.compile(r"(guarded_mul|guarded_add_mul|math\.\w+|np\.float32|np\.float64|float|abs|min|max)")


def merge_shadow_increments(code: list) -> list:
    """Several `a[i] += e` of one element in a list of scalar statements, as one read-add-store:
    `a[i] = a[i] + e1 + e2 + e3` at the last of them, which adds in the same order, so the
    same float32 rounding. Each separate increment is a store that NVVM keeps (the element may
    be read through another pointer in between), and in an own-element shadow update
    (`Duplicated(x, dx)`, the atomic dropped) that doubled the kernel's global stores.

    Only where that is the same computation: the statements between them are scalar
    assignments (no subscript, no call that may write memory) that mention neither `a` nor
    rebind a name of the index or of a moved `e`. (Where `e` is wider than the array's dtype,
    the sum is now rounded to it once instead of after every increment.)"""
    code = list(code)
    k = 0
    while k < len(code):
        first = _increment(code[k])
        if first is None:
            k += 1
            continue
        target, array, value = first
        values, positions, bound = [value], [k], [set()]  # bound: names rebound since each value
        for j in range(k + 1, len(code)):
            item = code[j]
            if not _is_code(item):
                continue
            found = _increment(item)
            if found is not None and found[0] == target and not _names_of(target) & bound[0]:
                if any(_names_of(v) & since for v, since in zip(values, bound)):
                    break
                values.append(found[2])
                positions.append(j)
                bound.append(set())
                continue
            stmt = _statement(item) if isinstance(item, str) else None
            if not _scalar_statement(stmt) or _mentions(item, array):
                break
            for since in bound:
                since |= _names(stmt, ast.Store)
        if len(values) > 1:
            code[positions[-1]] = f"{target} = {target} + {' + '.join(_operand(v) for v in values)}"
            for p in reversed(positions[:-1]):
                del code[p]
            k = positions[0]
            continue
        k += 1
    return code


def _increment(item) -> tuple[str, str, ast.expr] | None:
    """(`a[i]`, `a`, `e`) of an item `a[i] += e` whose index and value do not read `a`."""
    stmt = _statement(item) if isinstance(item, str) else None
    if not (isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Add)
            and isinstance(stmt.target, ast.Subscript) and isinstance(stmt.target.value, ast.Name)):
        return None
    array = stmt.target.value.id
    if array in _names(stmt.target.slice, ast.Load) | _names(stmt.value, ast.Load) \
            or not _pure_value(stmt.value) or not _pure_value(stmt.target.slice):
        return None
    return ast.unparse(stmt.target), array, stmt.value


def _names_of(node) -> set:
    if isinstance(node, str):
        node = ast.parse(node, mode="eval")
    return _names(node, ast.Load)


def _pure_value(node: ast.AST) -> bool:
    """Names, constants, arithmetic and calls of `_PURE_CALLS`: no memory read or written."""
    for n in ast.walk(node):
        if isinstance(n, ast.Subscript | ast.NamedExpr | ast.Lambda):
            return False
        if isinstance(n, ast.Call) and not _PURE_CALLS.fullmatch(ast.unparse(n.func)):
            return False
    return True


def _scalar_statement(stmt) -> bool:
    """`name = e`, `name += e`, ... with `e` pure: touches no memory."""
    if isinstance(stmt, ast.Assign):
        return all(isinstance(t, ast.Name | ast.Tuple) and _pure_value(t) for t in stmt.targets) \
            and _pure_value(stmt.value)
    if isinstance(stmt, ast.AugAssign):
        return isinstance(stmt.target, ast.Name) and _pure_value(stmt.value)
    return False


def _operand(value: ast.expr) -> str:
    """`e` as an operand of a left-to-right sum: parenthesised unless it binds tighter than `+`."""
    text = ast.unparse(value)
    loose = isinstance(value, ast.BinOp | ast.BoolOp | ast.IfExp | ast.Compare | ast.UnaryOp)
    return f"({text})" if loose else text


# -- reading a shadow element early --------------------------------------------

# A line that may update an element of a shadow: `d_a[...] = ...`, `d_a[...] += ...` (cheap test first).
_SHADOW_UPDATE = re.compile(rf"\s*{naming.ADJOINT}\w+\[.*\]\s*[-+]?=\s")
# Calls that compute a value and write no memory: `_PURE_CALLS` and numpy's scalar types (tape pops).
_WRITE_FREE_CALLS = re.compile(rf"{_PURE_CALLS.pattern}|np\.u?int(8|16|32|64)|int|bool|len")
EARLY = "_e"  # naming.LEGEND: a shadow element read early


def hoist_shadow_reads(code: list, fresh=None) -> list:
    """Each update `d_a[i] = ... d_a[i] ...` (or `d_a[i] += e`) of a shadow element reads the
    element into `_e0` as early as that is the same value: right after the last statement before
    it that may write memory (any store, to any array: a primal array or a view may alias the
    shadow; any call that may store; any block) or that binds `d_a` or a name of `i`. Loads and
    scalar statements in between are passed over. The reverse sweep's update of an own element
    (`Duplicated(x, dx)`, the atomic dropped) read `dx[i]` at its very end, after sin/cos/exp,
    whose branches keep NVVM from moving the load up: the kernel waited for it after all the
    work, where a hand-written `dx[i] += ...` loads it first and overlaps its latency.
    Straight-line lists only (each block's list on its own). A read that would pass no load and
    no `math` call stays where it is: among plain arithmetic NVVM schedules the load itself."""
    fresh = itertools.count() if fresh is None else fresh
    code = [item if isinstance(item, str | SourceLine) else (item[0], hoist_shadow_reads(item[1], fresh))
            for item in code]
    if not any(isinstance(item, str) and _SHADOW_UPDATE.match(item) for item in code):
        return code
    reads: dict[int, list[str]] = {}  # position -> early reads to insert before it
    barrier, bound_at = -1, {}  # the last item that may write memory; name -> its last binding
    slow = -1  # the last write-free statement that is `_slow` (what a read is worth moving past)
    for k, item in enumerate(code):
        if not _is_code(item):
            continue
        stmt = _statement(item) if isinstance(item, str) else None
        update = _shadow_update(stmt) if stmt is not None and _SHADOW_UPDATE.match(item) else None
        if update is not None:
            element, names = update
            start = _first_code(code, max([barrier, *(bound_at.get(n, -1) for n in names)]) + 1)
            if start <= slow:
                early = f"{EARLY}{next(fresh)}"
                indent = item[:len(item) - len(item.lstrip())]
                reads.setdefault(start, []).append(f"{indent}{early} = {ast.unparse(element)}")
                code[k] = indent + ast.unparse(_reading(stmt, element, early))
        if stmt is not None and _write_free(stmt):
            bound_at.update((name, k) for name in _names(stmt, ast.Store))
            if _slow(stmt.value):
                slow = k
        else:
            barrier = k
    return [line for k, item in enumerate(code) for line in (*reads.get(k, ()), item)]


def _slow(value: ast.expr) -> bool:
    """A value that loads or calls `math` (whose functions branch: sin's range reduction)."""
    nodes = list(ast.walk(value))
    calls = (ast.unparse(n.func) for n in nodes if isinstance(n, ast.Call))
    return any(isinstance(n, ast.Subscript) for n in nodes) or any(f.startswith("math.") for f in calls)


def _first_code(code: list, start: int) -> int:
    """The first statement or block at or after `start` (labels and comments stay above a read)."""
    while start < len(code) and not _is_code(code[start]):
        start += 1
    return start


def _shadow_update(stmt) -> tuple[ast.Subscript, set] | None:
    """(`d_a[i]`, the names `d_a[i]` reads) of `d_a[i] = ...d_a[i]...` or `d_a[i] += e` (or
    `-=`) whose value and index write no memory, with an index of names and arithmetic."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        element = stmt.targets[0]
    elif isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Add | ast.Sub):
        element = stmt.target
    else:
        return None
    if not (isinstance(element, ast.Subscript) and isinstance(element.value, ast.Name)
            and element.value.id.startswith(naming.ADJOINT) and _write_free_value(stmt.value)):
        return None
    if any(isinstance(n, ast.Subscript | ast.Slice | ast.Call) for n in ast.walk(element.slice)):
        return None  # an index that reads memory (or a slice: a view, not a value)
    if isinstance(stmt, ast.Assign) and not any(_same(n, element) for n in ast.walk(stmt.value)):
        return None
    return element, _names(element, ast.Load)


def _same(node: ast.AST, element: ast.Subscript) -> bool:
    return isinstance(node, ast.Subscript) and ast.unparse(node) == ast.unparse(element)


def _reading(stmt, element: ast.Subscript, early: str) -> ast.Assign:
    """The update with its reads of `element` reading the name `early` instead."""
    name = ast.Name(early, ast.Load())
    if isinstance(stmt, ast.AugAssign):
        return ast.Assign([element], ast.BinOp(name, stmt.op, stmt.value), lineno=0)

    class Swap(ast.NodeTransformer):
        def visit_Subscript(self, node):
            return name if _same(node, element) else self.generic_visit(node)

    return ast.Assign(stmt.targets, Swap().visit(stmt.value), lineno=0)


def _write_free(stmt) -> bool:
    """`name = e`, `a, b = e`, `name += e` with `e` reading memory at most: stores nothing."""
    if isinstance(stmt, ast.Assign):
        targets = [n for t in stmt.targets for n in ast.walk(t) if not isinstance(n, ast.expr_context)]
        return all(isinstance(n, ast.Name | ast.Tuple) for n in targets) and _write_free_value(stmt.value)
    if isinstance(stmt, ast.AugAssign):
        return isinstance(stmt.target, ast.Name) and _write_free_value(stmt.value)
    return False


def _write_free_value(node: ast.AST) -> bool:
    """An expression that may load (subscripts, attributes) but stores nothing and calls only
    `_WRITE_FREE_CALLS`."""
    for n in ast.walk(node):
        if isinstance(n, ast.NamedExpr | ast.Lambda | ast.Yield | ast.YieldFrom | ast.Await):
            return False
        if isinstance(n, ast.Call) and not _WRITE_FREE_CALLS.fullmatch(ast.unparse(n.func)):
            return False
    return True
