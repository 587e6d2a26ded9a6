"""`%%gpukernel` and `%gpuad_info`: parse options, call the library, display.

No compiler logic lives here. The cell runs in the user namespace (what it
defines stays defined, even when a later step fails); the kernels it
defined are compiled with `kernel.compile(*args, …)` and shown as a
`CompilationView`; `--launch` and `--gradcheck` call `kernel.launch` and
`gpuad.gradient_check.gradcheck_kernel` on the target the record names. Every
failure becomes one `CellError` that points at a line of the cell. A front end
without HTML (a terminal IPython) gets the text forms: the chosen stages and
the gradcheck table as text.
"""
from __future__ import annotations

import inspect
import time
from contextlib import contextmanager

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from gpuad.notebook.cells import Cell, CellError, cell_error, register_cell, run_cell
from gpuad.notebook.gradcheck_view import gradcheck_text
from gpuad.notebook.info import environment_info
from gpuad.notebook.names import running_cell_number
from gpuad.notebook.views import (
    STAGE_KEYS,
    TEXT_DEFAULT_STAGES,
    CompilationView,
    parse_stages,
)

# Classes whose instances count as kernels; None means `gpuad.kernel.Kernel`.
# Tests (and other front ends) replace it with their own kernel types.
KERNEL_TYPES: tuple[type, ...] | None = None


def kernel_types() -> tuple[type, ...]:
    if KERNEL_TYPES is not None:
        return KERNEL_TYPES
    try:
        from gpuad.kernel import Kernel
    except ImportError:  # the compiler is not installed: no cell can define a kernel
        return ()
    return (Kernel,)


