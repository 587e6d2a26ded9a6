"""How far from its own element a kernel reaches into a chunked array: the check behind
`gpuad.dask.map_blocks(depth=...)`.

A chunk's launch gives the single launch's result only when every thread sees what it would see
in the whole array. The analysis reads the kernel's source and the functions it reaches (calls,
and `autodiff` with the arguments each parameter gets) and evaluates each integer as a sum of
symbols: the thread index, `owned_start`, `owned_stop`, `chunk_offset` and the chunked length
(`u.shape[0]`, `len(u)`), plus a constant. The thread's element is `owned_start + thread_index()`
(`thread_index()` alone when depth is 0). Then:

- every index of a chunked array must be the thread's element plus a constant c: the launch
  needs `depth >= |c|` (a shadow gets the same offsets through `Duplicated`);
- every bound check against the element (`i + c < u.shape[0]`, `i > 0`, `i == 0`) needs the
  depth that makes it flip at the same element in the chunk as in the whole array;
- a value that differs between a chunk and one launch (the chunk-local index or length used in
  arithmetic, a stored value, a branch, or to index a broadcast array) is refused;
- a plain assignment to another element than the thread's own is refused (halo writes are
  added back to their owners, which is right for `+=` and for shadows only).

What the analysis cannot follow (an index through a loop variable, a data-dependent gather, a
statement it does not know) is refused as unanalysable. `depth >= length` puts the whole array in
every chunk: local indices are then global ones and any index that is the same in every chunk is
right; still refused are the thread's range (`thread_index()` without `owned_start`), neighbours
compared with `owned_stop` and plain assignments to others' elements. `depth_verified=True` (the
user's word) skips the analysis.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field

from gpuad import api
from gpuad.errors import LaunchError, SourceLocation

UNCHECKED_HINT = ("if you have checked the kernel yourself, pass depth_verified=True (your "
                  "responsibility), or a depth that covers the whole array")


# -- abstract values ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Lin:
    """An int: sum of coefficient * symbol, plus a constant. Symbols: tid, start, stop, offset, len."""

    terms: tuple = ()
    const: int = 0

    def __add__(self, other: Lin) -> Lin:
        merged = dict(self.terms)
        for symbol, coef in other.terms:
            merged[symbol] = merged.get(symbol, 0) + coef
        return Lin(tuple(sorted((s, c) for s, c in merged.items() if c)), self.const + other.const)

    def scaled(self, k: int) -> Lin:
        return Lin(tuple((s, c * k) for s, c in self.terms if c * k), self.const * k)


@dataclass(frozen=True)
class Same:
    """A value equal in every chunk's launch and in one launch (not a known int)."""


@dataclass(frozen=True)
class Differs:
    """A value that differs between a chunk and one launch, or that the analysis cannot tell."""

    where: SourceLocation
    why: str


@dataclass(frozen=True)
class Arr:
    name: str  # the kernel parameter it comes from
    chunked: bool
    ndim: int


@dataclass(frozen=True)
class Shape:
    array: Arr


@dataclass(frozen=True)
class Tup:
    items: tuple


@dataclass(frozen=True)
class Static:
    obj: object  # a function, module or class known before the launch


SAME = Same()


@dataclass
class Need:
    depth: int
    where: SourceLocation
    what: str


class Unanalysable(Exception):
    def __init__(self, where: SourceLocation, what: str):
        self.where, self.what = where, what


@dataclass
class Analysis:
    kernel: object
    depth: int
    whole: bool = False  # the halos cover the array: every chunk holds all of it, local index = global
    needs: list = field(default_factory=list)
    stack: list = field(default_factory=list)
    lower: list = field(default_factory=lambda: [0])  # proven: element >= max(lower), by the guards around

    @property
    def elem(self) -> tuple:
        return (("tid", 1),) if self.depth == 0 else (("start", 1), ("tid", 1))

    def consistent(self, v) -> bool:
        if isinstance(v, Lin):
            if self.whole:  # the element is its global index, chunk_offset is 0
                return v.terms in ((), self.elem)
            return v.terms in ((), tuple(sorted(self.elem + (("offset", 1),))))
        if isinstance(v, Tup):
            return all(self.consistent(x) for x in v.items)
        if isinstance(v, Shape):
            return not v.array.chunked
        return isinstance(v, (Same, Arr, Static))

    def length(self, array: Arr):
        """A chunked array's length along axis 0: the chunk's, or the array's when halos cover it."""
        return SAME if self.whole or not array.chunked else Lin((("len", 1),))

    def refuse(self, where: SourceLocation, message: str, hint: str):
        raise LaunchError(f"gpuad.dask.map_blocks, kernel {self.kernel.__name__}: {message}", where, hint)


