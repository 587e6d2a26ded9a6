"""Python AST of a plain function → normalised statements (`gpuad.ad.ir`).

Every expression becomes a chain of single-operation assignments to
temporaries (`_t0 = x * y`), short-circuit operators and ternaries become
`If`s, `while c:` becomes `while True: if not c: break`, and `break`,
`continue` and early `return` become flags guarding the statements after
them. Globals are resolved by identity and bound in the shared `Namespace`;
numeric globals are inlined as constants. Anything the engine cannot
differentiate is rejected here with the original file and line.
"""
from __future__ import annotations

import ast
import builtins
import inspect
import linecache
import types
from dataclasses import dataclass

from gpuad import api
from gpuad.ad import ir
from gpuad.ad.emit import Namespace
from gpuad.ad.naming import ESCAPE, GENERATED_PREFIXES
from gpuad.errors import SourceLocation, UnsupportedConstruct
from gpuad.intrinsics import cuda_intrinsics
from gpuad.source import function_scope, function_source

# On a loop's line, selects checkpointing (recompute) instead of taping every iteration.
CHECKPOINT_COMMENT = "# gpuad: checkpoint"
# Names the generated code uses itself; user locals with these names are renamed.
RESERVED = {"status", "np", "math", "builtins", "atomic_add", "guarded_mul", "guarded_add_mul", "tape_alloc",
            "atomic_add_distinct",
            "report_tape_overflow", "report_checkpoint_overflow", "None", "bool", "int", "float", "min",
            "max", "abs", "len", "range", "Const", "Active", "Duplicated", "DuplicatedNoNeed"}
# A user local starting with a prefix of generated names (`gpuad.ad.naming`: temporaries, shadows
# `d_x`, tangents `t_x`, the functions generated for callees, entry functions), or with the escape
# `u_` itself, becomes `u_<name>`: an injective renaming, so no user name can meet a generated one.
LOCAL_ATTRS = ("shape", "size", "ndim")
BINOPS = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
    ast.Mod: "%", ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^",
    ast.LShift: "<<", ast.RShift: ">>",
}
UNOPS = {ast.USub: "-", ast.UAdd: "+", ast.Not: "not", ast.Invert: "~"}
CMPOPS = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
    ast.NotEq: "!=", ast.Is: "is", ast.IsNot: "is not",
}
REFUSED_STMTS = {
    ast.Try: ("try", "remove the try/except; kernels cannot raise or catch exceptions"),
    ast.With: ("with", "remove the with-block; context managers are not supported in kernels"),
    ast.Raise: ("raise", "remove the raise; report errors through an output array instead"),
    ast.Assert: ("assert", "remove the assert; kernels cannot raise"),
    ast.Global: ("global", "pass the value as an argument instead"),
    ast.Nonlocal: ("nonlocal", "pass the value as an argument instead"),
    ast.FunctionDef: ("def", "define helper functions at module level and call them"),
    ast.ClassDef: ("class", "define classes outside differentiated functions"),
    ast.Import: ("import", "import at module level"),
    ast.ImportFrom: ("import", "import at module level"),
    ast.Delete: ("del", "remove the del statement"),
}
REFUSED_EXPRS = {
    ast.Lambda: ("lambda", "define a module-level function instead"),
    ast.List: ("list", "use a tuple or an array argument"),
    ast.Dict: ("dict", "use scalars, tuples or arrays"),
    ast.Set: ("set", "use scalars, tuples or arrays"),
    ast.ListComp: ("list comprehension", "use a for loop writing into an array"),
    ast.SetComp: ("set comprehension", "use a for loop"),
    ast.DictComp: ("dict comprehension", "use a for loop"),
    ast.GeneratorExp: ("generator expression", "use a for loop"),
    ast.Yield: ("yield", "return a value instead; generators are not supported"),
    ast.YieldFrom: ("yield from", "return a value instead; generators are not supported"),
    ast.Await: ("await", "async code is not supported"),
    ast.JoinedStr: ("f-string", "remove string formatting from differentiated code"),
    ast.NamedExpr: ("walrus (:=)", "assign in a separate statement"),
    ast.Starred: ("*args", "pass arguments explicitly"),
    ast.Slice: ("slice", "use slices only to index arrays"),
}


