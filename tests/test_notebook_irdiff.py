"""The module outline and the link-diff model (gpuad/notebook/outline.py, irdiff.py)."""
from __future__ import annotations

from compiled_sample import adjoint_symbol, kernel_symbol, sample_record

from gpuad.notebook.irdiff import LINK_REF, LINKED, MARKER, Collapsed, DiffLine, Row, diff_ir
from gpuad.notebook.outline import llvm_outline, ptx_outline

# gpuad.examples.grad_f's modules, as the real pipeline makes them (tests/compiled_sample.py).
_RECORD = sample_record()
IR_BEFORE_LINK, IR_AFTER_LINK, PTX = _RECORD.ir_before_link, _RECORD.ir_after_link, _RECORD.ptx
ADJOINT_SYMBOL, KERNEL_SYMBOL = adjoint_symbol(), kernel_symbol()
THREAD_INDEX = next(n for n in llvm_outline(IR_BEFORE_LINK).names if "cuda_thread_index" in n)
# The call of the marker, whose value the linker replaces by the derivative's address.
MARKER_CALL = next(line for line in IR_BEFORE_LINK.splitlines()
                   if '= call i8* @"gpuad.deferred_codegen"(i64 1)' in line)
MARKER_VALUE = MARKER_CALL.split("=")[0]  # '  %".159" '
LINKED_DEFINE = f'define internal i32 @"{ADJOINT_SYMBOL}"('


def test_llvm_outline_finds_quoted_definitions_and_skips_declarations():
    before, after = llvm_outline(IR_BEFORE_LINK), llvm_outline(IR_AFTER_LINK)
    assert before.names == [KERNEL_SYMBOL, THREAD_INDEX]  # not the declared marker, not libdevice's
    assert after.names == [KERNEL_SYMBOL, THREAD_INDEX, ADJOINT_SYMBOL]
    adjoint = after.function(ADJOINT_SYMBOL)
    lines = IR_AFTER_LINK.splitlines()
    assert lines[adjoint.start].startswith(LINKED_DEFINE)
    assert lines[adjoint.end - 1] == "}"


def test_outline_segments_cover_the_module_in_order():
    shape = llvm_outline(IR_AFTER_LINK)
    runs = shape.segments()
    assert runs[0][1] == 0 and runs[-1][2] == shape.line_count
    assert all(a[2] == b[1] for a, b in zip(runs, runs[1:], strict=False))


def test_ptx_outline_finds_entry_and_func_but_not_prototypes():
    text = ".extern .func  (.param .b32 func_retval0) vprintf\n(\n\t.param .b64 vprintf_param_0\n)\n;\n" + PTX
    shape = ptx_outline(text)
    # NVVM inlined the derivative into the kernel; libdevice's sin/cos keep one helper.
    helper = "__internal_trig_reduction_slowpathd"
    assert shape.names == [KERNEL_SYMBOL, helper]
    kernel = text.splitlines()[shape.function(KERNEL_SYMBOL).start:shape.function(KERNEL_SYMBOL).end]
    assert kernel[0].startswith(".visible .entry") and kernel[-1] == "}"
    assert any(helper in line for line in kernel[1:])  # the kernel calls it


def test_diff_finds_the_linked_function_and_the_replaced_marker():
    diff = diff_ir(IR_BEFORE_LINK, IR_AFTER_LINK)
    assert diff.linked_functions == (ADJOINT_SYMBOL,)
    marker_index = diff.before.index(MARKER_CALL)
    assert diff.before_marks[marker_index] == MARKER
    replaced = next(i for i, line in enumerate(diff.after) if line.startswith(MARKER_VALUE + "= bitcast"))
    assert diff.after_marks[replaced] == LINK_REF
    define = next(i for i, line in enumerate(diff.after) if line.startswith(LINKED_DEFINE))
    assert diff.after_marks[define] == LINKED
    # The marker call and the marker's declaration are the only deletions.
    assert diff.deleted == 2