@magics_class
class GpuadMagics(Magics):
    """The gpuad notebook magics."""

    @magic_arguments()
    @argument("--args", nargs="+", metavar="EXPR",
              help='argument values, a Python expression in the notebook namespace, e.g. "xs, ws, dxs"')
    @argument("--target", choices=("cuda", "cpu"), help="compile for this target (default: the kernel's)")
    @argument("--arch", help="GPU architecture, e.g. sm_90")
    @argument("--show", metavar="STAGES",
              help=f"comma-separated stages to display, from: {', '.join(STAGE_KEYS)}")
    @argument("--kernel", metavar="NAME", help="only this kernel, when the cell defines several")
    @argument("--launch", type=int, metavar="N",
              help="run the kernel over N threads: kernel.launch(N, *args)")
    @argument("--gradcheck", action="store_true",
              help="check the gradient the kernel writes against central differences and plot it")
    @argument("--primal", metavar="EXPR",
              help="the scalar function the kernel differentiates "
                   "(default: the one plain function of the cell)")
    @argument("--wrt", default="0", metavar="ARG", help="gradcheck: the input argument (name or position)")
    @argument("--out", default="-1", metavar="ARG",
              help="gradcheck: the gradient argument (name or position)")
    @argument("--fastmath", action="store_true", help="compile with fast math")
    @argument("--quiet", action="store_true", help="display nothing unless something fails")
    @argument("--verbose", action="store_true", help="report each step; show full tracebacks on errors")
    @cell_magic
    def gpukernel(self, line: str, cell: str):
        """Run the cell, compile the gpuad kernels it defines, and display each compilation."""
        options = self._parse(line)
        stages = self._stages(options.show)
        if (options.launch is not None or options.gradcheck) and options.args is None:
            raise UsageError("%%gpukernel: --launch and --gradcheck need --args EXPR "
                             "(the kernel's arguments)")
        # What runs is IPython's transform of the cell; registering that text keeps
        # inspect.getsource in step with the code objects. The transform drops
        # leading blank lines: the line offset puts them back for cell line numbers.
        code = self.shell.transform_cell(cell)
        source = register_cell(code, line_offset=1 + _leading_blank_lines(cell) - _leading_blank_lines(code),
                               execution_count=running_cell_number(self.shell))
        namespace = self.shell.user_ns
        before = dict(namespace)
        try:
            run_cell(source, namespace)
        except Exception as exc:
            raise cell_error(source, exc, doing="running the cell", verbose=options.verbose) from exc
        kernels = self._new_kernels(before, options.kernel)
        if not kernels:
            if not options.quiet:
                print("gpuad: this cell defines no gpuad kernel (decorate one with @gpuad.kernel)")
            return
        if options.args is None:
            if not options.quiet:
                print(f"gpuad: defined {', '.join(kernels)}; add --args EXPR to compile and display")
            return
        args = self._arguments(source, _unquote(" ".join(options.args)), options.verbose)
        for name, kernel in kernels.items():
            self._process(source, name, kernel, args, options, stages, before)

    @line_magic
    def gpuad_info(self, line: str = ""):
        """Versions, target in use, GPU and NVVM availability, cache location."""
        return environment_info()

    # ------------------------------------------------------------ steps

    def _parse(self, line: str):
        try:
            return parse_argstring(self.gpukernel, line)
        except UsageError as exc:
            raise UsageError(f"%%gpukernel: {exc} (see %%gpukernel? for the options)") from None

    @staticmethod
    def _stages(spec: str | None) -> tuple[str, ...]:
        try:
            return parse_stages(spec)
        except ValueError as exc:
            raise UsageError(f"%%gpukernel --show: {exc}") from None

    def _new_kernels(self, before: dict, only: str | None) -> dict:
        """Kernels the cell bound to a name (new, or rebound to a new object)."""
        types = kernel_types()
        found = {name: obj for name, obj in self.shell.user_ns.items()
                 if types and isinstance(obj, types) and before.get(name) is not obj}
        if only is not None:
            if only not in found:
                raise UsageError(f"%%gpukernel --kernel {only}: the cell defines no kernel {only!r} "
                                 f"(it defines: {', '.join(found) or 'none'})")
            found = {only: found[only]}
        return found

    def _arguments(self, source: Cell, expression: str, verbose: bool) -> tuple:
        try:
            value = eval(expression, self.shell.user_ns)  # noqa: S307 (the user's own expression)
        except Exception as exc:
            raise CellError(type(exc).__name__, str(exc), doing=f"evaluating --args {expression!r}",
                            hint='--args is a Python expression in the notebook namespace, '
                                 'e.g. "xs, ws, dxs"',
                            verbose=verbose) from exc
        return value if isinstance(value, tuple) else (value,)

    def _process(self, source: Cell, name: str, kernel, args: tuple, options, stages, before: dict) -> None:
        record = self._step(source, options, f"compiling {name}",
                            lambda: kernel.compile(*args, target=options.target, arch=options.arch,
                                                   # None keeps the kernel's own setting
                                                   fastmath=True if options.fastmath else None))
        if not options.quiet:
            self._display_record(record, stages, options)
        if options.launch is None and not options.gradcheck:
            return
        target = self._launch_target(name, kernel, record, options)
        with _launching_on(kernel, target):
            if options.launch is not None:
                self._step(source, options, f"launching {name} over {options.launch} threads "
                                            f"on the {target} target",
                           lambda: kernel.launch(options.launch, *args))
            if options.gradcheck:
                report = self._gradcheck(source, name, kernel, args, options, before)
                if not options.quiet or not report.passed:
                    self._display_report(report)

    def _text_only(self) -> bool:
        """A front end that shows no HTML (a terminal IPython shows text/plain only)."""
        return "text/html" not in self.shell.display_formatter.active_types

    def _display_record(self, record, stages, options) -> None:
        if not self._text_only():
            display(CompilationView(record, show=stages))
            return
        # A terminal cannot fold sections: without --show, the stages that fit on a screen.
        view = CompilationView(record, show=stages if options.show else TEXT_DEFAULT_STAGES, widget=False)
        display({"text/plain": view.to_text()}, raw=True)

    def _display_report(self, report) -> None:
        if self._text_only():
            display({"text/plain": gradcheck_text(report)}, raw=True)
        else:
            display(report)

    def _launch_target(self, name: str, kernel, record, options) -> str:
        """Where --launch and --gradcheck run: the target the record names, or a refusal.

        Running a kernel meant for cuda on the cpu target instead would pass off
        the cpu's numbers as the GPU's, so without a GPU a cuda launch is refused.
        """
        from gpuad.compiler.numba_adapter import gpu_available
        from gpuad.targets import default_target

        # The same choice kernel.compile made (a bad GPUAD_TARGET already failed there).
        target = options.target or getattr(kernel, "target", None) or default_target()
        if target == "cuda" and not gpu_available():
            raise UsageError(_no_gpu_message(name, kernel, record, options))
        return target

    def _step(self, source: Cell, options, doing: str, action):
        """Run one step; time it when verbose; turn its failure into a CellError."""
        started = time.perf_counter()
        try:
            result = action()
        except Exception as exc:
            raise cell_error(source, exc, doing=doing, verbose=options.verbose) from exc
        if options.verbose:
            print(f"gpuad: {doing}: done in {time.perf_counter() - started:.3f} s")
        return result

    def _gradcheck(self, source: Cell, name: str, kernel, args: tuple, options, before: dict):
        from gpuad.gradient_check import gradcheck_kernel

        primal = self._primal(source, options, before)
        n = options.launch if options.launch is not None else _length_of_first_array(args)
        return self._step(source, options, f"gradchecking {name}",
                          lambda: gradcheck_kernel(kernel, n, *args, primal=primal,
                                                   wrt=_position_or_name(options.wrt),
                                                   out=_position_or_name(options.out)))

    def _primal(self, source: Cell, options, before: dict):
        namespace = self.shell.user_ns
        if options.primal is not None:
            try:
                return eval(_unquote(options.primal), namespace)  # noqa: S307 (the user's own expression)
            except Exception as exc:
                raise cell_error(source, exc, doing=f"evaluating --primal {options.primal!r}",
                                 verbose=options.verbose) from exc
        candidates = [n for n, obj in namespace.items()
                      if inspect.isfunction(obj) and before.get(n) is not obj
                      and obj.__code__.co_filename == source.filename]
        if len(candidates) != 1:
            found = ", ".join(candidates) or "none"
            raise UsageError(f"%%gpukernel --gradcheck: pass --primal NAME, the scalar function the kernel "
                             f"differentiates (plain functions defined by this cell: {found})")
        return namespace[candidates[0]]


