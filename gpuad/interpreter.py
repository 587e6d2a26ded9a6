"""Stage 1: resolve every call in a kernel through a target's method table.

The interpreter reads a kernel's Python source, and recursively that of every
plain Python function it calls, and rewrites each into a fresh function whose
calls are bound by identity: overlays replace what the table says, plain
functions become device functions of the target, and every `autodiff` call
becomes a deferred call site (`autodiff` → `autodiff_deferred`, the overlay
CUDA.jl applies to Enzyme's `autodiff`). What was replaced is recorded.

Every rewritten function takes one hidden trailing parameter, the per-thread
status array, which carries tape-overflow reports out of a kernel (and, on
the cpu target, the emulated thread index in).
"""
from __future__ import annotations

import ast
import builtins
import dataclasses
import inspect
import types
from dataclasses import dataclass, field
from typing import Any, Callable

from gpuad import api
from gpuad.ad.cache_key import derivative_key
from gpuad.ad.site_facts import KernelLanes
from gpuad.errors import AutodiffCallError, InterpretError, SourceLocation
from gpuad.intrinsics import is_global_thread_index
from gpuad.method_table import MethodTable, qualified_name
from gpuad.record import OverlayRecord
from gpuad.source import function_scope, function_source

STATUS = "_gpuad_status"
_UNRESOLVED = object()


@dataclass(frozen=True)
class DeferredSite:
    """One `autodiff` call site: what to differentiate and how."""

    id: int
    function: Callable
    mode: api.Mode
    activities: tuple[type, ...]
    location: SourceLocation
    # Facts for dropping atomics (see `site_ownership`): positions of the
    # arguments that are the thread's global id, and of the Duplicated
    # arguments whose shadow no other site or call of the kernel can reach.
    thread_ids: frozenset[int] = frozenset()
    exclusive: frozenset[int] = frozenset()
    # Duplicated arguments whose shadow is a `cuda.local.array` of the calling
    # function: the thread's own memory, so never atomic (see `private_shadows`).
    private: frozenset[int] = frozenset()
    # Arguments that are the thread id plus or minus an int constant (`i + 1`): a different value
    # in every lane of a warp, so their shadow updates combine nothing (`gpuad.ad.site_facts`).
    distinct_lanes: frozenset[int] = frozenset()


@dataclass
class ResolvedFunction:
    """A function rewritten for a target, ready for numba."""

    original: Callable
    pyfunc: Callable
    had_status: bool  # the status parameter was already there (generated code)
    source: str


@dataclass
class ParsedFunction:
    tree: ast.FunctionDef
    filename: str
    source: str


def parse_function(fn: Callable) -> ParsedFunction:
    """The function's AST with line numbers of its real file (or cell)."""
    src = function_source(fn, InterpretError, "define kernels and the functions they call in a file or "
                          "notebook cell, not with exec() or lambda")
    tree = src.tree
    ast.increment_lineno(tree, src.offset)
    tree.decorator_list = []
    return ParsedFunction(tree, src.filename, src.text)


function_namespace = function_scope


def local_names(tree: ast.FunctionDef) -> set[str]:
    names = {a.arg for a in tree.args.args}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
    return names


def static_value(node: ast.expr, namespace: dict, locals_: set[str]) -> Any:
    """What `node` refers to at compile time, or _UNRESOLVED if it is a run-time value."""
    if isinstance(node, ast.Name):
        if node.id in locals_:
            return _UNRESOLVED
        if node.id in namespace:
            return namespace[node.id]
        return getattr(builtins, node.id, _UNRESOLVED)
    if isinstance(node, ast.Attribute):
        base = static_value(node.value, namespace, locals_)
        if base is _UNRESOLVED:
            return _UNRESOLVED
        try:
            return inspect.getattr_static(base, node.attr)
        except AttributeError:
            return _UNRESOLVED
    return _UNRESOLVED


def is_plain_function(obj: Any) -> bool:
    """A user's Python function that the interpreter must follow into."""
    if not isinstance(obj, types.FunctionType):
        return False
    module = getattr(obj, "__module__", "") or ""
    return not module.startswith(("numba", "numpy", "math"))