def unwrap(fn):
    """The Python function behind a numba dispatcher (or `fn` itself)."""
    return getattr(fn, "py_func", fn)


def source_tree(fn):
    """(FunctionDef node, filename, line offset) of `fn`'s source (`gpuad.source`)."""
    src = function_source(unwrap(fn), UnsupportedConstruct, "define the function in a file, a notebook "
                          "cell or register its source in linecache")
    return src.tree, src.filename, src.offset


def scope_of(fn) -> dict:
    """Closure cells over globals: what a free name in `fn` means."""
    return function_scope(unwrap(fn))


def loop_exits(node) -> tuple[bool, bool, bool]:
    """(break, continue, return) reachable from `node`, breaks/continues of this loop level only."""
    brk = cont = ret = False

    def visit(n, nested):
        nonlocal brk, cont, ret
        if isinstance(n, ast.Return):
            ret = True
        elif isinstance(n, ast.Break) and not nested:
            brk = True
        elif isinstance(n, ast.Continue) and not nested:
            cont = True
        for child in ast.iter_child_nodes(n):
            visit(child, nested or isinstance(n, ast.For | ast.While))

    if isinstance(node, list):
        for n in node:
            visit(n, False)
    else:
        visit(node, False)
    return brk, cont, ret


def writes_nothing(stmts: list) -> bool:
    """Statements that cannot write memory: no stores, and calls only of functions that store
    nothing (`math.sin`, a helper computing a value), so `a[k] += <their value>` may read `a[k]`
    after them (an increment)."""
    for s in ir.walk(stmts):
        if not isinstance(s, ir.Assign):
            return False
        if isinstance(s.value, ir.AutodiffCall) or (
                isinstance(s.value, ir.Call) and may_write_memory(s.value.func)):
            return False
    return True


def as_increment(node: ast.Assign) -> ast.AugAssign | None:
    """`a[k] = a[k] + e` (or `- e`) as `a[k] += e`: the same reads in the same order when the
    index is plain names and numbers (evaluated twice or once alike)."""
    target, value = node.targets[0], node.value
    if not (len(node.targets) == 1 and isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name) and isinstance(value, ast.BinOp)
            and isinstance(value.op, ast.Add | ast.Sub) and isinstance(value.left, ast.Subscript)
            and ast.unparse(value.left) == ast.unparse(target)):
        return None
    plain = (ast.Name, ast.Constant, ast.BinOp, ast.UnaryOp, ast.Tuple, ast.expr_context, ast.operator,
             ast.unaryop)
    if not all(isinstance(n, plain) for n in ast.walk(target.slice)):
        return None
    return ast.copy_location(ast.AugAssign(target, value.op, value.right), node)


_normalizing: list = []  # the functions being normalised now (innermost last)


def computes_a_value(func) -> bool:
    """Conversions (`float(k)`, `np.float32(x)`) and numpy ufuncs called without `out=` (gpuad
    places keywords for Python callees only) return a value and write nothing."""
    import numpy as np

    return (func in (float, int, bool, complex) or isinstance(func, np.ufunc)
            or isinstance(func, type) and issubclass(func, np.generic))


def may_write_memory(func, seen: frozenset = frozenset()) -> bool:
    """Could calling `func` write an array (an argument or a global)? A builtin (`math.sin`,
    `min`) cannot; a plain function can if it stores into an array or calls one that may.
    Anything gpuad cannot read, and recursion, may."""
    if isinstance(func, types.BuiltinFunctionType) or computes_a_value(func):
        return False
    fn = unwrap(func)
    if not isinstance(fn, types.FunctionType) or fn in seen or fn in _normalizing:
        return True
    try:
        fir = normalize(fn)
    except UnsupportedConstruct:
        return True
    for t in ir.walk(fir.body):
        if isinstance(t, ir.Store) or isinstance(t, ir.Assign) and (
                isinstance(t.value, ir.AutodiffCall)
                or isinstance(t.value, ir.Call) and may_write_memory(t.value.func, seen | {fn})):
            return True
    return False


@dataclass
class LoopCtx:
    skip: str
    brk: str


