"""Source ↔ IR ↔ PTX line mapping (gpuad/compiler/lineinfo.py), on a kernel compiled through
the real pipeline (cuda target, IR and PTX from numba-cuda and the NVVM wheel: no GPU needed),
and on small texts for the cases that kernel does not reach."""
from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

from gpuad.compiler import lineinfo
from gpuad.compiler.lineinfo import Mapped, derivative_lines, line_map, strip_ir, strip_ptx


@pytest.fixture(scope="module")
def compiled():
    from gpuad.examples import grad_f

    xs = np.linspace(0.0, 1.0, 8)
    return grad_f, grad_f.compile(xs, xs, xs, target="cuda", arch="sm_90")


def source_line(fn, text: str) -> int:
    """The file line of `fn`'s source line that contains `text`."""
    lines, first = inspect.getsourcelines(fn)
    return first + next(k for k, line in enumerate(lines) if text in line)


def lines_of(record, artefact: str, path: str, line: int) -> list[int]:
    """Lines (1-based) of an artefact whose locations include (path, line), read from the record's map."""
    m = record.line_map
    f = m["files"].index(path)
    return [k for first, last, *locs in m[artefact] for k in range(first, last + 1)
            if any(locs[i] == f and locs[i + 1] == line for i in range(0, len(locs), 2))]


def text_lines(text: str, numbers: list[int]) -> list[str]:
    lines = text.split("\n")
    return [lines[k - 1] for k in numbers]


def test_kernel_lines_map_to_the_ir_and_ptx_generated_from_them(compiled):
    kernel, record = compiled
    path = inspect.getsourcefile(kernel.pyfunc)
    m = record.line_map
    assert m["sources"]["kernel"] == [m["files"].index(path), inspect.getsourcelines(kernel.pyfunc)[1]]

    store = source_line(kernel.pyfunc, "dxs[i] = dx")
    assert any("store double" in line for line in text_lines(record.ir_after_link,
                                                             lines_of(record, "ir_after_link", path, store)))
    ptx_lines = text_lines(record.ptx, lines_of(record, "ptx", path, store))
    assert any("st.global.f64" in line for line in ptx_lines)

    site = source_line(kernel.pyfunc, "autodiff(")
    before = text_lines(record.ir_before_link, lines_of(record, "ir_before_link", path, site))
    assert any('@"gpuad.deferred_codegen"' in line for line in before)  # the marker, at the autodiff line
    # Not every line maps to everything: the store's lines do not hold the marker.
    assert not any("deferred_codegen" in line for line in text_lines(
        record.ir_before_link, lines_of(record, "ir_before_link", path, store)))


def test_derivative_lines_map_to_the_ptx_inlined_at_the_autodiff_call_and_back_to_the_users_line(compiled):
    kernel, record = compiled
    from gpuad.examples import f

    m = record.line_map
    job = record.jobs[0]
    derivative_file = m["files"][m["sources"][f"derivative {job.id}"][0]]
    assert derivative_file.endswith(">") and "gpuad-derivative" in derivative_file
    assert m["sources"][f"job {job.id}"][1] == inspect.getsourcelines(f)[1]

    # Every `# line N:` of the derivative names f's return line; its code lines map to it too.
    body = source_line(f, "return math.sin(x) * y")
    runs = m["derivative_lines"][str(job.id)]
    source = record.adjoint_sources[job.id].split("\n")
    labelled = {k for first, last, user in runs for k in range(first, last + 1) if user == body}
    assert {k for k, line in enumerate(source, 1) if line.strip().startswith(f"# line {body}:")} <= labelled
    assert any("d_x" in source[k - 1] for k in labelled)

    # PTX from the derivative names the derivative's line and, inlined, the kernel's autodiff line.
    f_index, site = m["files"].index(derivative_file), source_line(kernel.pyfunc, "autodiff(")
    kernel_index = m["files"].index(inspect.getsourcefile(kernel.pyfunc))
    inlined = [run for run in m["ptx"] if run[2] == f_index]
    assert inlined and all(run[4:6] == [kernel_index, site] for run in inlined)
    assert {run[3] for run in inlined} <= labelled | {k for k, line in enumerate(source, 1)}


