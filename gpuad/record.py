"""The compilation record: every artefact of the pipeline, collected.

This is what `kernel.compile(...)` returns and what the notebook layer
displays. It holds data only; each field is produced by exactly one stage.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

# The JSON layout of `CompilationRecord.to_dict`; the version grows when a key changes meaning.
RECORD_FORMAT = "gpuad.compilation"
RECORD_VERSION = 1


@dataclass(frozen=True)
class OverlayRecord:
    """One call the interpreter replaced through a method table."""

    call_site: str  # "file:line"
    original: str  # qualified name of what the call referred to
    replacement: str  # qualified name of what was called instead
    function: str  # the function in which the call was found


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 deferred job`, `2 deferred jobs`."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


@dataclass(frozen=True)
class JobRecord:
    """One deferred-codegen job: a derivative compiled as its own unit."""

    id: int
    function: str
    mode: str
    activities: tuple[str, ...]
    argument_types: tuple[str, ...]
    symbol: str  # the LLVM symbol the marker is replaced by
    call_sites: tuple[str, ...] = ()
    parent: int | None = None  # the job whose module contains this job's marker
    # Arrays whose shadow this job updates without atomics (one thread per element).
    own_shadows: tuple[str, ...] = ()
    # The Python source of the function this job differentiates ("" when inspect cannot find it).
    source: str = ""


@dataclass
class CompilationRecord:
    """All artefacts of compiling one kernel for one signature."""

    kernel_name: str
    target: str
    arch: str
    signature: tuple[str, ...]
    source: str
    overlays: list[OverlayRecord] = field(default_factory=list)
    jobs: list[JobRecord] = field(default_factory=list)
    adjoint_sources: dict[int, str] = field(default_factory=dict)
    ir_before_link: str = ""
    ir_after_link: str = ""
    ptx: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    # Source ↔ IR ↔ PTX: which lines of the IR and PTX come from which source lines, as the
    # compiler's debug locations say (`gpuad.compiler.lineinfo.line_map` gives the layout); {}
    # when the compilation kept none.
    line_map: dict = field(default_factory=dict)

    @functools.cached_property
    def local_memory_bytes(self) -> int:
        """Local memory one thread needs, as the PTX declares it (`gpuad.compiler.local_memory`)."""
        from gpuad.compiler.local_memory import local_frame_bytes

        return local_frame_bytes(self.ptx)

    @property
    def linked_functions(self) -> list[str]:
        """Symbols defined after linking that were not defined before."""
        from gpuad.compiler.llvm_text import defined_functions

        before = set(defined_functions(self.ir_before_link))
        return [f for f in defined_functions(self.ir_after_link) if f not in before]

    def to_dict(self) -> dict:
        """The record as JSON-ready data: every field, plus what is derived from them.

        `format` and `version` name the layout, for readers of saved notebooks
        (the JupyterLab viewer renders `application/vnd.gpuad.compilation+json`).
        """
        data = {"format": RECORD_FORMAT, "version": RECORD_VERSION, **asdict(self)}
        data["adjoint_sources"] = {str(k): v for k, v in self.adjoint_sources.items()}
        data["linked_functions"] = self.linked_functions
        data["local_memory_bytes"] = self.local_memory_bytes
        return data

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> str:
        """The one-line summary: what nbval compares, so only facts that change with the kernel.

        The PTX size is left out: it changes with the numba and NVVM versions, not
        with the user's code (the HTML header and the text form give its line
        count). A record without PTX says so.
        """
        text = (f"gpuad kernel {self.kernel_name} [{self.target}, {self.arch}]: "
                f"{plural(len(self.overlays), 'overlay')}, {plural(len(self.jobs), 'deferred job')}, "
                f"{plural(len(self.linked_functions), 'function')} linked")
        return text if self.ptx else text + ", no PTX"

    def __repr__(self) -> str:
        return f"<CompilationRecord {self.summary()}>"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict | None:
        """Jupyter shows `kernel.compile(...)` as the compilation view, through the display that a
        higher layer installed (`def_display`; `gpuad.notebook.display` when gpuad is imported).

        The record is data: it does not import its display. The text form stays this repr;
        without a display (or without the notebook extra) it is all there is.
        """
        bundle = _display(self, include, exclude) if _display is not None else None
        return None if bundle is None else {**bundle, "text/plain": repr(self)}


# The rich display of a record: (record, include, exclude) -> MIME bundle or None. Installed from
# above, as gpuad.host installs api.autodiff's host implementation (api.def_host_impl).
_display: Callable[[CompilationRecord, object, object], dict | None] | None = None


def def_display(display: Callable[[CompilationRecord, object, object], dict | None]) -> Callable:
    """Install `display(record, include, exclude)` as every record's rich display (a decorator)."""
    global _display
    _display = display
    return display
