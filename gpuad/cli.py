"""The `gpuad` command: `gpuad demo` runs the whole pipeline once and reports."""
from __future__ import annotations

import argparse
import sys


def link_diff(before: str, after: str, context: int = 2) -> list[str]:
    """The link diff's hunks around the deferred-codegen markers (what the linker did there), as
    `%%gpukernel --show diff` prints them in a terminal (`gpuad.notebook.text.text_diff`)."""
    from gpuad.notebook.irdiff import diff_ir
    from gpuad.notebook.text import text_diff

    return text_diff(diff_ir(before, after), context, only_markers=True).splitlines()


def demo(args: argparse.Namespace) -> int:
    import numpy as np

    from gpuad import examples
    from gpuad.notebook.info import configured_target

    n = args.n
    xs = np.linspace(-2.0, 2.0, n)
    ys = np.linspace(0.5, 1.5, n)
    dxs = np.zeros(n)
    target = args.target or configured_target()
    if target == "cuda":
        require_gpu()
    kernel = examples.grad_f
    kernel.target = target
    record = kernel.compile(xs, ys, dxs)
    print(record.summary())
    print("\nstages (seconds): " + ", ".join(f"{k} {v:.3f}" for k, v in record.timings.items()))
    for job in record.jobs:
        print(f"\ndeferred job {job.id}: {job.mode} of {job.function}{job.activities} "
              f"for {job.argument_types}\n  linked as {job.symbol[:60]}…")
        print("\ngenerated derivative:\n" + record.adjoint_sources[job.id])
    print("IR diff around the deferred-codegen marker:")
    for line in link_diff(record.ir_before_link, record.ir_after_link):
        print("  " + (line if len(line) < 160 else line[:157] + "..."))
    entries = [line for line in record.ptx.splitlines() if ".entry" in line]
    print(f"\nPTX: {len(record.ptx.splitlines())} lines, {len(entries)} .entry")
    kernel.launch(n, xs, ys, dxs)
    h = 1e-6
    fd = np.array([(examples.f(x + h, y) - examples.f(x - h, y)) / (2 * h) for x, y in zip(xs, ys)])
    error = float(np.max(np.abs(dxs - fd)))
    ok = error < 1e-6
    print(f"\nran {n} threads on the {target} target; max |AD - finite difference| = {error:.2e} "
          f"({'ok' if ok else 'FAILED'})")
    return 0 if ok else 1


def require_gpu() -> None:
    """Refuse the cuda target before compiling when no driver or device can launch it."""
    from gpuad.errors import LaunchError
    from gpuad.notebook.info import NO_GPU_FIX, cuda_launch_checks

    missing = [c for c in cuda_launch_checks() if not c.ok]
    if missing:
        raise LaunchError(f"the cuda target needs a CUDA GPU and driver, and none was found here "
                          f"({missing[0].detail})", hint=NO_GPU_FIX)


def info(args: argparse.Namespace) -> int:
    """Try each component and say what works; exit 1 when the default target cannot run kernels."""
    from gpuad import __version__
    from gpuad.notebook.info import diagnose

    diagnosis = diagnose()
    print(f"gpuad {__version__}")
    print("\n".join(diagnosis.lines()))
    return 0 if diagnosis.ok else 1


def cache(args: argparse.Namespace) -> int:
    """`gpuad cache info` / `gpuad cache clear`: the on-disk kernel cache."""
    from gpuad.compiler import disk_cache

    if args.action == "clear":
        print(f"removed {disk_cache.clear()} cached kernels from {disk_cache.directory()}")
        return 0
    listed = disk_cache.entries()
    size = sum(size for _, size, _ in listed)
    state = "on" if disk_cache.enabled() else "off (GPUAD_CACHE=0)"
    print(f"kernel cache: {disk_cache.directory()} ({state})\n"
          f"{len(listed)} kernel{'' if len(listed) == 1 else 's'}, {size / 2**20:.1f} MiB of "
          f"{disk_cache.max_bytes() / 2**20:.0f} MiB (GPUAD_CACHE_MAX_MB)")
    return 0


def version() -> str:
    from gpuad import __version__

    return f"gpuad {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuad", description=__doc__)
    parser.add_argument("--version", action="version", version=version())
    parser.add_argument("--verbose", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="compile, link, emit and run the example kernel")
    demo_parser.add_argument("--n", type=int, default=1024, help="number of threads")
    demo_parser.add_argument("--target", choices=("cuda", "cpu"), help="default: cuda if a GPU is usable")
    demo_parser.set_defaults(run=demo)
    commands.add_parser("info", help="check each component (NVVM, NVRTC, driver, GPU, versions) "
                        "and say which targets work").set_defaults(run=info)
    cache_parser = commands.add_parser("cache", help="the on-disk cache of compiled kernels")
    cache_parser.add_argument("action", choices=("info", "clear"))
    cache_parser.set_defaults(run=cache)
    args = parser.parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """gpuad's own errors end the command with their message and hint, not a traceback."""
    from gpuad.errors import GpuadError

    try:
        return args.run(args)
    except GpuadError as exc:
        if args.verbose:
            raise
        print(f"gpuad {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