def test_the_record_keeps_no_debug_info(compiled):
    _, record = compiled
    for text in (record.ir_before_link, record.ir_after_link):
        assert "!dbg" not in text and "!DI" not in text and "llvm.dbg" not in text
        assert "Debug Info Version" not in text
    assert not re.search(r"^\s*\.(loc|file)\s", record.ptx, re.M) and ".debug_" not in record.ptx
    assert "nvvm.annotations" in record.ir_after_link and '!"kernel"' in record.ir_after_link


def without_abi_tags(text: str) -> list[str]:
    """The text's non-blank lines, mangled names without numba's ABI tags (`B<length><tag>`: the
    dispatcher's version and a digest of the compile flags, which line info changes)."""
    def untagged(m: re.Match) -> str:
        name, k, out = m.group(0), 3, ["_ZN"]
        while k < len(name) and name[k] != "E":
            tag = name[k] == "B"
            digits = re.match(r"\d+", name[k + tag:])
            if digits is None:
                break
            end = k + tag + len(digits.group(0)) + int(digits.group(0))
            if not tag:
                out.append(name[k:end])
            k = end
        return "".join(out) + name[k:]

    return [re.sub(r"_ZN\w+", untagged, line) for line in text.split("\n") if line.strip()]


def test_line_info_changes_no_ptx_instruction(compiled):
    """The PTX that runs is the same with and without line info (so is its speed)."""
    from gpuad.compiler import driver
    from gpuad.targets.cuda import CudaTarget

    kernel, record = compiled
    xs = np.linspace(0.0, 1.0, 8)
    argtypes = kernel.argument_types((xs, xs, xs))
    plain = driver.compile(kernel.pyfunc, argtypes, CudaTarget("sm_90", lineinfo=False))
    assert not re.search(r"^\s*\.loc\s", plain.emitted, re.M)
    assert without_abi_tags(record.ptx) == without_abi_tags(plain.emitted)


# ------------------------------------------------------------------ small texts

IR = """\
define void @"k"(i32 %"x") !dbg !3
{
entry:
  call void @"llvm.dbg.declare"(metadata i32* %"a", metadata !9, metadata !10), !dbg !5
  %".2" = add i32 %"x", 1 , !dbg !5
  %".3" = mul i32 %".2", 2, !dbg !6
  br label %"next", !prof !8
next:
  ret void, !dbg !7
}

declare void @"llvm.dbg.declare"(metadata %".1", metadata %".2", metadata %".3")

!llvm.dbg.cu = !{ !2 }

!llvm.module.flags = !{ !11, !12 }

!nvvm.annotations = !{ !13 }

!1 = !DIFile(directory: "/src", filename: "mod.py")

!2 = distinct !DICompileUnit(emissionKind: DebugDirectivesOnly, file: !1)

!3 = distinct !DISubprogram(file: !1, line: 10, name: "k", unit: !2)

!4 = distinct !DILexicalBlock(file: !1, line: 11, scope: !3)

!5 = !DILocation(column: 1, line: 12, scope: !4)

!6 = !DILocation(column: 1, line: 30, scope: !3, inlinedAt: !5)

!7 = !DILocation(column: 1, line: 0, scope: !3)

!8 = !{ !"branch_weights", i32 1, i32 99 }

!9 = !DILocalVariable(name: "a", scope: !3)

!10 = !DIExpression()

!11 = !{ i32 2, !"Dwarf Version", i32 4 }

!12 = !{ i32 2, !"Debug Info Version", i32 3 }

!13 = !{ void (i32)* @"k", !"kernel", i32 1 }
"""


