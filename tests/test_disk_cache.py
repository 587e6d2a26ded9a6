"""The on-disk kernel cache (issue 11): a new process gets a compiled kernel without compiling;
everything that changes the output changes the key; what has no stable name is not cached;
damaged entries are rebuilt; concurrent processes are safe; the directory stays under its limit."""
import os
import subprocess
import sys
import textwrap

import corpus
import numpy as np
import pytest

import gpuad
from gpuad.compiler import disk_cache
from gpuad.errors import GpuadWarning

_serial = iter(range(10**6))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUAD_CACHE", "1")
    monkeypatch.setenv("GPUAD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def kernel_source(scale: str = "2.0", helper_body: str = "return math.sin(x) * x * SCALE") -> str:
    return textwrap.dedent(f"""\
        import math
        import gpuad
        from gpuad import Active, Reverse, autodiff

        SCALE = {scale}

        def helper(x):
            {helper_body}

        def grad(xs, dxs):
            i = gpuad.thread_index()
            if i < xs.shape[0]:
                (d,), = autodiff(Reverse, helper, Active(xs[i]))
                dxs[i] = d
        """)


def define(source: str, filename: str | None = None, **extra):
    """The source's functions (a new file name each time unless given: it is part of the key)."""
    return corpus.exec_source(source, filename or f"<cached kernel {next(_serial)}>", extra)


def key_of(scope, *parts):
    from gpuad.ad.cache_key import derivative_key

    return disk_cache.kernel_key(derivative_key(scope["grad"]), *parts)


ARGS = (np.ones(4), np.zeros(4))


def test_everything_that_changes_the_output_changes_the_key(cache):
    def key(source=None, *parts, filename="<kernel.py>"):
        return key_of(define(source or kernel_source(), filename), *(parts or ("types", "sm_90")))

    base = key()
    assert base is not None and base == key()  # the same code and values in another exec
    assert base != key(kernel_source(scale="2.5"))  # a global's value
    assert base != key(kernel_source(scale="2"))  # its type
    assert base != key(kernel_source(helper_body="return math.cos(x) * x * SCALE"))  # a callee's code
    assert base != key(None, "types", "sm_80")  # options, types, capacity
    assert base != key("\n" + kernel_source())  # line numbers: errors name them
    assert base != key(filename="<other.py>")  # and files


def test_global_arrays_are_keyed_by_content(cache, monkeypatch):
    from gpuad.ad import cache_key

    reads_table = kernel_source(helper_body="return x * TABLE[0] * PAIR[0][1]").replace("SCALE = 2.0", "")

    def key(table, pair=None):
        pair = np.ones(2) if pair is None else pair
        return key_of(define(reads_table, "<table.py>", TABLE=table, PAIR=(pair,)), "t")

    base = key(np.ones(3))
    assert base is not None and base == key(np.ones(3))  # numba freezes the bytes: equal bytes, one kernel
    assert base != key(np.array([1.0, 1.0, 2.0]))  # an element (changed in place or not)
    assert base != key(np.ones(3, dtype=np.float32)) != key(np.ones((3, 1)))  # its type, its shape
    assert base != key(np.ones(3), np.array([1.0, 3.0]))  # an array within a tuple
    monkeypatch.setattr(cache_key, "CONTENT_LIMIT", 16)
    with pytest.warns(GpuadWarning, match="frozen into the compiled kernel"):
        assert key(np.ones(3)) is None  # too large to key by content: by identity, not on disk


def test_what_has_no_stable_name_is_not_kept_on_disk(cache, monkeypatch):
    read_by_identity = kernel_source(helper_body="return x * TABLE[0]").replace("SCALE = 2.0", "")
    table = type("Table", (), {"__getitem__": lambda self, k: 2.0})()
    assert key_of(define(read_by_identity, TABLE=table), "t") is None  # an object of the user's class
    scope = define(kernel_source())
    assert key_of(scope, "t") is not None
    monkeypatch.setenv("GPUAD_CACHE", "0")
    assert key_of(scope, "t") is None


def test_user_rules_are_keyed_by_code_or_keep_kernels_off_the_disk(cache, monkeypatch):
    import math

    from gpuad.ad import rules

    scope = define(kernel_source(), "<rules.py>")
    plain = key_of(scope, "t")
    monkeypatch.setitem(rules._USER_RULES, scope["helper"], rules.UserRule(scope["helper"]))
    monkeypatch.setattr(rules._USER_RULES[scope["helper"]], "reverse_fn", scope["grad"])
    assert key_of(scope, "t") not in (None, plain)  # a rule of the user's function: in the key
    monkeypatch.setitem(rules._USER_RULES, math.sin, rules.UserRule(math.sin))
    assert key_of(scope, "t") is None  # a rule for a builtin: only this process knows it


def test_a_user_overlay_keeps_kernels_off_the_disk_while_it_is_in_place(cache):
    from gpuad.method_table import CUDA

    def original():
        pass

    scope = define(kernel_source())
    before = key_of(scope, "t")
    CUDA.add(original, lambda: None)
    try:
        assert key_of(scope, "t") is None
    finally:
        CUDA.remove(original)
    assert key_of(scope, "t") == before is not None


COMPILE = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import cached_kernel, gpuad
    kernel = gpuad.kernel(cached_kernel.grad, target="cuda")
    start = time.perf_counter()
    record = kernel.compile(np.ones(4), np.zeros(4))
    print(sorted(record.timings), len(record.ptx), hash(record.ptx), f"{time.perf_counter() - start:.3f}")
""")


def compile_in_processes(tmp_path, cache, n: int) -> list[str]:
    (tmp_path / "cached_kernel.py").write_text(kernel_source())
    env = {**os.environ, "GPUAD_CACHE": "1", "GPUAD_CACHE_DIR": str(cache), "PYTHONHASHSEED": "0"}
    procs = [subprocess.Popen([sys.executable, "-c", COMPILE, str(tmp_path)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    return [out.strip() for out, _ in outs]


def test_a_new_process_gets_the_kernel_from_disk(tmp_path, cache):
    (first,) = compile_in_processes(tmp_path, cache, 1)
    (again,) = compile_in_processes(tmp_path, cache, 1)
    assert "'emit'" in first and again.startswith("['disk cache']")
    assert first.split()[-3:-1] == again.split()[-3:-1]  # the same PTX
    assert len(disk_cache.entries()) == 1


def test_processes_compiling_one_kernel_at_once_share_one_whole_entry(tmp_path, cache):
    outs = compile_in_processes(tmp_path, cache, 4)
    assert len({" ".join(o.split()[-3:-1]) for o in outs}) == 1  # one PTX
    assert len(disk_cache.entries()) == 1 and not list(cache.glob("*.tmp"))
    assert disk_cache.load(disk_cache.entries()[0][0].stem) is not None


def test_a_damaged_entry_is_deleted_and_compiled_again(cache):
    scope = define(kernel_source())
    gpuad.kernel(scope["grad"], target="cuda").compile(*ARGS)
    (path, _, _), = disk_cache.entries()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    record = gpuad.kernel(scope["grad"], target="cuda").compile(*ARGS)  # a new Kernel: no memory cache
    assert "emit" in record.timings  # compiled, not loaded
    (rebuilt, _, _), = disk_cache.entries()
    assert disk_cache.load(rebuilt.stem) is not None


def test_the_directory_keeps_under_its_limit_dropping_the_least_recently_used(cache, monkeypatch):
    for k in range(4):
        disk_cache.store(f"{k:064x}", {"payload": bytes(300_000)})
        os.utime(cache / f"{k:064x}.gpuad", (1000 + k, 1000 + k))
    disk_cache.load(f"{0:064x}")  # used now: the most recent
    monkeypatch.setenv("GPUAD_CACHE_MAX_MB", str(0.7 * 1.05))
    disk_cache.store(f"{9:064x}", {"payload": bytes(10)})
    kept = sorted(p.stem for p, _, _ in disk_cache.entries())
    assert kept == [f"{0:064x}", f"{3:064x}", f"{9:064x}"]


def test_cache_info_and_clear_on_the_command_line(cache):
    disk_cache.store(f"{1:064x}", {"payload": 1})
    env = {**os.environ, "GPUAD_CACHE_DIR": str(cache)}
    info = subprocess.run([sys.executable, "-m", "gpuad.cli", "cache", "info"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert info.returncode == 0 and str(cache) in info.stdout and "1 kernel" in info.stdout
    cleared = subprocess.run([sys.executable, "-m", "gpuad.cli", "cache", "clear"], capture_output=True,
                             text=True, env=env, timeout=120)
    assert cleared.returncode == 0 and "removed 1" in cleared.stdout and not disk_cache.entries()