def check_depth(kernel_fn, args: list, roles: list[str], depth: int, whole: bool = False) -> int:
    """The depth the kernel needs (refusing with a LaunchError what no depth makes right).

    args: the kernel's arguments as map_blocks got them (Dask arrays, markers, values);
    roles[k]: "chunk" (a Dask argument), "whole" (a numpy array), a marker's name, or "value".
    whole: the depth covers the array, so any index that is the same in every chunk is right;
    what still differs is the thread's range (thread_index() alone) and owned_stop.
    """
    analysis = Analysis(kernel_fn, depth, whole)
    names = kernel_fn.__code__.co_varnames[:kernel_fn.__code__.co_argcount]
    bindings = {name: _argument_value(analysis, name, value, role)
                for name, value, role in zip(names, args, roles)}
    try:
        _Body(analysis, kernel_fn, bindings).run()
    except Unanalysable as exc:
        analysis.refuse(exc.where, f"cannot tell how far `{exc.what}` reaches from the thread's element",
                        "index chunked arrays as u[i + k] with i = gpuad.dask.owned_start + "
                        "gpuad.thread_index() and k a constant; " + (
                            "if you have checked the kernel yourself, pass depth_verified=True (your "
                            "responsibility)" if whole else UNCHECKED_HINT))
    worst = max(analysis.needs, key=lambda need: need.depth, default=None)
    if worst is not None and worst.depth > depth:
        analysis.refuse(worst.where, f"{worst.what} reaches {worst.depth} element(s) from the thread's own, "
                        f"but depth={depth}: across a chunk border it would be skipped or misread",
                        f"pass depth={worst.depth} to gpuad.dask.map_blocks")
    return 0 if worst is None else worst.depth


def _argument_value(analysis: Analysis, name: str, value, role: str):
    import numpy as np

    if role == "chunk":
        return Arr(name, True, value.ndim)
    if role == "whole":  # numpy, CuPy or numba device arrays: ndim without a host copy
        return Arr(name, False, getattr(value, "ndim", 0))
    if role == "owned_start":
        return Lin((("start", 1),)) if analysis.depth else Lin()  # 0 in every chunk without halos
    if role == "offset" and analysis.whole:
        return Lin()  # every chunk starts at the array's element 0
    if role in ("owned_stop", "offset"):
        return Lin(((role.replace("owned_", ""), 1),))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return Lin((), int(value))
    return SAME


# -- one function's body -----------------------------------------------------------------------

_FLIP = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE,
         ast.Eq: ast.Eq, ast.NotEq: ast.NotEq}  # a < b is b > a