@contextmanager
def _launching_on(kernel, target: str):
    """Launch `kernel` on `target` (what --target chose) and restore its own setting after."""
    if not hasattr(kernel, "target"):  # a kernel type without targets
        yield
        return
    saved = kernel.target
    kernel.target = target
    try:
        yield
    finally:
        kernel.target = saved


def _no_gpu_message(name: str, kernel, record, options) -> str:
    flag = "--launch" if options.launch is not None else "--gradcheck"
    both = "--launch and --gradcheck"
    if options.target:
        why = "--target cuda"
    elif getattr(kernel, "target", None):
        why = f"the kernel's own target: @gpuad.kernel(target={kernel.target!r})"
    else:
        why = "GPUAD_TARGET=cuda"
    return (f"%%gpukernel {flag}: no GPU found, so {name} cannot run on the cuda target ({why}). "
            f"Compiling needs no GPU: its IR and PTX for {record.arch} are in the record. "
            f"To run it on this machine, use --target cpu (the cpu target runs the same kernel on the CPU); "
            f"to only compile it, drop {both if options.gradcheck and options.launch is not None else flag}.")


def _leading_blank_lines(text: str) -> int:
    lines = text.splitlines()
    return next((k for k, line in enumerate(lines) if line.strip()), len(lines))


def _unquote(text: str) -> str:
    # IPython splits magic arguments without posix rules, so quotes stay on the value.
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _position_or_name(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return _unquote(text)


def _length_of_first_array(args: tuple) -> int:
    for value in args:
        if hasattr(value, "shape") and len(value.shape) >= 1:
            return int(value.shape[0])
    raise UsageError("%%gpukernel --gradcheck: give --launch N "
                     "(no array argument tells the number of points)")


def load_ipython_extension(ipython) -> None:
    """Register the magics (`%load_ext gpuad` calls this)."""
    ipython.register_magics(GpuadMagics)