def test_unified_view_pairs_marker_deletion_with_its_replacement():
    lines = [x for x in diff_ir(IR_BEFORE_LINK, IR_AFTER_LINK).unified(context=2) if isinstance(x, DiffLine)]
    k = next(i for i, line in enumerate(lines) if line.text == MARKER_CALL)
    assert (lines[k].tag, lines[k].mark) == ("delete", MARKER)
    assert lines[k + 1].tag == "insert" and ADJOINT_SYMBOL in lines[k + 1].text
    assert lines[k].number == IR_BEFORE_LINK.splitlines().index(MARKER_CALL) + 1
    assert IR_AFTER_LINK.splitlines()[lines[k + 1].number - 1] == lines[k + 1].text


def test_unchanged_runs_are_collapsed_but_context_is_kept():
    items = diff_ir(IR_BEFORE_LINK, IR_AFTER_LINK).unified(context=2)
    folds = [x for x in items if isinstance(x, Collapsed)]
    assert folds and folds[0].before_start == 1
    first_change = next(i for i, x in enumerate(items) if isinstance(x, DiffLine) and x.tag != "equal")
    assert [x.tag for x in items[first_change - 2:first_change]] == ["equal", "equal"]
    shown = sum(1 for x in items if isinstance(x, DiffLine))
    assert shown + sum(f.count for f in folds) == len(IR_BEFORE_LINK.splitlines()) + diff_ir(
        IR_BEFORE_LINK, IR_AFTER_LINK).inserted


def test_side_by_side_keeps_line_numbers_of_both_sides():
    rows = [r for r in diff_ir(IR_BEFORE_LINK, IR_AFTER_LINK).side_by_side(context=1) if isinstance(r, Row)]
    marker_row = next(r for r in rows if r.before and r.before.text == MARKER_CALL)
    assert marker_row.before.mark == MARKER
    assert marker_row.after is not None and marker_row.after.mark == LINK_REF
    added = [r for r in rows if r.before is None and r.after.mark == LINKED]
    assert added and all(r.after.tag == "insert" for r in added)


def test_a_marker_left_after_linking_is_flagged():
    diff = diff_ir(IR_BEFORE_LINK, IR_BEFORE_LINK)
    assert diff.linked_functions == () and diff.inserted == diff.deleted == 0
    assert MARKER in diff.after_marks.values()


def test_context_zero_collapses_everything_but_changes_and_marks():
    items = diff_ir(IR_BEFORE_LINK, IR_AFTER_LINK).unified(context=0)
    assert all(x.tag != "equal" or x.mark for x in items if isinstance(x, DiffLine))


def test_unified_lines_carry_old_and_new_numbers():
    before = "a\nb\nmarker\nc\n"
    after = "x\ny\na\nb\nreplacement\nc\n"
    lines = [x for x in diff_ir(before, after).unified(context=9) if isinstance(x, DiffLine)]
    numbers = {ln.text: (ln.tag, ln.old, ln.new) for ln in lines}
    assert numbers == {
        "x": ("insert", None, 1), "y": ("insert", None, 2),
        "a": ("equal", 1, 3), "b": ("equal", 2, 4),
        "marker": ("delete", 3, None), "replacement": ("insert", None, 5),
        "c": ("equal", 4, 6),
    }
    # Folded runs report where they start on both sides.
    long_before = "".join(f"l{k}\n" for k in range(20))
    items = diff_ir(long_before, "new\n" + long_before).unified(context=1)
    folds = [x for x in items if isinstance(x, Collapsed)]
    assert [(f.before_start, f.after_start, f.count) for f in folds] == [(2, 3, 19)]


def test_side_by_side_equal_lines_know_both_numbers():
    rows = [r for r in diff_ir("a\nb\n", "x\na\nb\n").side_by_side(context=5) if isinstance(r, Row)]
    equal = [r for r in rows if r.before is not None and r.after is not None]
    numbers = [(r.before.old, r.before.new, r.after.old, r.after.new) for r in equal]
    assert numbers == [(1, 2, 1, 2), (2, 3, 2, 3)]


def test_linked_spans_locate_the_appended_functions():
    diff = diff_ir(IR_BEFORE_LINK, IR_AFTER_LINK)
    (span,) = diff.linked_spans
    assert span.name == ADJOINT_SYMBOL and diff.linked_span(ADJOINT_SYMBOL) is span
    assert diff.after[span.start].startswith(LINKED_DEFINE) and diff.after[span.end - 1] == "}"
    assert diff.linked_span(KERNEL_SYMBOL) is None
