"""Stage 4: the deferred-codegen linker on small modules shaped like numba-cuda's."""
import pytest

from gpuad.compiler.link import JobModule, find_markers, link_deferred
from gpuad.compiler.llvm_text import IRModule, defined_functions, function_pointer_type
from gpuad.errors import LinkError

KERNEL = '''; ModuleID = "k"
target triple = "nvptx64-nvidia-cuda"

define void @"kernel"(double* %"out")
{
entry:
  %".1" = call i8* @"gpuad.deferred_codegen"(i64 1)
  %".2" = bitcast i8* %".1" to i32 (double*, double)*
  %".3" = call i32 %".2"(double* %"out", double 0x3FF0000000000000), !dbg !1
  %".4" = call i8* @"gpuad.deferred_codegen"(i64 1)
  ret void
}

declare i8* @"gpuad.deferred_codegen"(i64 %".1")

declare double @"shared"(double %".1")

!nvvmir.version = !{ !0 }
!0 = !{ i32 2, i32 0, i32 3, i32 2 }
!1 = !{ i32 7 }
'''

JOB1 = '''; ModuleID = "job1"
target triple = "nvptx64-nvidia-cuda"

define linkonce_odr i32 @"adj_f"({double, i8*}* noalias %".ret", double %"x")
{
entry:
  %".5" = call i8* @"gpuad.deferred_codegen"(i64 2), !range !0
  %".6" = call double @"shared"(double %"x")
  ret i32 0
}

define linkonce_odr double @"shared"(double %"x")
{
entry:
  ret double %"x"
}

declare i8* @"gpuad.deferred_codegen"(i64 %".1")

!nvvmir.version = !{ !0 }
!0 = !{ i32 2, i32 0, i32 3, i32 2 }
'''

JOB2 = '''; ModuleID = "job2"
define linkonce_odr i32 @"adj_g"(double* %".ret", double %"x")
{
entry:
  ret i32 0
}

define linkonce_odr double @"shared"(double %"x")
{
entry:
  ret double 0.0
}
'''


def jobs(compiled):
    modules = {1: JobModule(JOB1, "adj_f"), 2: JobModule(JOB2, "adj_g")}

    def job_module(job_id):
        compiled.append(job_id)
        return modules[job_id]

    return job_module


def test_markers_are_found_in_order():
    assert find_markers(KERNEL) == [1, 1]


def test_link_replaces_every_marker_and_links_nested_jobs_once():
    compiled = []
    result = link_deferred(KERNEL, jobs(compiled))
    text = result.ir_text
    assert "gpuad.deferred_codegen" not in text
    assert compiled == [1, 2]  # job 1 once despite two markers; job 2 found inside job 1
    assert result.linked_jobs == [1, 2]
    assert set(defined_functions(text)) == {"kernel", "adj_f", "shared", "adj_g"}
    assert text.count('%".1" = bitcast i32 ({double, i8*}*, double)* @"adj_f" to i8*') == 1
    assert '%".5" = bitcast i32 (double*, double)* @"adj_g" to i8*' in text
    # Only the replaced markers refer to job functions: NVVM may drop them once inlined.
    assert 'define internal i32 @"adj_f"' in text and 'define internal i32 @"adj_g"' in text
    assert 'define linkonce_odr double @"shared"' in text


def test_first_definition_wins_and_declarations_give_way():
    text = link_deferred(KERNEL, jobs([])).ir_text
    module = IRModule.parse(text)
    assert module.entities["shared"].kind == "define"
    assert "ret double %\"x\"" in module.entities["shared"].text  # job 1's, not job 2's


def test_job_metadata_is_renumbered_past_the_kernels():
    module = IRModule.parse(link_deferred(KERNEL, jobs([])).ir_text)
    assert module.named_metadata["nvvmir.version"] == ["!0"]
    assert ', !range !2' in module.entities["adj_f"].text  # job's !0 moved past kernel's !0, !1
    assert module.metadata[2] == "!2 = !{ i32 2, i32 0, i32 3, i32 2 }"


def test_missing_job_function_is_a_link_error():
    with pytest.raises(LinkError, match="does not define adj_missing"):
        link_deferred(KERNEL, lambda job_id: JobModule(JOB2, "adj_missing"))


def test_function_pointer_type_of_a_define():
    define = 'define linkonce_odr i32 @"f"({double, [2 x i64]}* noalias %".ret", double %"x", i8* %"p")'
    assert function_pointer_type(define) == "i32 ({double, [2 x i64]}*, double, i8*)*"
