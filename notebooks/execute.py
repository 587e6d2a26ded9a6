"""Re-execute tutorial notebooks in place on the cpu target, as committed.

Usage: python notebooks/execute.py [NOTEBOOK ...]   (default: every notebook here)
Outputs are what nbval compares, so run this after changing what a notebook
prints; volatile metadata (execution timings, widget state) is dropped.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent


def execute(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    os.environ["GPUAD_TARGET"] = "cpu"
    # A compile's progress display shows only past a second: on a busy machine it comes and goes,
    # and the saved outputs must not depend on how fast this machine was.
    os.environ["GPUAD_PROGRESS"] = "0"
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(HERE)}})
    client.execute()
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    nbformat.write(notebook, path)


if __name__ == "__main__":
    targets = [Path(p) for p in sys.argv[1:]] or sorted(HERE.glob("*.ipynb"))
    for target in targets:
        print(f"executing {target}")
        execute(target)