@dataclass
class Interpreter:
    """Resolves functions for one target; one instance per compilation."""

    table: MethodTable
    bind_function: Callable[[ResolvedFunction], Any]  # → what calls of it bind to
    bind_site: Callable[[DeferredSite], Any]  # → the callable of a deferred site
    # False: never let the engine drop atomics (a launch breaks their assumptions).
    thread_ownership: bool = True
    overlays: list[OverlayRecord] = field(default_factory=list)
    sites: list[DeferredSite] = field(default_factory=list)
    _resolved: dict[int, tuple[ResolvedFunction, Any]] = field(default_factory=dict)
    _keys: dict[int, tuple] = field(default_factory=dict)  # id(function) -> its derivative_key when resolved
    _in_progress: set[int] = field(default_factory=set)
    _root: Callable | None = None  # the kernel: its parameters are the launch's arguments

    def resolve(self, fn: Callable) -> ResolvedFunction:
        return self._resolve(fn)[0]

    def _resolve(self, fn: Callable) -> tuple[ResolvedFunction, Any]:
        key = id(fn)
        # A rewritten function binds the values its globals have now (numba freezes them too):
        # reused only while they, its code and its callees are unchanged (a host registry lives long).
        if key in self._resolved and self._keys.get(key) == derivative_key(fn):
            return self._resolved[key]
        if key in self._in_progress:
            raise InterpretError(
                f"{fn.__qualname__} calls itself (directly or through other functions)",
                SourceLocation(fn.__code__.co_filename, fn.__code__.co_firstlineno, "recursion", fn.__name__),
                hint="GPU device functions cannot recurse; rewrite it as a loop",
            )
        self._in_progress.add(key)
        try:
            resolved = self._rewrite(fn)
            bound = self.bind_function(resolved)
        finally:
            self._in_progress.discard(key)
        self._resolved[key] = (resolved, bound)
        self._keys[key] = derivative_key(fn)
        return resolved, bound

    def _rewrite(self, fn: Callable) -> ResolvedFunction:
        if self._root is None:
            self._root = fn
        parsed = parse_function(fn)
        namespace = function_namespace(fn)
        rewriter = _CallRewriter(self, fn, parsed, namespace)
        tree = rewriter.visit(parsed.tree)
        had_status = _has_status_parameter(fn)
        if not had_status:
            tree.args.args.append(ast.arg(arg=STATUS))
        module = ast.fix_missing_locations(ast.Module(body=[tree], type_ignores=[]))
        code = compile(module, parsed.filename, "exec")
        exec(code, namespace)  # noqa: S102 - compiling the user's own, rewritten code
        pyfunc = namespace[tree.name]
        return ResolvedFunction(fn, pyfunc, had_status, parsed.source)


def _has_status_parameter(fn: Callable) -> bool:
    """Generated derivatives already end with the status parameter."""
    params = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    generated = fn.__code__.co_filename.startswith("<gpuad")
    return bool(params) and (params[-1] == STATUS or (generated and params[-1] == "status"))


def python_of_device_function(callee: Any, location: SourceLocation) -> Any:
    """The Python function of a `@cuda.jit(device=True)` dispatcher, else `callee` itself.

    gpuad compiles it like any function a kernel calls, for the kernel's
    target: a numba-cuda dispatcher only compiles for a GPU (numba's cpu
    typing cannot call it), and its body needs the target's overlays.
    """
    from gpuad.compiler.numba_adapter import cuda_jit_options

    options = cuda_jit_options(callee)
    if options is None:
        return _python_of_cpu_dispatcher(callee)
    name = callee.py_func.__name__
    if not options.get("device"):
        raise InterpretError(
            f"{name} is a CUDA kernel (@cuda.jit), and a kernel cannot call a kernel", location,
            hint=f"declare {name} with @cuda.jit(device=True), or as a plain Python function",
        )
    if options.get("link"):
        raise InterpretError(
            f"device function {name} links external code ({', '.join(map(str, options['link']))}), "
            "which gpuad cannot compile for its targets", location,
            hint="write the function in Python, or call it from a numba-cuda kernel instead",
        )
    return callee.py_func


