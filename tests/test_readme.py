"""The README works as written: its code blocks run verbatim, its commands match CI and pyproject.toml,
and the notebook layer names a missing package of the `notebook` extra (gpuad/notebook/__init__.py).

Every fenced block of the README is one of (test_every_block_is_classified fails on any other):
  python  — run verbatim as a script (what "save it as example.py" does), fresh namespace, GPUAD_TARGET=cpu;
  ipython — run verbatim, in order, as the cells of a fresh IPython shell in a subprocess, GPUAD_TARGET=cpu;
  bash    — not run here (they create a venv and install); checked against .ci/run and pyproject.toml.
No block is skipped.
"""
from __future__ import annotations

import builtins
import json
import math
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpuad.notebook
from gpuad.errors import GpuadError
from gpuad.notebook import MissingNotebookExtra, missing_extra_refused, require

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.M | re.S)
RUN_AS = {"python": "script", "ipython": "notebook cells", "bash": "checked, not run"}


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README) if lang == language]


def bash_lines() -> list[str]:
    return [line.strip() for body in blocks("bash") for line in body.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_every_block_is_classified():
    languages = [lang for lang, _ in FENCE.findall(README)]
    unrun = set(languages) - set(RUN_AS)
    assert not unrun, f"README blocks in languages no test runs: {unrun}"
    assert languages.count("python") >= 1 and languages.count("ipython") >= 2


# ------------------------------------------------------------------ python blocks, run verbatim


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs_verbatim(index, tmp_path, monkeypatch, capsys):
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(blocks("python")[index], encoding="utf-8")
    monkeypatch.setenv("GPUAD_TARGET", "cpu")
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(script), run_name="__main__")
    if index == 0:
        check_first_example(namespace, capsys.readouterr().out)


def check_first_example(namespace: dict, printed: str) -> None:
    """The first block's kernel really wrote ∂f/∂x = cos(x)·y, and its record holds PTX."""
    xs, ys, dxs = namespace["xs"], namespace["ys"], namespace["dxs"]
    assert len(dxs) == namespace["n"]
    np.testing.assert_allclose(dxs, np.cos(xs) * ys, rtol=1e-12, atol=1e-12)
    assert float(printed.split()[0]) < 1e-12  # what the README's comment promises the print shows
    assert ".target sm_" in namespace["rec"].ptx


# ------------------------------------------------------------------ ipython blocks, as notebook cells

NOTEBOOK_RUNNER = r"""
import json, sys
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
shown = []
shell.display_pub.publish = lambda data, metadata=None, **kw: shown.append(data.get("text/plain", ""))
for cell in json.load(sys.stdin):
    result = shell.run_cell(cell, store_history=True)
    if not result.success:
        print(json.dumps({"failed": cell, "error": repr(result.error_before_exec or result.error_in_exec)}))
        sys.exit(0)
ns = shell.user_ns
print(json.dumps({"shown": shown, "xs": list(ns["xs"]), "ys": list(ns["ys"]), "dxs": list(ns["dxs"])}))
"""


def test_ipython_blocks_run_as_notebook_cells():
    """`%load_ext gpuad`, the data, then the `%%gpukernel` cell: compiles, launches, gradchecks."""
    cells = blocks("ipython")
    env = dict(os.environ, GPUAD_TARGET="cpu")
    done = subprocess.run([sys.executable, "-c", NOTEBOOK_RUNNER], input=json.dumps(cells), text=True,
                          capture_output=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert "failed" not in outcome, f"README cell failed: {outcome.get('error')}\n{outcome.get('failed')}"
    shown = "\n".join(outcome["shown"])
    assert "gpuad kernel grad_g [cpu" in shown  # the compilation view of the README's kernel
    assert re.search(r"gradcheck of kernel grad_g: PASSED", shown), shown
    # The launch itself wrote the derivative of exp(-x²)·y along x.
    expected = [-2.0 * x * math.exp(-x * x) * y for x, y in zip(outcome["xs"], outcome["ys"])]
    np.testing.assert_allclose(outcome["dxs"], expected, rtol=1e-12, atol=1e-12)


def test_load_ext_comes_before_the_first_gpukernel_cell():
    cells = blocks("ipython")
    first = next(k for k, cell in enumerate(cells) if "%%gpukernel" in cell)
    assert any(re.search(r"^%load_ext gpuad$", cell, re.M) for cell in cells[:first + 1])


# ------------------------------------------------------------------ bash blocks: CI and pyproject


def ci_test_command() -> str:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line.startswith("python3 ")]
    assert len(commands) == 1, commands
    return commands[0]