class Normalizer:
    """Turns one function into an `ir.FunctionIR`; see the module docstring."""

    def __init__(self, fn, namespace: Namespace, name: str | None = None):
        self.fn = unwrap(fn)
        self.ns = namespace
        self.node, self.filename, self.offset = source_tree(self.fn)
        self.scope = scope_of(self.fn)
        self.name = name or self.fn.__name__
        args = self.node.args
        if args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs:
            self.refuse(self.node, "*args/**kwargs", "use plain positional parameters")
        self.params = [a.arg for a in args.args]
        self.locals = set(self.params)
        for n in ast.walk(self.node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                self.locals.add(n.id)
        self.ntemp = 0
        self.nloop = 0
        self.loops: list[LoopCtx] = []
        self.out: list = []
        self.single_temps: set[str] = set()
        self.has_return_value = any(isinstance(n, ast.Return) and n.value is not None
                                    for n in ast.walk(self.node))
        self.need_done = any(isinstance(n, ast.Return) for s in self.node.body
                             if not isinstance(s, ast.Return) for n in ast.walk(s))

    # ------------------------------------------------------------ helpers
    def line(self, node) -> int:
        return self.offset + getattr(node, "lineno", 1)

    def refuse(self, node, construct: str, hint: str):
        raise UnsupportedConstruct(
            f"cannot differentiate `{construct}`",
            SourceLocation(self.filename, self.line(node), construct, self.fn.__name__),
            hint,
        )

    def local(self, name: str) -> str:
        if name.startswith(GENERATED_PREFIXES) or name in RESERVED:
            return ESCAPE + name
        return name

    def temp(self, prefix: str = "_t") -> str:
        name = f"{prefix}{self.ntemp}"
        self.ntemp += 1
        return name

    def emit(self, stmt) -> None:
        self.out.append(stmt)

    def assign_temp(self, value, node) -> ir.Var:
        t = self.temp()
        self.emit(ir.Assign(t, value, self.line(node)))
        self.single_temps.add(t)
        return ir.Var(t)

    def block(self, stmts: list) -> list:
        """Normalise a statement list, guarding what follows a possible exit."""
        saved, self.out = self.out, []
        for i, s in enumerate(stmts):
            self.stmt(s)
            if isinstance(s, ast.Return | ast.Break | ast.Continue):
                break
            brk, cont, ret = loop_exits(s)
            if (brk or cont or ret) and i + 1 < len(stmts) and (self.loops or ret):
                flag = self.loops[-1].skip if self.loops else "_done"
                g = self.assign_temp(ir.UnaryOp("not", ir.Var(flag)), stmts[i + 1])
                rest = self.block(stmts[i + 1:])
                self.emit(ir.If(g, rest, [], self.line(stmts[i + 1])))
                break
        out, self.out = self.out, saved
        return out

    # ---------------------------------------------------------- function
    def run(self) -> ir.FunctionIR:
        body = []
        if self.need_done:
            body.append(ir.Assign("_done", ir.Copy(ir.Const(False)), self.line(self.node)))
        body += self.block(self.node.body)
        return ir.FunctionIR(
            name=self.name,
            params=[self.local(p) for p in self.params],
            body=body,
            ret="_ret" if self.has_return_value else None,
            filename=self.filename,
            firstline=self.offset + self.node.lineno,
            func=self.fn,
        )

    # --------------------------------------------------------- statements
    def stmt(self, node) -> None:
        kind = type(node)
        if kind in REFUSED_STMTS:
            construct, hint = REFUSED_STMTS[kind]
            self.refuse(node, construct, hint)
        method = getattr(self, "stmt_" + kind.__name__, None)
        if method is None:
            self.refuse(node, kind.__name__.lower(), "rewrite with assignments, if, for or while")
        method(node)

    def stmt_Pass(self, node) -> None:
        pass

    def stmt_Expr(self, node) -> None:
        if isinstance(node.value, ast.Constant):
            return  # docstring or a bare literal: no effect
        self.expr(node.value)  # calls may write arrays; refused constructs must be seen

    def stmt_Assign(self, node) -> None:
        if (increment := as_increment(node)) is not None:  # `a[k] = a[k] + e`: `a[k] += e`
            return self.stmt_AugAssign(increment)
        value = self.expr(node.value)
        for target in node.targets:
            self.assign(target, value, node, retarget=len(node.targets) == 1)

    def stmt_AnnAssign(self, node) -> None:
        if node.value is not None:
            self.assign(node.target, self.expr(node.value), node, retarget=True)

    def stmt_AugAssign(self, node) -> None:
        op = BINOPS[type(node.op)]
        target = node.target
        if isinstance(target, ast.Name):
            value = self.expr(node.value)
            t = self.assign_temp(ir.BinOp(op, self.name_atom(target), value), node)
            self.emit(ir.Assign(self.local(target.id), ir.Copy(t), self.line(node)))
        elif isinstance(target, ast.Subscript):
            array, index = self.subscript_parts(target)
            start = len(self.out)
            value = self.expr(node.value)
            if op in ("+", "-") and isinstance(array, ir.Var) and writes_nothing(self.out[start:]):
                self.emit(ir.Store(array.name, index, value, self.line(node), increment=op))
                return
            old = self.temp()  # read before the right side runs: it may write the element
            self.out.insert(start, ir.Assign(old, ir.Load(array, index), self.line(node)))
            self.single_temps.add(old)
            new = self.assign_temp(ir.BinOp(op, ir.Var(old), value), node)
            self.store(array, index, new, target)
        else:
            self.refuse(target, ast.unparse(target), "only names and array elements can be updated")

    def assign(self, target, value, node, retarget: bool) -> None:
        if isinstance(target, ast.Name):
            self.assign_name(self.local(target.id), value, node, retarget)
        elif isinstance(target, ast.Tuple | ast.List):
            if not isinstance(value, ir.Var):
                self.refuse(target, ast.unparse(target), "unpack only tuples")
            for k, elt in enumerate(target.elts):
                if isinstance(elt, ast.Starred):
                    self.refuse(elt, ast.unparse(elt), "unpack into a fixed number of names")
                part = self.assign_temp(ir.TupleGet(value.name, k), elt)
                self.assign(elt, part, node, retarget=True)
        elif isinstance(target, ast.Subscript):
            array, index = self.subscript_parts(target)
            self.store(array, index, value, target)
        else:
            self.refuse(target, ast.unparse(target), "assign to names, tuples of names or array elements")

    def assign_name(self, name: str, value, node, retarget: bool) -> None:
        """`name = value`, reusing the statement that computed a fresh temporary."""
        last = self.out[-1] if self.out else None
        if (retarget and isinstance(value, ir.Var) and value.name in self.single_temps
                and isinstance(last, ir.Assign) and last.target == value.name
                and ir.Var(name) not in ir.atoms_of(last.value)):
            last.target = name
            self.single_temps.discard(value.name)
        else:
            self.emit(ir.Assign(name, ir.Copy(value), self.line(node)))

    def store(self, array, index, value, node) -> None:
        if not isinstance(array, ir.Var):
            self.refuse(node, ast.unparse(node), "write only into arrays passed as arguments")
        self.emit(ir.Store(array.name, index, value, self.line(node)))

    def stmt_Return(self, node) -> None:
        if node.value is not None:
            self.assign_name("_ret", self.expr(node.value), node, retarget=True)
        if self.need_done:
            self.emit(ir.Assign("_done", ir.Copy(ir.Const(True)), self.line(node)))
        for ctx in self.loops:
            self.emit(ir.Assign(ctx.skip, ir.Copy(ir.Const(True)), self.line(node)))
            self.emit(ir.Assign(ctx.brk, ir.Copy(ir.Const(True)), self.line(node)))

    def stmt_Break(self, node) -> None:
        ctx = self.loops[-1]
        self.emit(ir.Assign(ctx.skip, ir.Copy(ir.Const(True)), self.line(node)))
        self.emit(ir.Assign(ctx.brk, ir.Copy(ir.Const(True)), self.line(node)))

    def stmt_Continue(self, node) -> None:
        self.emit(ir.Assign(self.loops[-1].skip, ir.Copy(ir.Const(True)), self.line(node)))

    def stmt_If(self, node) -> None:
        test = self.expr(node.test)
        if isinstance(test, ir.Var) and test.name not in self.single_temps:
            test = self.assign_temp(ir.Copy(test), node)  # a decision must not change later
        self.emit(ir.If(test, self.block(node.body), self.block(node.orelse), self.line(node)))

    def stmt_For(self, node) -> None:
        if node.orelse:
            self.refuse(node, "for ... else", "move the else-block after the loop using a flag")
        it = node.iter
        if not (isinstance(it, ast.Call) and self.resolve(it.func) is range and not it.keywords
                and 1 <= len(it.args) <= 3):
            self.refuse(it, ast.unparse(it), "loop over range(start, stop, step)")
        if not isinstance(node.target, ast.Name):
            self.refuse(node.target, ast.unparse(node.target), "use a single loop variable")
        bounds = [self.expr(a) for a in it.args]
        if len(bounds) == 1:
            bounds = [ir.Const(0), bounds[0]]
        if len(bounds) == 2:
            bounds.append(ir.Const(1))
        start, stop, step = bounds
        # the reverse sweep rebuilds the index from start and step: keep copies
        if isinstance(start, ir.Var):
            start = self.assign_temp(ir.Copy(start), node)
        if isinstance(step, ir.Var):
            step = self.assign_temp(ir.Copy(step), node)
        trips = None
        if all(isinstance(b, ir.Const) and type(b.value) is int for b in (start, stop, step)):
            if step.value == 0:
                self.refuse(it, ast.unparse(it), "range() step must not be zero")
            trips = len(range(start.value, stop.value, step.value))
        var, prologue = self.local(node.target.id), []
        if any(isinstance(n, ast.Name) and n.id == node.target.id and isinstance(n.ctx, ast.Store)
               for b in node.body for n in ast.walk(b)):
            # The body rebinds the loop variable: the loop counts in a name of its own (the reverse
            # sweep rebuilds it from start and step) and the body starts from a copy of it.
            counter = f"_i{self.nloop}"
            prologue = [ir.Assign(var, ir.Copy(ir.Var(counter)), self.line(node))]
            var = counter
        self.loop(node, var, start, stop, step, node.body, trips, prologue)

    def stmt_While(self, node) -> None:
        if node.orelse:
            self.refuse(node, "while ... else", "move the else-block after the loop using a flag")
        body = list(node.body)
        if not (isinstance(node.test, ast.Constant) and node.test.value):
            exit_test = ast.copy_location(ast.UnaryOp(ast.Not(), node.test), node.test)
            body.insert(0, ast.copy_location(
                ast.If(exit_test, [ast.copy_location(ast.Break(), node)], []), node))
        self.loop(node, None, None, None, None, body, None)

    def loop(self, node, var, start, stop, step, body, trips, prologue=()) -> None:
        brk, cont, ret = loop_exits(body)
        k = self.nloop
        self.nloop += 1
        ctx = LoopCtx(f"_skip{k}", f"_brk{k}")
        if brk or ret:
            self.emit(ir.Assign(ctx.brk, ir.Copy(ir.Const(False)), self.line(node)))
        self.loops.append(ctx)
        stmts = list(prologue)
        if brk or cont or ret:
            stmts.append(ir.Assign(ctx.skip, ir.Copy(ir.Const(False)), self.line(node)))
        stmts += self.block(body)
        self.loops.pop()
        line = self.line(node)
        self.emit(ir.Loop(var, start, stop, step, stmts, line, k,
                          exit_flag=ctx.brk if (brk or ret) else None, trips=trips,
                          checkpoint=CHECKPOINT_COMMENT in linecache.getline(self.filename, line)))

    # -------------------------------------------------------- expressions
    def expr(self, node):
        """Normalise an expression; return the atom holding its value."""
        kind = type(node)
        if kind in REFUSED_EXPRS:
            construct, hint = REFUSED_EXPRS[kind]
            self.refuse(node, construct, hint)
        method = getattr(self, "expr_" + kind.__name__, None)
        if method is None:
            self.refuse(node, ast.unparse(node), "use arithmetic, math functions, calls and indexing")
        return method(node)

    def expr_Constant(self, node):
        if isinstance(node.value, bool | int | float) or node.value is None:
            return ir.Const(node.value)
        self.refuse(node, ast.unparse(node), "only numeric constants can appear in differentiated functions "
                    "(gpuad does not differentiate through print or strings): print in the kernel, "
                    "outside the autodiff call")

    def expr_Name(self, node):
        return self.name_atom(node)

    def name_atom(self, node):
        if node.id in self.locals:
            return ir.Var(self.local(node.id))
        return self.global_atom(node.id, self.lookup(node), node)

    def lookup(self, node):
        if node.id in self.scope:
            return self.scope[node.id]
        if hasattr(builtins, node.id):
            return getattr(builtins, node.id)
        self.refuse(node, node.id, f"`{node.id}` is not defined where {self.fn.__name__} is defined")

    def global_atom(self, name: str, obj, node):
        if isinstance(obj, bool | int | float) or obj is None:
            return ir.Const(obj)
        return ir.Global(self.ns.bind(name, obj))

    def resolve(self, node):
        """The object a (dotted) global name denotes, or None for locals."""
        if isinstance(node, ast.Name):
            return None if node.id in self.locals else self.lookup(node)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            if base is None:
                return None
            if not hasattr(base, node.attr):
                self.refuse(node, ast.unparse(node),
                            f"{ast.unparse(node.value)} has no attribute {node.attr}")
            return getattr(base, node.attr)
        return None

    def bound_text(self, node) -> str:
        """Source text of a dotted global name, with its root bound in the namespace."""
        if isinstance(node, ast.Name):
            return self.ns.bind(node.id, self.lookup(node))
        return f"{self.bound_text(node.value)}.{node.attr}"

    def expr_Attribute(self, node):
        root = node
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and root.id in self.locals:
            if isinstance(node.value, ast.Name) and node.attr in LOCAL_ATTRS:
                return self.assign_temp(ir.Attr(self.local(node.value.id), node.attr), node)
            self.refuse(node, ast.unparse(node), "only .shape, .size and .ndim of local arrays are supported")
        if not isinstance(root, ast.Name):
            self.refuse(node, ast.unparse(node), "use attributes of modules or of local arrays only")
        owner = self.resolve(node.value)
        # by identity: `in` compares with ==, which a global numpy array (`W.T`) answers elementwise
        if any(owner is o for o in cuda_intrinsics()[0]) and node.attr in "xyz":
            # cuda.threadIdx.x and friends: an int read, kept as written (the targets overlay it)
            return self.assign_temp(ir.Copy(ir.Global(self.bound_text(node))), node)
        obj = self.resolve(node)
        if isinstance(obj, bool | int | float):
            return ir.Const(obj)
        return ir.Global(self.bound_text(node))

    def expr_Subscript(self, node):
        array, index = self.subscript_parts(node)
        return self.assign_temp(ir.Load(array, index), node)

    def subscript_parts(self, node):
        array = self.expr(node.value)
        if isinstance(array, ir.Const):
            self.refuse(node, ast.unparse(node), "index arrays or tuples only")
        sl = node.slice
        elts = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        index = []
        for e in elts:
            if isinstance(e, ast.Slice):  # a view: its shadow is the same slice of the shadow
                parts = (e.lower, e.upper, e.step)
                index.append(ir.Slice(*(self.expr(p) if p is not None else ir.Const(None) for p in parts)))
            else:
                index.append(self.expr(e))
        return array, tuple(index)

    def expr_Tuple(self, node):
        return self.assign_temp(ir.Pack(tuple(self.expr(e) for e in node.elts)), node)

    def expr_BinOp(self, node):
        a, b = self.expr(node.left), self.expr(node.right)
        op = BINOPS.get(type(node.op))
        if op is None:
            self.refuse(node, ast.unparse(node), "use arithmetic operators")
        if op == "**" and isinstance(b, ir.Const) and type(b.value) is int and b.value < 0:
            # x ** -1 at 0: inf on CUDA, ZeroDivisionError in numba's CPU integer power; a float
            # exponent gives the same IEEE result on both targets
            b = ir.Const(float(b.value))
        return self.assign_temp(ir.BinOp(op, a, b), node)

    def expr_UnaryOp(self, node):
        op = UNOPS[type(node.op)]
        a = self.expr(node.operand)
        if isinstance(a, ir.Const) and op in "-+" and isinstance(a.value, int | float):
            return ir.Const(-a.value if op == "-" else a.value)
        if op == "+":
            return a
        return self.assign_temp(ir.UnaryOp(op, a), node)

    def expr_Compare(self, node):
        """`a < b < c` as Python runs it: each operand evaluated once, left to right, and `c`
        only when `a < b` holds (`t = a < b; if t: t = b < c`, b kept in a temporary)."""
        for op in node.ops:
            if type(op) not in CMPOPS:
                self.refuse(node, ast.unparse(node), "use <, <=, >, >=, ==, !=")
        left = self.expr(node.left)
        result = self.temp()
        right = self.out_compare(result, CMPOPS[type(node.ops[0])], left, node.comparators[0], node)
        return ir.Var(result) if len(node.ops) == 1 else self.compare_rest(result, right, node, 1)

    def out_compare(self, result: str, op: str, left, right_node, node):
        """`result = left <op> right` with `right` evaluated here; returns the right atom."""
        right = self.expr(right_node)
        if isinstance(right, ir.Var) and right.name not in self.single_temps:
            right = self.assign_temp(ir.Copy(right), node)  # the next comparison reads this value
        self.emit(ir.Assign(result, ir.Compare(op, left, right), self.line(node)))
        return right

    def compare_rest(self, result: str, left, node, k: int):
        """The comparisons from the k-th on, each evaluated only while the chain holds."""
        test = self.assign_temp(ir.Copy(ir.Var(result)), node)  # the decision must not change
        saved, self.out = self.out, []
        right = self.out_compare(result, CMPOPS[type(node.ops[k])], left, node.comparators[k], node)
        if k + 1 < len(node.ops):
            self.compare_rest(result, right, node, k + 1)
        body, self.out = self.out, saved
        self.emit(ir.If(test, body, [], self.line(node)))
        return ir.Var(result)

    def expr_BoolOp(self, node):
        """`a and b` → `t = a; if t: t = b` (short-circuit kept)."""
        t = self.temp()
        first = self.expr(node.values[0])
        self.emit(ir.Assign(t, ir.Copy(first), self.line(node)))
        rest = node.values[1:]
        if not rest:
            return ir.Var(t)
        test = ir.Var(t)
        if isinstance(node.op, ast.Or):
            test = self.assign_temp(ir.UnaryOp("not", ir.Var(t)), node)
        saved, self.out = self.out, []
        tail = rest[0] if len(rest) == 1 else ast.copy_location(ast.BoolOp(node.op, rest), node)
        value = self.expr(tail)
        self.emit(ir.Assign(t, ir.Copy(value), self.line(node)))
        body, self.out = self.out, saved
        if test.name == t:  # the decision must not change when t is reassigned
            test = self.assign_temp(ir.Copy(ir.Var(t)), node)
        self.emit(ir.If(test, body, [], self.line(node)))
        return ir.Var(t)

    def expr_IfExp(self, node):
        test = self.expr(node.test)
        if isinstance(test, ir.Var) and test.name not in self.single_temps:
            test = self.assign_temp(ir.Copy(test), node)
        t = self.temp()
        branches = []
        for branch in (node.body, node.orelse):
            saved, self.out = self.out, []
            value = self.expr(branch)
            self.emit(ir.Assign(t, ir.Copy(value), self.line(branch)))
            branches.append(self.out)
            self.out = saved
        self.emit(ir.If(test, branches[0], branches[1], self.line(node)))
        return ir.Var(t)

    def expr_Call(self, node):
        func = self.resolve(node.func)
        if func is None:
            self.refuse(node, ast.unparse(node), "call global functions only")
        by_name = func not in (api.autodiff, api.autodiff_deferred) and inspect.isfunction(unwrap(func))
        if node.keywords and not by_name:  # keywords are placed for Python callees only
            self.refuse(node, ast.unparse(node), "pass arguments by position")
        if unwrap(func) is self.fn:
            self.refuse(node, ast.unparse(node), "recursion is not supported; rewrite with a loop")
        if func is range:
            self.refuse(node, ast.unparse(node), "use range() only as the iterable of a for loop")
        if func in (api.autodiff, api.autodiff_deferred):
            return self.autodiff_call(node, func)
        _, thread_index, refused = cuda_intrinsics()
        if func in refused:
            self.refuse(node, ast.unparse(node), f"{refused[func]} inside a differentiated function are not "
                        "supported: do them in the kernel, outside the autodiff call")
        if func is thread_index[0] and not (len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                                            and node.args[0].value == 1):
            self.refuse(node, ast.unparse(node), "use cuda.grid(1) here, or pass 2-D indices as arguments")
        if isinstance(func, type) and issubclass(func, api.Activity):
            self.refuse(node, ast.unparse(node), "activity wrappers belong inside autodiff(...) calls")
        if func in (min, max) and len(node.args) > 2:  # min(a, b, c) → min(min(a, b), c)
            nested = ast.copy_location(ast.Call(node.func, node.args[:2], []), node)
            return self.expr(ast.copy_location(ast.Call(node.func, [nested, *node.args[2:]], []), node))
        args = self.call_arguments(node, func)
        return self.assign_temp(ir.Call(func, self.bound_text(node.func), args), node)

    def call_arguments(self, node, func) -> tuple:
        """The call's argument atoms by position. For a Python callee, keywords are put in their
        places and omitted parameters take their defaults, as Python binds them; the defaults are
        inlined as constants (they are part of the derivative's cache key)."""
        args = [self.expr(a) for a in node.args]
        callee = unwrap(func)
        if not inspect.isfunction(callee):
            return tuple(args)
        code = callee.__code__
        params = code.co_varnames[:code.co_argcount]
        bound = dict(enumerate(args))
        for kw in node.keywords:
            if kw.arg not in params or params.index(kw.arg) in bound:
                self.refuse(node, ast.unparse(node), f"pass each parameter of {callee.__name__} once, "
                            f"by position or by its name ({', '.join(params)})")
            bound[params.index(kw.arg)] = self.expr(kw.value)
        if len(args) > len(params):
            self.refuse(node, ast.unparse(node), f"{callee.__name__} takes {len(params)} arguments")
        defaults = callee.__defaults__ or ()
        first_default = len(params) - len(defaults)
        for k in range(len(params)):
            if k not in bound:
                if k < first_default:
                    self.refuse(node, ast.unparse(node), f"pass `{params[k]}`: {callee.__name__} has no "
                                "default for it")
                bound[k] = self.default_atom(defaults[k - first_default], params[k], callee, node)
        return tuple(bound[k] for k in range(len(params)))

    def default_atom(self, value, param: str, callee, node):
        if isinstance(value, bool | int | float) or value is None:
            return ir.Const(value)
        self.refuse(node, ast.unparse(node), f"pass `{param}` explicitly: its default in {callee.__name__} "
                    f"is a {type(value).__name__}, and only numbers and None are inlined")

    def autodiff_call(self, node, func):
        if len(node.args) < 2:
            self.refuse(node, ast.unparse(node), "call autodiff(mode, f, args...)")
        mode = self.resolve(node.args[0])
        f = self.resolve(node.args[1])
        if not isinstance(mode, api.Mode) or f is None:
            self.refuse(node, ast.unparse(node), "pass a gpuad mode and a global function to autodiff")
        wrappers = []
        for a in node.args[2:]:
            cls = self.resolve(a.func) if isinstance(a, ast.Call) else None
            if not (isinstance(cls, type) and issubclass(cls, api.Activity)):
                # An unwrapped argument is Const, as in Enzyme and in kernels.
                wrappers.append((api.Const, self.ns.bind("Const", api.Const), (self.expr(a),)))
                continue
            atoms = tuple(self.expr(x) for x in a.args)
            wrappers.append((cls, self.bound_text(a.func), atoms))
        call = ir.AutodiffCall(func, self.bound_text(node.func), mode, self.bound_text(node.args[0]),
                               f, self.bound_text(node.args[1]), tuple(wrappers))
        return self.assign_temp(call, node)


def normalize(fn, namespace: Namespace | None = None, name: str | None = None) -> ir.FunctionIR:
    """Normalise `fn` (see module docstring); globals are bound in `namespace`."""
    ns = namespace if namespace is not None else Namespace()
    _normalizing.append(unwrap(fn))
    try:
        fir = Normalizer(fn, ns, name).run()
    finally:
        _normalizing.pop()
    fir.globals = ns.objects
    return fir