def test_strip_ir_reads_locations_through_scopes_and_inlining_and_keeps_other_metadata():
    mapped = strip_ir(IR)
    lines = mapped.text.split("\n")
    where = dict(zip(lines, mapped.locations))
    assert where['  %".2" = add i32 %"x", 1'] == (("/src/mod.py", 12),)  # through the lexical block
    assert where['  %".3" = mul i32 %".2", 2'] == (("/src/mod.py", 30), ("/src/mod.py", 12))  # inlined
    assert where["  ret void"] == ()  # line 0: no line
    assert where['define void @"k"(i32 %"x")'] == (("/src/mod.py", 10),)
    assert not any("dbg" in line or "!DI" in line or "Version" in line for line in lines)
    # What is not debug info stays, renumbered: the branch weights and the kernel annotation.
    assert '  br label %"next", !prof !0' in lines
    assert "!0 = !{ !\"branch_weights\", i32 1, i32 99 }" in lines
    assert "!nvvm.annotations = !{ !1 }" in lines and '!1 = !{ void (i32)* @"k", !"kernel", i32 1 }' in lines
    assert "\n\n\n" not in mapped.text


PTX = """\
.visible .entry k(
\t.param .u64 k_param_0
)
{
\t.reg .b32 \t%r<3>;
\t.local .align 8 .b8 \t__local_depot0[8];
\t.loc\t1 12 1
\tld.param.u64 \t%rd1, [k_param_0];
\t.loc\t2 30 1, function_name $L__info_string0, inlined_at 1 12 1
\tadd.s32 \t%r2, %r1, 1;
$L__BB0_2:
\tret;
$L__func_end0:

}
\t.file\t1 "/src/mod.py"
\t.file\t2 "/src/lib.py"
\t.section\t.debug_str
\t{
$L__info_string0:
.b8 95,90,0
\t}
"""


def test_strip_ptx_keeps_the_code_and_maps_each_instruction_to_the_loc_before_it():
    mapped = strip_ptx(PTX)
    lines = mapped.text.split("\n")
    where = dict(zip(lines, mapped.locations))
    assert where["\tld.param.u64 \t%rd1, [k_param_0];"] == (("/src/mod.py", 12),)
    assert where["\tadd.s32 \t%r2, %r1, 1;"] == (("/src/lib.py", 30), ("/src/mod.py", 12))
    assert where["\tret;"] == (("/src/lib.py", 30), ("/src/mod.py", 12))
    assert where["\t.reg .b32 \t%r<3>;"] == () and where["}"] == ()
    assert "\t.local .align 8 .b8 \t__local_depot0[8];" in lines  # `.local` is no `.loc`
    assert not re.search(r"\.loc\s|\.file|\.section|\$L__func_end|\.b8 95", mapped.text)


def test_derivative_lines_follow_the_line_labels_until_a_comment_or_the_end():
    source = ("def reverse_f(x, y, status):\n"
              "    # forward sweep\n"
              "    # line 9: return math.sin(x) * y\n"
              "    _t0 = math.sin(x)\n"
              "    # reverse sweep\n"
              "    d_x = 1.0\n"
              "    # line 9: return math.sin(x) * y\n"
              "    d_y = _t0\n"
              "    # line 10: z = 2\n"
              "    d_z = 0\n"
              "    return d_x\n"
              "\n\n"
              "def other(a):\n"
              "    return a\n")
    assert derivative_lines(source) == [(3, 4, 9), (7, 8, 9), (9, 11, 10)]


def test_line_map_packs_runs_of_lines_with_the_same_locations():
    a, b = ("/src/a.py", 3), ("/src/b.py", 7)
    mapped = Mapped("1\n2\n3\n4\n5", [(a,), (a,), (), (b, a), (b, a)])
    packed = line_map({"ptx": mapped}, {"kernel": ("/src/a.py", 1)}, {1: "# line 3: x\ny = 1\n"})
    assert packed["files"] == ["/src/a.py", "/src/b.py"]
    assert packed["ptx"] == [[1, 2, 0, 3], [4, 5, 1, 7, 0, 3]]
    assert packed["sources"] == {"kernel": [0, 1]}
    assert packed["derivative_lines"] == {"1": [[1, 2, 3]]}