def _python_of_cpu_dispatcher(callee: Any) -> Any:
    """The Python function of a user's `@numba.njit` dispatcher, else `callee` itself: called as
    compiled, it would keep the global arrays numba froze into it at its first compile (an
    in-place change never seen), and gpuad compiles what a kernel calls for the kernel's target."""
    from numba.core.registry import CPUDispatcher

    py_func = getattr(callee, "py_func", None)
    return py_func if isinstance(callee, CPUDispatcher) and is_plain_function(py_func) else callee


class _CallRewriter(ast.NodeTransformer):
    """Rebinds the calls of one function; see `Interpreter`."""

    def __init__(self, interp: Interpreter, fn: Callable, parsed: ParsedFunction, namespace: dict):
        self.interp, self.fn, self.parsed, self.namespace = interp, fn, parsed, namespace
        self.locals = local_names(parsed.tree)
        self.counter = 0
        self.thread_id_names = thread_id_names(parsed.tree, namespace) if interp.thread_ownership else set()
        # Read before the rewrite: which arguments differ in every lane of a warp (gpuad.ad.site_facts).
        self.lanes = KernelLanes(parsed.tree, self.thread_id_names)
        self.is_root = fn is interp._root
        # Read before the rewrite adds names of its own; only the kernel's shadows can be exclusive.
        self.name_uses = name_uses(parsed.tree) if self.is_root else {}

    def location(self, node: ast.AST) -> SourceLocation:
        return SourceLocation(
            self.parsed.filename, getattr(node, "lineno", 0), ast.unparse(node)[:80], self.fn.__name__
        )

    def bind(self, value: Any) -> ast.Name:
        name = f"_gpuad_{self.counter}"
        self.counter += 1
        self.namespace[name] = value
        return ast.Name(id=name, ctx=ast.Load())

    def record(self, node, original, replacement_name: str) -> None:
        self.interp.overlays.append(
            OverlayRecord(
                call_site=f"{self.parsed.filename}:{node.lineno}",
                original=qualified_name(original),
                replacement=replacement_name,
                function=self.fn.__qualname__,
            )
        )

    def status(self) -> ast.Name:
        # Generated derivatives bring their own status parameter, last.
        name = self.parsed.tree.args.args[-1].arg if _has_status_parameter(self.fn) else STATUS
        return ast.Name(id=name, ctx=ast.Load())

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        overlay, original = self.attribute_overlay(node)
        if overlay is None or not isinstance(node.ctx, ast.Load):
            return self.generic_visit(node)
        self.record(node, original, qualified_name(overlay.replacement))
        replacement = self.reference(overlay)
        if overlay.needs_context:
            return ast.copy_location(ast.Call(replacement, [self.status()], []), node)
        return ast.copy_location(replacement, node)

    def attribute_overlay(self, node: ast.Attribute):
        """The overlay of `owner.attr` (by owner and name), else of its value."""
        owner = static_value(node.value, self.namespace, self.locals)
        if owner is _UNRESOLVED:
            return None, None
        overlay = self.interp.table.lookup_attribute(owner, node.attr)
        if overlay is not None:
            return overlay, (owner, node.attr)
        value = static_value(node, self.namespace, self.locals)
        return (self.interp.table.lookup(value), value) if value is not _UNRESOLVED else (None, None)

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        check_autodiff_unpacking(node, self.namespace, self.locals, self.location(node))
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        callee = static_value(node.func, self.namespace, self.locals)
        overlay = self.interp.table.lookup(callee) if callee is not _UNRESOLVED else None
        if overlay is not None:
            if overlay.listed:
                self.record(node, callee, qualified_name(overlay.replacement))
            callee = overlay.replacement
        elif callee is not _UNRESOLVED:
            callee = python_of_device_function(callee, self.location(node))
        if callee is api.autodiff_deferred:
            return self.deferred_site(node)
        node.args = [self.visit(a) for a in node.args]
        node.keywords = [self.visit(k) for k in node.keywords]
        if callee is _UNRESOLVED:
            node.func = self.visit(node.func)
            return node
        if overlay is not None and overlay.needs_context:
            node.args.append(self.status())
        if is_plain_function(callee):
            resolved, bound = self.interp._resolve(callee)
            if not resolved.had_status:  # every parameter passed by position, then the status
                node.args, node.keywords = [*self.positional_arguments(callee, node), self.status()], []
            node.func = ast.copy_location(self.bind(bound), node.func)
        elif overlay is not None:
            node.func = ast.copy_location(self.reference(overlay), node.func)
        return node

    def positional_arguments(self, callee: Callable, node: ast.Call) -> list[ast.expr]:
        """The call's arguments in parameter order: keywords put in place, omitted ones the defaults.

        Keywords are only moved when that keeps Python's order of evaluation.
        """
        code = callee.__code__
        params = code.co_varnames[:code.co_argcount]
        where = self.location(node)
        if code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS) or code.co_kwonlyargcount:
            if node.keywords:
                raise InterpretError(f"{callee.__name__} takes *args, **kwargs or keyword-only "
                                     "parameters", where, hint="pass plain positional arguments")
            return list(node.args)
        bound = dict(enumerate(node.args))
        for kw in node.keywords:
            if kw.arg not in params or params.index(kw.arg) in bound:
                raise InterpretError(f"pass each parameter of {callee.__name__} once ({', '.join(params)})",
                                     where, hint="check the argument names of the call")
            bound[params.index(kw.arg)] = kw.value
        if len(node.args) > len(params):
            raise InterpretError(f"{callee.__name__} takes {len(params)} arguments, the call passes "
                                 f"{len(node.args)}", where)
        named = [params.index(kw.arg) for kw in node.keywords]
        # Reordering names and constants changes no evaluation order; other expressions might.
        if named != sorted(named) and not all(isinstance(kw.value, ast.Name | ast.Constant)
                                              for kw in node.keywords):
            raise InterpretError(f"the arguments of this call of {callee.__name__} cannot be passed by "
                                 "position in the order Python evaluates them", where,
                                 hint=f"pass them in parameter order ({', '.join(params)})")
        defaults = callee.__defaults__ or ()
        first_default = len(params) - len(defaults)
        for k in range(len(params)):
            if k not in bound and k < first_default:
                raise InterpretError(f"{callee.__name__}() is missing its argument `{params[k]}`", where)
            if k not in bound:
                bound[k] = self.bind(defaults[k - first_default])
        return [bound[k] for k in range(len(params))]

    def reference(self, overlay) -> ast.expr:
        """An expression for the overlay's replacement that numba can type."""
        if is_plain_function(overlay.replacement):
            return self.bind(self.interp._resolve(overlay.replacement)[1])
        if overlay.spelled is None:
            return self.bind(overlay.replacement)
        module, path = overlay.spelled
        expr: ast.expr = self.bind(module)
        for attr in path.split("."):
            expr = ast.Attribute(value=expr, attr=attr, ctx=ast.Load())
        return expr

    def deferred_site(self, node: ast.Call) -> ast.AST:
        location = self.location(node)
        site, flat = parse_autodiff_call(
            node, self.namespace, self.locals, location, len(self.interp.sites)
        )
        if self.interp.thread_ownership:
            site = site_ownership(site, node, self)
        # Whatever the launch: atomics on local memory trap (NVVM), and no other thread sees it.
        site = dataclasses.replace(site, private=private_shadows(site, node, self))
        self.interp.sites.append(site)
        flat_args = [self.visit(a) for a in flat]
        site_callable = self.bind(self.interp.bind_site(site))
        return ast.copy_location(ast.Call(site_callable, [*flat_args, self.status()], []), node)


