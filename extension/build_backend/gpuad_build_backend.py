"""setuptools' build backend, plus the JupyterLab extension in editable wheels.

A regular wheel installs the prebuilt extension (extension/labextension) into
<prefix>/share/jupyter/labextensions/ through pyproject's
[tool.setuptools.data-files]. setuptools leaves data files out of editable
wheels (pypa/setuptools#3399), so `pip install -e .` would install gpuad
without its viewer. This backend adds the same data files, copied, to the
editable wheel (`<name>-<version>.data/data/`, which pip installs into the
prefix as for any wheel). After rebuilding the extension, reinstall
(`pip install -e .`) to copy the new bundle.
"""
from __future__ import annotations

import base64
import glob
import hashlib
import os
import zipfile
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403 - every other hook is setuptools' own
from setuptools.config.pyprojecttoml import load_file

ROOT = Path(__file__).resolve().parent.parent.parent


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    add_data_files(Path(wheel_directory) / name, data_files(ROOT))
    return name


def data_files(root: Path) -> list[tuple[str, Path]]:
    """(path under the prefix, source file) for each file of pyproject's data-files table."""
    table = load_file(root / "pyproject.toml").get("tool", {}).get("setuptools", {}).get("data-files", {})
    files = []
    for target, patterns in table.items():
        for pattern in patterns:
            for source in sorted(glob.glob(str(root / pattern))):
                files.append((f"{target}/{os.path.basename(source)}", Path(source)))
    return files


def add_data_files(wheel: Path, files: list[tuple[str, Path]]) -> None:
    """Rewrite `wheel` with `files` under its .data/data directory, listed in RECORD."""
    with zipfile.ZipFile(wheel) as old:
        entries = [(info, old.read(info)) for info in old.infolist()]
    dist_info = next(i.filename.split("/")[0] for i, _ in entries if i.filename.endswith(".dist-info/RECORD"))
    data_dir = dist_info[: -len(".dist-info")] + ".data/data"
    record_name = f"{dist_info}/RECORD"
    added = [(f"{data_dir}/{target}", source.read_bytes()) for target, source in files]
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as new:
        for info, content in entries:
            if info.filename == record_name:
                lines = content.decode().splitlines()
                lines[-1:-1] = [f"{path},{_digest(data)},{len(data)}" for path, data in added]
                content = ("\n".join(lines) + "\n").encode()
            new.writestr(info, content)
        for path, data in added:
            new.writestr(path, data)


def _digest(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"