def test_python_source_is_where_getsource_starts():
    from gpuad.examples import grad_f

    path, first = lineinfo.python_source(grad_f.pyfunc)
    assert path == inspect.getsourcefile(grad_f.pyfunc)
    assert first == inspect.getsourcelines(grad_f.pyfunc)[1]
    assert lineinfo.python_source(len) is None


def test_merged_modules_name_each_debug_module_flag_once():
    """NVVM's verifier refuses a module flag named twice; every numba module with line info has
    both debug flags (llvm_text.merge_into keeps the first of each)."""
    from gpuad.compiler.llvm_text import merge_texts

    module = ('!llvm.module.flags = !{ !0, !1 }\n!0 = !{ i32 2, !"Dwarf Version", i32 4 }\n'
              '!1 = !{ i32 2, !"Debug Info Version", i32 3 }\n')
    other = module.replace("!{ !0, !1 }", "!{ !0, !1, !2 }") + '!2 = !{ i32 1, !"Other", i32 1 }\n'
    merged = merge_texts([module, module, other])
    flags = merged.named_metadata["llvm.module.flags"]
    names = [re.search(r'!"([^"]+)"', merged.metadata[int(f[1:])]).group(1) for f in flags]
    assert names == ["Dwarf Version", "Debug Info Version", "Other"]


def test_locations_made_once_per_line_give_the_same_ir(monkeypatch):
    """numba_adapter.memoised_locations only saves time: the lowered IR is the same without it."""
    import contextlib

    from numba.core import types

    from gpuad.compiler import numba_adapter

    def body(x, y):
        a = x * y
        b = a + x
        return b * a - y

    def lowered() -> list[str]:
        ir = numba_adapter.lower_cuda(body, (types.float64, types.float64), kernel=False, lineinfo=True)
        return [line for line in without_abi_tags("\n".join(ir.modules)) if not line.startswith("; ModuleID")]

    memoised = lowered()
    monkeypatch.setattr(numba_adapter, "memoised_locations", contextlib.nullcontext)
    assert memoised == lowered()
    assert any("!DILocation" in line for line in memoised)


def test_nvvm_gets_locations_without_variable_records_and_emission_survives_a_refused_line_table(monkeypatch):
    """NVVM refused a module numba-cuda wrote in line-info mode ("Symbol name with unsupported
    characters", from a `llvm.dbg.value` record in a random program's derivative): every such
    kernel failed to compile. The records are dropped, and a line table NVVM still refuses is
    dropped too rather than the kernel."""
    from gpuad.errors import EmissionError
    from gpuad.targets import cuda as cuda_target

    linked = ('define void @"k"() !dbg !3\n{\nentry:\n'
              '  call void @"llvm.dbg.value"(metadata double 0.0, metadata !4, metadata !5), !dbg !6\n'
              '  ret void, !dbg !6\n}\n'
              'declare void @"llvm.dbg.value"(metadata %".1", metadata %".2", metadata %".3")\n')
    assert "llvm.dbg" not in lineinfo.locations_only(linked)
    assert "ret void, !dbg !6" in lineinfo.locations_only(linked)
    given = []

    def nvvm(text, **_):
        given.append(text)
        if "!dbg" in text or "llvm.dbg" in text:
            raise EmissionError("NVVM rejected the linked module: ERROR_COMPILATION (9)")
        return "// ptx"

    monkeypatch.setattr(cuda_target, "emit_ptx", nvvm)
    assert cuda_target.CudaTarget(arch="sm_90").emit(linked) == "// ptx"
    assert "llvm.dbg" not in given[0] and "!dbg" not in given[-1]