def thread_id_names(tree: ast.FunctionDef, namespace: dict) -> set[str]:
    """Locals assigned once, from `cuda.grid(1)` or `gpuad.thread_index()`: the global thread id."""
    stores: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            stores[node.id] = stores.get(node.id, 0) + 1
    params = {a.arg for a in tree.args.args}
    locals_ = local_names(tree)
    names = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Call)):
            continue
        name, call = node.targets[0].id, node.value
        callee = static_value(call.func, namespace, locals_)
        if is_global_thread_index(callee, call.args, call.keywords) and stores[name] == 1 \
                and name not in params:
            names.add(name)
    return names


def name_uses(tree: ast.FunctionDef) -> dict[str, list[tuple[ast.Name, ast.AST]]]:
    """Every `Name` node of the function with its parent node, by name."""
    uses: dict[str, list[tuple[ast.Name, ast.AST]]] = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            if isinstance(child, ast.Name):
                uses.setdefault(child.id, []).append((child, parent))
    return uses


def site_ownership(site: DeferredSite, node: ast.Call, rewriter: _CallRewriter) -> DeferredSite:
    """Add to a site the facts that let the engine drop atomics (docs/design.md: only where proven).

    An argument is a thread id when it is a local holding `cuda.grid(1)`. A
    Duplicated argument is exclusive when the site is in the kernel itself and
    its shadow is a kernel parameter used nowhere else except to be indexed:
    then only this site's derivative, in the thread the index names, can
    update that element. Two run-time facts remain, checked at launch: a 1-D
    grid (so the id is unique) and array arguments that do not overlap.
    """
    thread_ids, exclusive, distinct = set(), set(), set()
    for k, (arg, activity) in enumerate(zip(node.args[2:], site.activities)):
        wrapped = _activity_class(arg, rewriter.namespace, rewriter.locals) is not None
        values = arg.args if wrapped else [arg]
        if activity is api.Const and isinstance(values[0], ast.Name) \
                and values[0].id in rewriter.thread_id_names:
            thread_ids.add(k)
        if activity is api.Const and rewriter.lanes.distinct(values[0], node):
            distinct.add(k)
        if issubclass(activity, api.Duplicated) and rewriter.is_root and _only_indexed(values[1], rewriter):
            exclusive.add(k)
    return dataclasses.replace(site, thread_ids=frozenset(thread_ids), exclusive=frozenset(exclusive),
                               distinct_lanes=frozenset(distinct))