def ci_commands() -> list[str]:
    """Every command of .ci/run after its set-up (`set`, `cd`), comments left out."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]


def test_quick_start_test_command_is_what_ci_runs():
    assert ci_test_command() in bash_lines()
    # Chromium for the browser tests included: the README's block is .ci/run's commands, in order.
    commands = ci_commands()
    assert any("chromium" in c for c in commands)
    block = next(body for body in blocks("bash") if ci_test_command() in body)
    lines = [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    end = lines.index(ci_test_command()) + 1
    assert lines[end - len(commands):end] == commands


def test_the_dev_extra_installs_what_the_browser_tests_drive():
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as file:
        extras = tomllib.load(file)["project"]["optional-dependencies"]
    assert "gpuad[browser]" in extras["dev"]
    assert {"playwright", "jupyterlab", "notebook"} <= set(optional_dependencies()["browser"])


def optional_dependencies() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11
    with open(ROOT / "pyproject.toml", "rb") as file:
        extras = tomllib.load(file)["project"]["optional-dependencies"]
    return {extra: [re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower() for req in reqs]
            for extra, reqs in extras.items()}


def test_readme_install_commands_name_extras_pyproject_defines():
    extras = optional_dependencies()
    named = re.findall(r'pip install[^"\n]* "\.\[([\w,-]+)\]"', README)
    assert "notebook" in named and "dev" in named
    for group in named:
        assert set(group.split(",")) <= set(extras), group


def test_the_notebook_extra_holds_what_the_readme_and_the_notebook_layer_use():
    notebook = optional_dependencies()["notebook"]
    assert "jupyterlab" in notebook  # the README starts `.venv/bin/jupyter lab`
    assert set(gpuad.notebook.NOTEBOOK_PACKAGES.values()) <= set(notebook)


def test_no_placeholder_is_left_in_the_docs():
    texts = {"README.md": README}
    paths = [*(ROOT / "docs").glob("*.md"), *(ROOT / "binder").iterdir(), ROOT / "benchmarks" / "README.md"]
    for path in paths:
        if path.is_file():
            texts[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    for name, text in texts.items():
        found = re.findall(r"\bOWNER\b|\bTODO\b|\bFIXME\b|example\.com", text)
        assert not found, f"{name}: placeholder {found}"


# ------------------------------------------------------------------ a missing notebook extra


def hide_modules(monkeypatch, top: str, reimported: tuple[str, ...] = ()) -> None:
    """Make `top` (and its submodules) unimportable, and force `reimported` to be imported again."""
    real_import = builtins.__import__

    def guarded_import(name, *args, **kwargs):
        if name.partition(".")[0] == top and (len(args) < 4 or not args[3]):  # absolute imports only
            raise ModuleNotFoundError(f"No module named {top!r}", name=top)
        return real_import(name, *args, **kwargs)

    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        monkeypatch.setitem(sys.modules, name, None)  # importlib.import_module sees None: not importable
    for name in reimported:
        monkeypatch.delitem(sys.modules, name, raising=False)
        parent, _, child = name.rpartition(".")  # `from package import child` reads the attribute
        if parent in sys.modules and hasattr(sys.modules[parent], child):
            monkeypatch.delattr(sys.modules[parent], child)
    monkeypatch.setattr(builtins, "__import__", guarded_import)


def assert_names_package_and_fix(error: MissingNotebookExtra, package: str, feature: str) -> None:
    text = str(error)
    assert isinstance(error, GpuadError) and isinstance(error, ModuleNotFoundError)
    assert error.name == package
    assert f"'{package}'" in text and feature in text
    assert 'pip install -e ".[notebook]"' in text and f"pip install {package}" in text


def test_compilation_view_without_pygments_names_the_extra(monkeypatch):
    # every loaded notebook module is imported again (any of them may import pygments, and earlier
    # tests may have loaded them)
    hide_modules(monkeypatch, "pygments", tuple(m for m in sys.modules if m.startswith("gpuad.notebook.")
                                                and m != "gpuad.notebook.extras"))
    with pytest.raises(MissingNotebookExtra) as caught:
        gpuad.notebook.CompilationView  # noqa: B018 (the attribute access is the import)
    assert_names_package_and_fix(caught.value, "pygments", "CompilationView")


def test_load_ext_without_ipython_names_the_extra(monkeypatch):
    hide_modules(monkeypatch, "IPython", ("gpuad.notebook.magics",))
    with pytest.raises(MissingNotebookExtra) as caught:
        gpuad.notebook.load_ipython_extension(None)
    assert_names_package_and_fix(caught.value, "ipython", "%load_ext gpuad")


def test_require_matplotlib_for_savefig(monkeypatch):
    assert require("matplotlib.figure", "savefig").Figure is not None
    hide_modules(monkeypatch, "matplotlib")
    with pytest.raises(MissingNotebookExtra) as caught:
        require("matplotlib.figure", "savefig")
    assert_names_package_and_fix(caught.value, "matplotlib", "savefig")


def test_a_missing_module_outside_the_extra_is_not_blamed_on_it():
    with pytest.raises(ModuleNotFoundError) as caught, missing_extra_refused("CompilationView"):
        raise ModuleNotFoundError("No module named 'numba_cuda_internals'", name="numba_cuda_internals")
    assert not isinstance(caught.value, MissingNotebookExtra)