class _Body:
    """Evaluates one function's statements (flow-insensitively: a name stored more than once
    holds the join of its values, found by iterating to a fixed point)."""

    def __init__(self, analysis: Analysis, fn, bindings: dict):
        from gpuad.interpreter import function_namespace, local_names, parse_function

        self.a, self.fn = analysis, fn
        parsed = parse_function(fn)
        self.tree, self.filename = parsed.tree, parsed.filename
        self.namespace, self.locals = function_namespace(fn), local_names(parsed.tree)
        self.params = dict(bindings)
        self.mutable = _mutable_names(self.tree)
        self.returns: list = []

    def run(self):
        if self.fn in self.a.stack:
            raise Unanalysable(self.where(self.tree), f"recursive call of {self.fn.__name__}")
        self.a.stack.append(self.fn)
        try:
            joined = {name: self.params.get(name, SAME) for name in self.mutable}
            for _ in range(2 * len(self.mutable) + 2):  # each name changes at most twice
                self.env, self.stored, self.returns = dict(self.params), {}, []
                self.env.update(joined)
                mark = len(self.a.needs)
                for stmt in self.tree.body:
                    self.stmt(stmt)
                new = {name: self.join([joined[name], *self.stored.get(name, [])]) for name in self.mutable}
                if new == joined:  # the walk just done used the final values: its checks stand
                    break
                del self.a.needs[mark:]
                joined = new
            else:
                raise Unanalysable(self.where(self.tree), f"the names assigned again in {self.fn.__name__}")
            return self.join(self.returns) if self.returns else SAME
        finally:
            self.a.stack.pop()

    def where(self, node) -> SourceLocation:
        return SourceLocation(self.filename, getattr(node, "lineno", self.tree.lineno),
                              ast.unparse(node)[:80], self.fn.__name__)

    def join(self, values: list):
        if all(v == values[0] for v in values):
            return values[0]
        if all(self.a.consistent(v) and not isinstance(v, Arr) for v in values):
            return SAME
        bad = next((v for v in values if isinstance(v, Differs)), None)
        return bad or Differs(self.where(self.tree), "a name holding different kinds of values")

    # statements

    def stmt(self, node):
        method = getattr(self, "stmt_" + type(node).__name__, None)
        if method is None:
            raise Unanalysable(self.where(node), type(node).__name__.lower() + " statement")
        method(node)

    def stmt_Assign(self, node):
        value = self.expr(node.value)
        for target in node.targets:
            self.bind(target, value, node)

    def stmt_AnnAssign(self, node):
        if node.value is not None:
            self.bind(node.target, self.expr(node.value), node)

    def stmt_AugAssign(self, node):
        value = self.expr(node.value)
        if isinstance(node.target, ast.Subscript):
            self.store(node.target, value, additive=isinstance(node.op, (ast.Add, ast.Sub)), node=node)
        else:
            old = self.expr(ast.Name(node.target.id, ast.Load(), lineno=node.lineno))
            self.bind(node.target, self.binop(old, node.op, value, node), node)

    def stmt_Expr(self, node):
        self.expr(node.value)

    def stmt_If(self, node):
        self.condition(node.test)
        self.a.lower.append(max(self.lower_bounds(node.test), default=0))
        try:
            for stmt in node.body:
                self.stmt(stmt)
        finally:
            self.a.lower.pop()
        for stmt in node.orelse:
            self.stmt(stmt)

    def lower_bounds(self, test) -> list[int]:
        """What a true `test` proves about the element from below (`i > 0`: i >= 1)."""
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            return [m for value in test.values for m in self.lower_bounds(value)]
        if not isinstance(test, ast.Compare):
            return []
        values = [self.expr(test.left)] + [self.expr(c) for c in test.comparators]
        found = []
        for (left, right), op in zip(zip(values, values[1:]), test.ops):
            if not (isinstance(left, Lin) and isinstance(right, Lin)) or type(op) not in _FLIP:
                continue
            diff = left + right.scaled(-1)
            if dict(diff.terms).get("tid") == -1:
                diff, op = diff.scaled(-1), _FLIP[type(op)]()
            if diff.terms == self.a.elem and isinstance(op, (ast.GtE, ast.Gt, ast.Eq)):
                found.append(-diff.const + isinstance(op, ast.Gt))  # i + d > 0: i >= 1 - d
        return found

    stmt_While = stmt_If

    def stmt_For(self, node):
        call = node.iter
        if not (isinstance(call, ast.Call) and self.static(call.func) is range and not call.keywords):
            raise Unanalysable(self.where(node.iter), "a loop over something other than range()")
        bounds = [self.expr(arg) for arg in call.args]
        value = SAME if all(self.a.consistent(b) for b in bounds) else Differs(
            self.where(node.iter), "a loop variable counting from the chunk-local index")
        self.bind(node.target, value, node)
        for stmt in node.body + node.orelse:
            self.stmt(stmt)

    def stmt_Return(self, node):
        self.returns.append(SAME if node.value is None else self.expr(node.value))

    def stmt_Pass(self, node):
        pass

    stmt_Break = stmt_Continue = stmt_Pass

    def bind(self, target, value, node):
        if isinstance(target, ast.Name):
            if target.id in self.mutable:
                self.stored.setdefault(target.id, []).append(value)
            else:
                self.env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            items = self.unpack(value, len(target.elts), node)
            for elt, item in zip(target.elts, items):
                self.bind(elt, item, node)
        elif isinstance(target, ast.Subscript):
            self.store(target, value, additive=False, node=node)
        else:
            raise Unanalysable(self.where(node), "an assignment target")

    def unpack(self, value, count: int, node) -> list:
        if isinstance(value, Tup) and len(value.items) == count:
            return list(value.items)
        if isinstance(value, Shape):
            axis0 = self.a.length(value.array)
            return [axis0] + [SAME] * (count - 1)
        if isinstance(value, (Same, Differs)):
            return [value] * count
        raise Unanalysable(self.where(node), "an unpacking")

    # expressions

    def expr(self, node):
        method = getattr(self, "expr_" + type(node).__name__, None)
        if method is None:
            raise Unanalysable(self.where(node), ast.unparse(node)[:60])
        return method(node)

    def static(self, node):
        from gpuad.interpreter import _UNRESOLVED, static_value

        value = static_value(node, self.namespace, self.locals)
        return None if value is _UNRESOLVED else value

    def expr_Constant(self, node):
        value = node.value
        return Lin((), value) if isinstance(value, int) and not isinstance(value, bool) else SAME

    def expr_Name(self, node):
        if node.id in self.env:
            return self.env[node.id]
        if node.id in self.locals:
            raise Unanalysable(self.where(node), f"{node.id}, read before it is assigned")
        return self.global_value(self.static(node))

    def global_value(self, obj):
        import numpy as np

        if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
            return Lin((), int(obj))
        if isinstance(obj, np.ndarray):
            return Arr("a global array", False, obj.ndim)
        if callable(obj) or isinstance(obj, type(np)):
            return Static(obj)
        return SAME

    def expr_Attribute(self, node):
        base = self.expr(node.value)
        if isinstance(base, Static):
            from gpuad.intrinsics import cuda_intrinsics

            if any(base.obj is owner for owner in cuda_intrinsics()[0]):
                return Differs(self.where(node), "CUDA's thread geometry, which counts threads of the chunk")
            return self.global_value(self.static(node))
        if isinstance(base, Arr):
            if node.attr == "shape":
                return Shape(base)
            if node.attr in ("ndim", "dtype", "itemsize"):
                return SAME
            if node.attr == "size" and not base.chunked:
                return SAME
            return Differs(self.where(node), f"{ast.unparse(node)}, a chunk's, not the array's")
        return base if isinstance(base, Differs) else SAME

    def expr_Subscript(self, node):
        base = self.expr(node.value)
        if isinstance(base, Arr):
            self.access(base, node, "read")
            return SAME
        index = self.expr(node.slice)
        if isinstance(base, Shape):
            if not (isinstance(index, Lin) and not index.terms):
                raise Unanalysable(self.where(node), ast.unparse(node))
            axis = index.const % max(base.array.ndim, 1)
            return self.a.length(base.array) if axis == 0 else SAME
        if isinstance(base, Tup) and isinstance(index, Lin) and not index.terms:
            return base.items[index.const]
        if self.a.consistent(base) and self.a.consistent(index):
            return SAME
        return Differs(self.where(node), ast.unparse(node))

    def expr_Tuple(self, node):
        return Tup(tuple(self.expr(elt) for elt in node.elts))

    expr_List = expr_Tuple

    def expr_BinOp(self, node):
        return self.binop(self.expr(node.left), node.op, self.expr(node.right), node)

    def binop(self, left, op, right, node):
        if isinstance(left, Arr) or isinstance(right, Arr):
            raise Unanalysable(self.where(node), "arithmetic on whole arrays")
        if isinstance(left, Lin) and isinstance(right, Lin):
            if isinstance(op, ast.Add):
                return left + right
            if isinstance(op, ast.Sub):
                return left + right.scaled(-1)
            if isinstance(op, ast.Mult) and (not left.terms or not right.terms):
                return right.scaled(left.const) if not left.terms else left.scaled(right.const)
            if not left.terms and not right.terms and not isinstance(op, ast.Div):
                try:
                    return Lin((), int(eval(compile(ast.Expression(ast.BinOp(  # noqa: S307 - two ints
                        ast.Constant(left.const), op, ast.Constant(right.const))), "<int>", "eval"))))
                except (ArithmeticError, ValueError):
                    return SAME
        return self.combined([left, right], node)

    def combined(self, values: list, node):
        """The result of an operation on `values`: the same everywhere when they all are."""
        for v in values:
            if isinstance(v, Differs):
                return v
        if all(self.a.consistent(v) for v in values):
            return SAME
        return Differs(self.where(node), f"`{ast.unparse(node)[:60]}` computes with the chunk-local "
                       "index or length, which differ from one launch's")

    def expr_UnaryOp(self, node):
        value = self.expr(node.operand)
        if isinstance(node.op, ast.USub) and isinstance(value, Lin):
            return value.scaled(-1)
        if isinstance(node.op, ast.UAdd):
            return value
        return self.combined([value], node)

    def expr_BoolOp(self, node):
        return self.combined([self.expr(v) for v in node.values], node)

    def expr_IfExp(self, node):
        self.condition(node.test)
        self.a.lower.append(max(self.lower_bounds(node.test), default=0))
        try:
            body = self.expr(node.body)
        finally:
            self.a.lower.pop()
        return self.join([body, self.expr(node.orelse)])

    def condition(self, node):
        value = self.expr(node)
        if not self.a.consistent(value) or isinstance(value, Arr):
            why = value.why if isinstance(value, Differs) else ast.unparse(node)
            self.a.refuse(self.where(node), f"the branch on `{ast.unparse(node)[:60]}` can go differently "
                          f"in a chunk than in one launch ({why})",
                          "compare the element i = gpuad.dask.owned_start + gpuad.thread_index() with "
                          "u.shape[0], gpuad.dask.owned_stop or a constant; " + UNCHECKED_HINT)

    def expr_Compare(self, node):
        values = [self.expr(node.left)] + [self.expr(c) for c in node.comparators]
        for (left, right), op in zip(zip(values, values[1:]), node.ops):
            self.compare(left, op, right, node)
        return SAME

    def compare(self, left, op, right, node):
        if self.a.consistent(left) and self.a.consistent(right):
            return
        for side in (left, right):
            if isinstance(side, Lin):
                self.not_thread_index_alone(dict(side.terms), node)
        if not (isinstance(left, Lin) and isinstance(right, Lin)) or type(op) not in _FLIP:
            raise Unanalysable(self.where(node), ast.unparse(node))
        diff = left + right.scaled(-1)
        if dict(diff.terms).get("tid") == -1:
            diff, op = diff.scaled(-1), _FLIP[type(op)]()
        rest = dict(diff.terms)
        self.not_thread_index_alone(rest, node)
        for symbol, coef in self.a.elem:
            if rest.get(symbol) != coef:
                raise Unanalysable(self.where(node), ast.unparse(node))
            del rest[symbol]
        d, text = diff.const, f"the bound check `{ast.unparse(node)[:60]}`"
        if not rest:  # i + d OP 0
            flips = -d if isinstance(op, (ast.GtE, ast.Lt)) else 1 - d
            self.a.needs.append(Need(max(0, flips), self.where(node), text))
        elif rest in ({"len": -1}, {"stop": -1}):  # i + d OP length
            flips = d - 1 if isinstance(op, (ast.LtE, ast.Gt)) else d
            if rest == {"len": -1}:
                self.a.needs.append(Need(max(0, flips), self.where(node), text))
            elif flips > 0:
                self.a.refuse(self.where(node), f"{text} compares a neighbour's index with owned_stop, "
                              "the end of the chunk's own elements, not of the array",
                              "compare neighbours with the array's length (u.shape[0]) instead")
        else:
            raise Unanalysable(self.where(node), ast.unparse(node))

    # element accesses

    def access(self, array: Arr, node: ast.Subscript, kind: str):
        """An element read or written (`kind`: read, assign, add) at index `node.slice`."""
        if any(isinstance(n, ast.Slice) for n in ast.walk(node.slice)):
            raise Unanalysable(self.where(node), f"{ast.unparse(node)} (a slice)")
        index = self.expr(node.slice)
        items = list(index.items) if isinstance(index, Tup) else [index]
        first, others = items[0], items[1:]
        text = ast.unparse(node)[:60]
        if self.a.whole and array.chunked:
            self.whole_access(array, first, node, kind)
        for item in (items if not array.chunked or self.a.whole else others):
            if not self.a.consistent(item):
                self.a.refuse(self.where(node), f"`{text}` indexes {self.array_name(array)}, which every "
                              "chunk gets whole, with the chunk-local index",
                              "index it with gpuad.dask.chunk_offset + i (the global position), or pass "
                              "it as a Dask array chunked like the others")
        if not array.chunked or self.a.whole:
            return
        if not isinstance(first, Lin):
            raise Unanalysable(self.where(node), text)
        rest = dict(first.terms)
        if rest != dict(self.a.elem):
            if not rest:
                self.a.refuse(self.where(node), f"`{text}` reads a fixed element of a chunk, which is "
                              f"another element in each chunk than in {self.array_name(array)}",
                              "pass the array whole (a numpy array) if every thread needs it; "
                              + UNCHECKED_HINT)
            self.not_thread_index_alone(rest, node)
            raise Unanalysable(self.where(node), text)
        offset = first.const
        if offset < 0 and max(self.a.lower) < -offset:
            self.a.refuse(self.where(node), f"`{text}` can run at the array's first element, where index "
                          f"{offset} wraps around to the array's end in one launch but to the chunk's "
                          "end in a chunk", f"guard it with `if i >= {-offset}:` (for a periodic "
                          "boundary, pass the wrapped-around elements explicitly)")
        self.a.needs.append(Need(abs(offset), self.where(node), f"`{text}` ({self.array_name(array)})"))
        if kind == "assign" and offset != 0:
            self.a.refuse(self.where(node), f"`{text}` assigns to another element than the thread's own "
                          f"in {self.array_name(array)}; what a chunk writes into its halo is added to "
                          "the owner's value, which is right for += only",
                          "write each thread's own element, or accumulate with +=")

    def whole_access(self, array: Arr, first, node, kind: str):
        """With the whole array in every chunk any index the same everywhere is right; a plain
        assignment still has to be to the thread's own element (the others' are added back)."""
        if isinstance(first, Lin):
            self.not_thread_index_alone(dict(first.terms), node)
        if kind == "assign" and first != Lin(self.a.elem):
            self.a.refuse(self.where(node), f"`{ast.unparse(node)[:60]}` assigns to an element that may not "
                          f"be the thread's own in {self.array_name(array)}; what a chunk writes to "
                          "others' elements is added to the owner's value, which is right for += only",
                          "write each thread's own element, or accumulate with +=")

    def not_thread_index_alone(self, terms: dict, node):
        if self.a.depth and terms.get("tid") == 1 and "start" not in terms:
            self.a.refuse(self.where(node), f"`{ast.unparse(node)[:60]}` counts elements with thread_index() "
                          "alone; with halos a chunk's local element 0 is its first halo element, not its "
                          "first own one", "write i = gpuad.dask.owned_start + gpuad.thread_index()")

    def array_name(self, array: Arr) -> str:
        return f"the array {array.name!r}" if array.name != "a global array" else array.name

    def store(self, target: ast.Subscript, value, additive: bool, node):
        base = self.expr(target.value)
        if not isinstance(base, Arr):
            raise Unanalysable(self.where(node), ast.unparse(target))
        if not self.a.consistent(value) or isinstance(value, Arr):
            why = value.why if isinstance(value, Differs) else "an array"
            self.a.refuse(self.where(node), f"`{ast.unparse(node)[:60]}` stores a value that differs "
                          f"between a chunk and one launch ({why})",
                          "use gpuad.dask.chunk_offset + i where the global position is meant; "
                          + UNCHECKED_HINT)
        self.access(base, target, "add" if additive else "assign")

    # calls

    def expr_Call(self, node):
        from gpuad.intrinsics import is_global_thread_index

        callee = self.static(node.func)
        if callee is not None and is_global_thread_index(callee, node.args, node.keywords):
            return Lin((("tid", 1),))
        if callee in (api.autodiff, api.autodiff_deferred):
            return self.autodiff(node)
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise Unanalysable(self.where(node), "a call with *args or **kwargs")
        if callee is len and len(node.args) == 1:
            value = self.expr(node.args[0])
            return self.a.length(value) if isinstance(value, Arr) else SAME
        from gpuad.ad.cache_key import followed

        user = followed(callee) if callee is not None else None
        if user is not None:
            return self.call_user(user, node)
        if self.is_atomic_add(callee):
            array = self.expr(node.args[0]) if node.args else None
            if isinstance(array, Arr) and len(node.args) == 3:
                value = self.expr(node.args[2])
                subscript = ast.Subscript(node.args[0], node.args[1], ast.Store(), lineno=node.lineno)
                self.store(subscript, value, additive=True, node=node)
                return SAME
        values = [self.expr(a) for a in node.args] + [self.expr(k.value) for k in node.keywords]
        in_cuda = (getattr(callee, "__module__", None) or "").startswith("numba.cuda")
        if callee is None or in_cuda or any(isinstance(v, Arr) and v.chunked for v in values):
            raise Unanalysable(self.where(node), f"a call of {ast.unparse(node.func)}")
        if callee is int and len(values) == 1 and isinstance(values[0], Lin):
            return values[0]
        return self.combined(values, node)

    @staticmethod
    def is_atomic_add(callee) -> bool:
        try:
            from numba import cuda
        except ImportError:  # pragma: no cover - numba is a dependency
            return False
        return callee is not None and callee in (cuda.atomic.add, cuda.atomic.sub)

    def call_user(self, fn, node):
        import inspect

        try:
            bound = inspect.signature(fn).bind(*node.args, **{k.arg: k.value for k in node.keywords})
        except TypeError as exc:
            raise Unanalysable(self.where(node), f"a call of {fn.__name__}: {exc}") from exc
        bindings = {}
        for name, parameter in inspect.signature(fn).parameters.items():
            if name in bound.arguments:
                bindings[name] = self.expr(bound.arguments[name])
            elif parameter.default is not inspect.Parameter.empty:
                bindings[name] = self.global_value(parameter.default)
        return _Body(self.a, fn, bindings).run()

    def autodiff(self, node):
        if len(node.args) < 2:
            raise Unanalysable(self.where(node), "an autodiff call")
        fn = self.static(node.args[1])
        from gpuad.ad.cache_key import followed

        if followed(fn) is None:
            raise Unanalysable(self.where(node), f"autodiff of {ast.unparse(node.args[1])}")
        values = []
        for arg in node.args[2:]:
            wrapper = self.static(arg.func) if isinstance(arg, ast.Call) else None
            if isinstance(wrapper, type) and issubclass(wrapper, api.Activity) and arg.args:
                parts = [self.expr(a) for a in arg.args]
                values.append(parts[0])
                self.same_kind_of_shadow(parts, arg)
            else:
                values.append(self.expr(arg))
        names = list(__import__("inspect").signature(fn).parameters)
        if len(names) != len(values):
            raise Unanalysable(self.where(node), f"autodiff of {fn.__name__} with {len(values)} arguments")
        result = _Body(self.a, followed(fn), dict(zip(names, values))).run()
        if not self.a.consistent(result):
            why = result.why if isinstance(result, Differs) else ast.unparse(node)
            self.a.refuse(self.where(node), f"the value of {fn.__name__} differs between a chunk and one "
                          f"launch ({why}), and so would its derivatives",
                          "use gpuad.dask.chunk_offset + i where the global position is meant")
        return SAME  # derivatives of a value computed alike in a chunk and in one launch

    def same_kind_of_shadow(self, parts: list, node):
        arrays = [p for p in parts if isinstance(p, Arr)]
        if len(arrays) == 2 and arrays[0].chunked != arrays[1].chunked:
            self.a.refuse(self.where(node), f"`{ast.unparse(node)[:60]}` pairs a chunked array with a "
                          "whole one", "chunk the primal and its shadow alike (both Dask arrays, or both "
                          "numpy arrays with reduce= for the shadow)")


def _mutable_names(tree: ast.FunctionDef) -> set[str]:
    """Names stored more than once (parameters count as one store), by augmented assignment or as
    loop variables."""
    counts = {a.arg: 1 for a in tree.args.args}
    mutable = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            counts[node.id] = counts.get(node.id, 0) + 1
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            mutable.add(node.target.id)
        elif isinstance(node, ast.For):
            mutable.update(n.id for n in ast.walk(node.target) if isinstance(n, ast.Name))
    return mutable | {name for name, count in counts.items() if count > 1}