def private_shadows(site: DeferredSite, node: ast.Call, rewriter: _CallRewriter) -> frozenset[int]:
    """Positions of the Duplicated arguments whose shadow is a local array of this thread.

    The shadow must be a name the calling function binds once, to
    `cuda.local.array(...)`, and is not a parameter: per-thread memory that no
    other thread can address, however it is indexed or passed on.
    """
    from numba import cuda

    tree = rewriter.parsed.tree
    params = {a.arg for a in tree.args.args}
    stores: dict[str, int] = {}
    local_arrays = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            stores[n.id] = stores.get(n.id, 0) + 1
        if (isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
                and isinstance(n.value, ast.Call)
                and static_value(n.value.func, rewriter.namespace, rewriter.locals) is cuda.local.array):
            local_arrays.add(n.targets[0].id)
    private = set()
    for k, (arg, activity) in enumerate(zip(node.args[2:], site.activities)):
        if not (issubclass(activity, api.Duplicated) and isinstance(arg, ast.Call) and len(arg.args) == 2):
            continue
        shadow = arg.args[1]
        if isinstance(shadow, ast.Name) and shadow.id in local_arrays and shadow.id not in params \
                and stores.get(shadow.id) == 1:
            private.add(k)
    return frozenset(private)


def _only_indexed(shadow: ast.expr, rewriter: _CallRewriter) -> bool:
    """`shadow` is a kernel parameter, never reassigned, and otherwise only indexed or measured."""
    params = {a.arg for a in rewriter.parsed.tree.args.args}
    if not (isinstance(shadow, ast.Name) and shadow.id in params):
        return False
    for use, parent in rewriter.name_uses[shadow.id]:
        if use is shadow:
            continue
        if not (isinstance(use.ctx, ast.Load) and isinstance(parent, ast.Subscript | ast.Attribute)
                and parent.value is use):
            return False
    return True


def _activity_class(node: ast.expr, namespace, locals_) -> type | None:
    if isinstance(node, ast.Call):
        wrapper = static_value(node.func, namespace, locals_)
        if isinstance(wrapper, type):
            if issubclass(wrapper, api.Activity):
                return wrapper
            raise AutodiffCallError(
                f"unknown activity wrapper `{wrapper.__name__}`",
                hint="wrap arguments in Active, Const, Duplicated or DuplicatedNoNeed",
            )
    return None


