"""The normalised form the differentiation engine works on.

A function is a list of simple statements in three-address form: every
right-hand side is one operation on atoms (names or constants). Control flow
is structured (`If`, `Loop`); `break`, `continue` and early `return` have
already been turned into flags by the normaliser, so the reverse sweep can
replay any statement list backwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


# ----------------------------------------------------------------- atoms
@dataclass(frozen=True)
class Var:
    """A local variable (user name, renamed if it clashed, or a temporary)."""

    name: str


@dataclass(frozen=True)
class Const:
    """A literal int, float, bool or None."""

    value: object


@dataclass(frozen=True)
class Global:
    """A global object bound in the derivative's namespace under `name`."""

    name: str


Atom = Union[Var, Const, Global]


@dataclass(frozen=True)
class Slice:
    """`start:stop:step` as one element of an index (atoms, `Const(None)` where left out)."""

    start: Atom
    stop: Atom
    step: Atom

    @property
    def atoms(self) -> list:
        return [self.start, self.stop, self.step]


def index_atoms(index: tuple) -> list:
    """The atoms of an index, those inside slices included."""
    return [a for i in index for a in (i.atoms if isinstance(i, Slice) else [i])]


# ------------------------------------------------------------ expressions
@dataclass(frozen=True)
class Copy:
    a: Atom


@dataclass(frozen=True)
class BinOp:
    op: str  # '+', '-', '*', '/', '//', '%', '**', '&', '|', '^', '<<', '>>'
    a: Atom
    b: Atom


@dataclass(frozen=True)
class UnaryOp:
    op: str  # '-', '+', 'not', '~'
    a: Atom


@dataclass(frozen=True)
class Compare:
    op: str  # '<', '<=', '>', '>=', '==', '!=', 'is', 'is not'
    a: Atom
    b: Atom


@dataclass(frozen=True)
class Call:
    """A call of a resolved callable; `func` is the object, `name` its bound name."""

    func: object
    name: str
    args: tuple
    # For a call of a plain function taking tuples: per argument, None or the nested tuple of
    # atoms the tuple holds. Derivatives pass these leaves one by one (`gpuad.ad.tuples`).
    leaves: tuple | None = None


def flat_leaves(pattern) -> list:
    return [a for p in pattern for a in flat_leaves(p)] if isinstance(pattern, tuple) else [pattern]


def call_arguments(e) -> list:
    """A call's arguments with every tuple argument replaced by its leaves."""
    if e.leaves is None:
        return list(e.args)
    return [a for arg, pattern in zip(e.args, e.leaves)
            for a in ([arg] if pattern is None else flat_leaves(pattern))]


@dataclass(frozen=True)
class Load:
    """`array[index]` (or a tuple indexed by a constant, resolved after typing).

    `array` is a `Var` (local array or tuple) or a `Global` (module-level array).
    """

    array: object
    index: tuple


@dataclass(frozen=True)
class Attr:
    """`var.shape`, `var.size`, `var.ndim` — the only attributes of locals allowed."""

    var: str
    attr: str


@dataclass(frozen=True)
class Pack:
    """A tuple display `(a, b, ...)`."""

    items: tuple


@dataclass(frozen=True)
class TupleGet:
    """Element `k` of a tuple-typed variable."""

    var: str
    k: int


@dataclass(frozen=True)
class AutodiffCall:
    """A nested `autodiff(mode, f, Wrapper(args)...)` call site."""

    func: object  # gpuad.api.autodiff or autodiff_deferred
    name: str
    mode: object
    mode_name: str
    f: object
    f_name: str
    wrappers: tuple  # ((activity class, class bound name, (atoms...)), ...)


Expr = Union[Copy, BinOp, UnaryOp, Compare, Call, Load, Attr, Pack, TupleGet, AutodiffCall]


# ------------------------------------------------------------- statements
@dataclass
class Assign:
    """`target = value`; target is a name or (for calls returning tuples) a nested tuple of names."""

    target: object
    value: Expr
    line: int


@dataclass
class Store:
    """`array[index] = value`, or with `increment` "+" / "-": `array[index] += value` / `-=`.

    An increment reads the element it writes, so its adjoint only reads the
    shadow (`d_value += d_array[index]`): no zeroing and no atomic re-add, which
    other threads incrementing the same element would race with.
    """

    array: str
    index: tuple
    value: Atom
    line: int
    increment: str = ""


@dataclass
class If:
    test: Atom
    body: list
    orelse: list
    line: int


@dataclass
class Loop:
    """`for var in range(start, stop, step)` or, with `var` None, `while True`.

    `exit_flag` names the flag whose truth ends the loop after an iteration
    (set by `break` or `return`); `trips` is the static trip count if known;
    `checkpoint` is set by a `# gpuad: checkpoint` comment on the loop's line.
    """

    var: str | None
    start: Atom | None
    stop: Atom | None
    step: Atom | None
    body: list
    line: int
    ident: int
    exit_flag: str | None = None
    trips: int | None = None
    checkpoint: bool = False


Stmt = Union[Assign, Store, If, Loop]


@dataclass
class FunctionIR:
    """One normalised function: parameters, body, and the name holding the result."""

    name: str
    params: list
    body: list
    ret: str | None  # variable holding the return value, None if f returns nothing
    filename: str
    firstline: int
    func: object = None
    globals: dict = field(default_factory=dict)  # bound name -> object


def atoms_of(expr) -> list:
    """The atoms an expression reads (wrappers of nested autodiff calls included)."""
    if isinstance(expr, Copy | UnaryOp):
        return [expr.a]
    if isinstance(expr, BinOp | Compare):
        return [expr.a, expr.b]
    if isinstance(expr, Call):
        return list(expr.args) if expr.leaves is None else list(expr.args) + call_arguments(expr)
    if isinstance(expr, Load):
        return [expr.array, *index_atoms(expr.index)]
    if isinstance(expr, Attr):
        return [Var(expr.var)]
    if isinstance(expr, Pack):
        return list(expr.items)
    if isinstance(expr, TupleGet):
        return [Var(expr.var)]
    if isinstance(expr, AutodiffCall):
        return [a for _, _, atoms in expr.wrappers for a in atoms]
    raise TypeError(expr)


def target_names(target) -> list:
    """Flatten an assignment target (a name or nested tuple of names)."""
    if isinstance(target, str):
        return [target]
    return [n for t in target for n in target_names(t)]


def walk(stmts):
    """Every statement, depth first, in program order."""
    for s in stmts:
        yield s
        if isinstance(s, If):
            yield from walk(s.body)
            yield from walk(s.orelse)
        elif isinstance(s, Loop):
            yield from walk(s.body)


def multi_assigned(fir: FunctionIR) -> set:
    """Variables assigned more than once per call (several sites, loops, parameters)."""
    count: dict = {p: 1 for p in fir.params}

    def visit(stmts, in_loop):
        for s in stmts:
            if isinstance(s, Assign):
                for n in target_names(s.target):
                    count[n] = count.get(n, 0) + (2 if in_loop else 1)
            elif isinstance(s, If):
                visit(s.body, in_loop)
                visit(s.orelse, in_loop)
            elif isinstance(s, Loop):
                if s.var:
                    count[s.var] = count.get(s.var, 0) + 2
                visit(s.body, True)

    visit(fir.body, False)
    return {n for n, c in count.items() if c > 1}
