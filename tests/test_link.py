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


def _reader(name: str, value: str) -> str:
    return f'''; ModuleID = "{name}"
@"_cudapy_cmem" = internal addrspace(4) constant [8 x i8] c"{value}", align 8
@"shared_const" = internal addrspace(4) constant [1 x i8] c"s", align 1

define i8 @"{name}"()
{{
entry:
  %".1" = load i8, i8 addrspace(4)* getelementptr ([8 x i8],
    [8 x i8] addrspace(4)* @"_cudapy_cmem", i32 0, i32 0)
  %".2" = load i8, i8 addrspace(4)* getelementptr ([1 x i8],
    [1 x i8] addrspace(4)* @shared_const, i32 0, i32 0)
  ret i8 %".1"
}}
'''


def test_modules_private_constants_of_one_name_stay_apart():
    """numba-cuda names every constant array `_cudapy_cmem`: merged as one, the second module's
    function read the first module's numbers (a kernel's global array in a derivative reading
    another one)."""
    from gpuad.compiler.llvm_text import merge_texts

    module = merge_texts([_reader("first", "AAAAAAAA"), _reader("second", "BBBBBBBB")])
    constants = {e.name: e.text for e in module.entities.values() if e.kind == "global"}
    assert 'c"AAAAAAAA"' in constants["_cudapy_cmem"]
    renamed = [name for name, text in constants.items() if 'c"BBBBBBBB"' in text]
    assert len(renamed) == 1 and renamed[0] != "_cudapy_cmem"
    assert f'@"{renamed[0]}"' in module.entities["second"].text
    assert '@"_cudapy_cmem"' not in module.entities["second"].text
    assert '@"_cudapy_cmem"' in module.entities["first"].text
    # the same constant in both modules is kept once, and both read it
    assert sum('c"s"' in text for text in constants.values()) == 1
    assert "@shared_const" in module.entities["second"].text


GLOBALS_KERNEL = '''
import numpy as np
from numba import cuda
import gpuad
from gpuad import Active, Reverse, autodiff
from {first} import scaled as first
from {second} import scaled as second

W = np.array([100.0, 200.0, 300.0])  # a third array, read by the kernel itself


@gpuad.kernel
def kernel(xs, g1, g2, v):
    i = cuda.grid(1)
    if i < xs.size:
        (a,), = autodiff(Reverse, first, Active(xs[i]))
        (b,), = autodiff(Reverse, second, Active(xs[i]))
        g1[i] = a
        g2[i] = b
        v[i] = W[1] + first(xs[i]) + second(xs[i])
'''


def _globals_kernel(tmp_path, monkeypatch):
    """A kernel reading a global numpy array that differentiates two functions of two modules,
    each reading its own global array of the same name."""
    import importlib

    for name, values in (("gl_first", "[1.0, 2.0, 3.0]"), ("gl_second", "[10.0, 20.0, 30.0]")):
        (tmp_path / f"{name}.py").write_text(
            f"import numpy as np\nGW = np.array({values})\n\n\ndef scaled(x):\n    return x * GW[1]\n")
    (tmp_path / "gl_kernel.py").write_text(GLOBALS_KERNEL.format(first="gl_first", second="gl_second"))
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module("gl_kernel").kernel


def _run_globals_kernel(kernel, target):
    import numpy as np

    import gpuad

    xs = np.array([1.0, 2.0])
    outs = [np.zeros(2) for _ in range(3)]
    gpuad.kernel(kernel.pyfunc, target=target).launch(2, xs, *outs)
    return outs


def _check_globals_results(g1, g2, v):
    import numpy as np

    np.testing.assert_array_equal(g1, [2.0, 2.0])
    np.testing.assert_array_equal(g2, [20.0, 20.0])
    np.testing.assert_array_equal(v, [222.0, 244.0])


def test_global_arrays_of_one_name_in_the_kernel_and_its_derivatives_keep_their_values(tmp_path, monkeypatch):
    import numpy as np

    kernel = _globals_kernel(tmp_path, monkeypatch)
    record = kernel.compile(np.ones(2), np.ones(2), np.ones(2), np.ones(2), target="cuda", arch="sm_90")
    constants = [line for line in record.ir_after_link.splitlines()
                 if line.startswith('@"_cudapy_cmem')]
    # the three arrays (GW of each module, the kernel's W) all kept, each under names of its own
    # (a module that reads one of them has its copy); merged as one name, one array was left
    assert len({line.split(" = ", 1)[1] for line in constants}) == 3, constants


@pytest.mark.gpu
def test_global_arrays_of_one_name_on_the_gpu(tmp_path, monkeypatch):
    _check_globals_results(*_run_globals_kernel(_globals_kernel(tmp_path, monkeypatch), "cuda"))


def test_global_arrays_of_one_name_on_the_cpu_target(tmp_path, monkeypatch):
    _check_globals_results(*_run_globals_kernel(_globals_kernel(tmp_path, monkeypatch), "cpu"))