def check_autodiff_unpacking(node: ast.Assign, namespace, locals_, location) -> None:
    """`dx, dy = autodiff(Reverse, f, ...)` is the likeliest first mistake: say what comes back."""
    call = node.value
    if not (isinstance(call, ast.Call) and len(call.args) >= 2 and static_value(
            call.func, namespace, locals_) in (api.autodiff, api.autodiff_deferred)):
        return
    mode = static_value(call.args[0], namespace, locals_)
    if not isinstance(mode, api.Mode):
        return
    n_args = len(call.args) - 2
    for target in node.targets:
        if not isinstance(target, ast.Tuple | ast.List):
            continue
        names = [ast.unparse(t) for t in target.elts]
        if mode.reverse:
            first = target.elts[0] if target.elts else None
            fits = not isinstance(first, ast.Tuple | ast.List) or len(first.elts) == n_args
            if isinstance(first, ast.Tuple | ast.List) and fits:
                derivs = [ast.unparse(e) for e in first.elts]
            else:
                derivs = names if len(names) == n_args else [f"d{k}" for k in range(n_args)]
            inner = "(" + ", ".join(derivs) + ("," if n_args == 1 else "") + ")"
            what = "(derivatives, primal)" if mode.with_primal else "(derivatives,)"
            shape = f"{inner}, primal" if mode.with_primal else f"{inner},"
            detail = "derivatives: a tuple with one entry per argument (None for those not Active)"
        else:
            fits, what = True, "(df, primal)" if mode.with_primal else "(df,)"
            shape, detail = ("df, primal" if mode.with_primal else "df,"), "df: the directional derivative"
        if len(target.elts) != (2 if mode.with_primal else 1) or not fits:
            raise AutodiffCallError(f"autodiff({mode.name}, ...) returns {what}; {detail}", location,
                                    hint=f"unpack it as `{shape} = autodiff(...)`")


def parse_autodiff_call(node: ast.Call, namespace, locals_, location, site_id):
    """Check an `autodiff(mode, f, args...)` call; return its site and flat arguments."""
    if node.keywords or len(node.args) < 2:
        raise AutodiffCallError(
            "autodiff takes (mode, f, args...) with no keyword arguments", location,
            hint="e.g. autodiff(Reverse, f, Active(x), Duplicated(a, da))",
        )
    mode = static_value(node.args[0], namespace, locals_)
    if not isinstance(mode, api.Mode):
        raise AutodiffCallError(
            f"the first argument of autodiff must be a mode, got `{ast.unparse(node.args[0])}`",
            location, hint="use gpuad.Reverse, ReverseWithPrimal, Forward or ForwardWithPrimal",
        )
    fn = static_value(node.args[1], namespace, locals_)
    name = node.args[1]
    if isinstance(name, ast.Name) and name.id not in locals_ and fn is _UNRESOLVED:
        raise AutodiffCallError(
            f"`{name.id}` is not defined where the kernel was created", location,
            hint=f"check the spelling of `{name.id}`, or define (or import) it before creating the kernel",
        )
    if not is_plain_function(fn):
        raise AutodiffCallError(
            f"`{ast.unparse(node.args[1])}` is not a plain Python function", location,
            hint="pass a function defined with `def` (not a kernel, lambda or local variable)",
        )
    activities, flat = [], []
    for arg in node.args[2:]:
        try:
            wrapper = _activity_class(arg, namespace, locals_)
        except AutodiffCallError as exc:
            raise AutodiffCallError(exc.message, location, exc.hint) from None
        values = arg.args if wrapper is not None else [arg]
        wrapper = wrapper or api.Const  # Enzyme: an unannotated argument is Const
        if len(values) != wrapper.arity:
            raise AutodiffCallError(
                f"{wrapper.__name__} takes {wrapper.arity} argument(s), got {len(values)}", location
            )
        activities.append(wrapper)
        flat.extend(values)
    params = inspect.signature(fn).parameters
    if len(params) != len(activities):
        raise AutodiffCallError(
            f"{fn.__name__} takes {len(params)} argument(s) but autodiff passes {len(activities)}",
            location, hint="pass one (wrapped) argument per parameter of the function",
        )
    return DeferredSite(site_id, fn, mode, tuple(activities), location), flat
