"""Stage 4: gpuad's deferred-codegen linker (GPUCompiler's scanner, in Python).

Find every `gpuad.deferred_codegen(i64 ID)` marker in the module, take the
job's own module (compiled separately), link it in, and replace the marker by
the address of the job's function. A job's module may hold markers of its
own (a derivative that calls autodiff), so the scan repeats until none is
left. Each job is linked once, however many markers name it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from gpuad.compiler.llvm_text import MARKER_SYMBOL, IRModule, function_pointer_type, merge_into
from gpuad.errors import LinkError

MARKER_CALL = re.compile(
    r'^(?P<lhs>\s*%(?:"[^"]+"|[-\w.$]+) = )call i8\* @"' + re.escape(MARKER_SYMBOL)
    + r'"\(i64 (?P<id>\d+)\)(?P<attachments>(?:, ![-\w.]+ !\d+)*)\s*$',
    re.M,
)


@dataclass(frozen=True)
class JobModule:
    """What the linker needs of a job: its module text and its function's symbol."""

    ir_text: str
    symbol: str


@dataclass
class LinkResult:
    ir_text: str
    linked_jobs: list[int] = field(default_factory=list)


def find_markers(ir_text: str) -> list[int]:
    """Job ids named by deferred-codegen markers, in order of appearance."""
    return [int(m.group("id")) for m in MARKER_CALL.finditer(ir_text)]


def link_deferred(ir_text: str, job_module: Callable[[int], JobModule]) -> LinkResult:
    """Link every deferred job into the module; no marker survives."""
    module = IRModule.parse(ir_text)
    result = LinkResult("")
    addresses: dict[int, str] = {}
    symbols: list[str] = []
    while pending := _pending_markers(module):
        for job_id in pending:
            if job_id in addresses:
                continue
            job = job_module(job_id)
            merge_into(module, IRModule.parse(job.ir_text))
            if not module.defines(job.symbol):
                raise LinkError(f"deferred job {job_id} does not define {job.symbol}")
            fn_type = function_pointer_type(module.entities[job.symbol].text)
            addresses[job_id] = f'bitcast {fn_type} @"{job.symbol}" to i8*'
            symbols.append(job.symbol)
            result.linked_jobs.append(job_id)
        _replace_markers(module, addresses)
    module.entities.pop(MARKER_SYMBOL, None)
    for symbol in symbols:
        _internalize(module, symbol)
    result.ir_text = module.text()
    return result


def _internalize(module: IRModule, symbol: str) -> None:
    """Only the replaced markers refer to a job's function: once NVVM has
    inlined it, an internal definition can be dropped from the PTX."""
    entity = module.entities[symbol]
    header, _, body = entity.text.partition("\n")
    header = re.sub(r"^define (?:linkonce_odr |weak_odr |external )?", "define internal ", header)
    entity.text = header + "\n" + body


def _pending_markers(module: IRModule) -> list[int]:
    ids: list[int] = []
    for entity in module.entities.values():
        if entity.kind == "define":
            ids += [i for i in find_markers(entity.text) if i not in ids]
    return ids


def _replace_markers(module: IRModule, addresses: dict[int, str]) -> None:
    def address(match: re.Match) -> str:
        job_id = int(match.group("id"))
        if job_id not in addresses:  # a nested job's marker: linked in the next round
            return match.group(0)
        return match.group("lhs") + addresses[job_id] + match.group("attachments")

    for entity in module.entities.values():
        if entity.kind == "define" and MARKER_SYMBOL in entity.text:
            entity.text = MARKER_CALL.sub(address, entity.text)
