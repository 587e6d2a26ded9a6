"""The JupyterLab extension's data and packaging (extension/, gpuad/notebook/views.py, gpuad/record.py).

What the viewer draws is `application/vnd.gpuad.compilation+json`; these tests pin
what every display bundle carries, the JSON's layout, and that the committed
prebuilt bundle is the build of the committed source and is what pyproject installs.
The viewer itself is tested in a browser: tests/test_extension_browser.py.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from compiled_sample import kernel_symbol, sample_record

from gpuad.notebook.irdiff import MARKER_SYMBOL, diff_ir
from gpuad.notebook.views import (
    COMPILATION_MIMETYPE,
    PACKING,
    PLAIN_FIELDS,
    WIDGET_MIMETYPE,
    CompilationView,
    diff_data,
    pack,
    readable_call_sites,
    readable_symbols,
    unpack,
)
from gpuad.record import RECORD_FORMAT, RECORD_VERSION

ROOT = Path(__file__).resolve().parent.parent
EXTENSION = ROOT / "extension"
BUILT = EXTENSION / "labextension"

# Every key of the JSON and the type of its value: the contract with extension/src/model.ts.
SCHEMA = {
    "format": str, "version": int, "kernel_name": str, "target": str, "arch": str, "signature": list,
    "source": str, "overlays": list, "jobs": list, "adjoint_sources": dict, "ir_before_link": str,
    "ir_after_link": str, "ptx": str, "timings": dict, "linked_functions": list, "local_memory_bytes": int,
    "stages": list, "symbols": dict, "call_sites": dict, "link_diff": dict, "line_map": dict,
}
JOB_SCHEMA = {"id": int, "function": str, "mode": str, "activities": list, "argument_types": list,
              "symbol": str, "call_sites": list, "parent": (int, type(None)), "own_shadows": list,
              "source": str}


def record_with_sources():
    record = sample_record()
    job = replace(record.jobs[0], source="def f(x, w):\n    return math.sin(x) * w\n")
    return replace(record, jobs=[job])


def viewer_json(view: CompilationView) -> dict:
    """The JSON as a saved notebook stores it (through json, as Jupyter does), unpacked as the viewer does."""
    return unpack(json.loads(json.dumps(view._repr_mimebundle_()[COMPILATION_MIMETYPE])))


def test_every_display_bundle_carries_the_record_json_next_to_html_and_text():
    record = record_with_sources()
    view_bundle = CompilationView(record)._repr_mimebundle_()
    assert set(view_bundle) == {"text/plain", "text/html", COMPILATION_MIMETYPE}
    # kernel.compile(...)'s value displays the same way; its text form stays the repr.
    record_bundle = record._repr_mimebundle_()
    assert set(record_bundle) == {"text/plain", "text/html", COMPILATION_MIMETYPE}
    assert record_bundle["text/plain"] == repr(record)
    assert record_bundle[COMPILATION_MIMETYPE] == view_bundle[COMPILATION_MIMETYPE]


def test_the_record_displays_through_the_display_installed_from_above(monkeypatch):
    from gpuad import record as record_module
    from gpuad.notebook import display

    assert record_module._display is display.compilation_bundle  # installed by `import gpuad`
    monkeypatch.setattr(record_module, "_display", None)
    assert sample_record()._repr_mimebundle_() is None  # no display: the repr is the text form


def test_a_widget_view_is_only_in_the_bundle_when_asked_for():
    assert WIDGET_MIMETYPE not in CompilationView(sample_record())._repr_mimebundle_()
    bundle = CompilationView(sample_record(), widget=True)._repr_mimebundle_()
    assert {COMPILATION_MIMETYPE, WIDGET_MIMETYPE} <= set(bundle)


def test_json_has_every_key_of_the_schema_with_its_type():
    data = viewer_json(CompilationView(record_with_sources()))
    assert set(data) == set(SCHEMA)
    for key, kind in SCHEMA.items():
        assert isinstance(data[key], kind), (key, type(data[key]))
    assert (data["format"], data["version"]) == (RECORD_FORMAT, RECORD_VERSION)
    for job in data["jobs"]:
        assert set(job) == set(JOB_SCHEMA)
        for key, kind in JOB_SCHEMA.items():
            assert isinstance(job[key], kind), (key, type(job[key]))
    assert data["jobs"][0]["source"].startswith("def f(x, w):")
    assert set(data["adjoint_sources"]) == {"1"}


def test_record_to_dict_keeps_its_keys_and_adds_format_and_version():
    data = sample_record().to_dict()
    assert {"kernel_name", "target", "arch", "signature", "source", "overlays", "jobs", "adjoint_sources",
            "ir_before_link", "ir_after_link", "ptx", "timings", "linked_functions",
            "local_memory_bytes"} <= set(data)
    assert json.loads(sample_record().to_json())["format"] == RECORD_FORMAT


def test_stages_follow_show():
    data = viewer_json(CompilationView(sample_record(), show="ptx,diff"))
    assert data["stages"] == ["ptx", "diff"]


def test_symbols_map_every_mangled_name_to_its_python_name():
    record = sample_record()
    data = viewer_json(CompilationView(record))
    symbols = data["symbols"]
    assert symbols[record.jobs[0].symbol] == "<dynamic>.reverse_f…"
    kernel = kernel_symbol()
    assert symbols[kernel] == "gpuad.examples.grad_f…"
    assert symbols[kernel + "_param_0"] == "gpuad.examples.grad_f…_param_0"
    # Every mangled name in the PTX has a readable form.
    assert set(re.findall(r"_ZN[A-Za-z0-9_$.]+", record.ptx)) <= set(symbols)


def test_link_diff_covers_both_modules_and_marks_the_marker_and_the_linked_function():
    record = sample_record()
    diff = viewer_json(CompilationView(record))["link_diff"]
    before, after = record.ir_before_link.split("\n"), record.ir_after_link.split("\n")
    opcodes = diff["opcodes"]
    # The opcodes tile both modules without gaps: the viewer aligns every line.
    assert opcodes[0][1] == opcodes[0][3] == 0
    for previous, following in zip(opcodes, opcodes[1:]):
        assert (previous[2], previous[4]) == (following[1], following[3])
    assert (opcodes[-1][2], opcodes[-1][4]) == (len(record.ir_before_link.splitlines()),
                                                len(record.ir_after_link.splitlines()))
    markers = [int(k) for k, mark in diff["before_marks"].items() if mark == "marker"]
    assert markers and all(MARKER_SYMBOL in before[k] for k in markers)
    linked = [int(k) for k, mark in diff["after_marks"].items() if mark == "linked"]
    (name,) = diff["linked_functions"]
    assert any(line.startswith("define") and name in line for line in (after[k] for k in linked))


def test_call_sites_are_readable():
    record = sample_record()
    sites = viewer_json(CompilationView(record))["call_sites"]
    assert set(sites) == {o.call_site for o in record.overlays} | set(record.jobs[0].call_sites)
    assert all(sites.values())


# ------------------------------------------------------------ the packed JSON (gzip+base64)

def unpacked_view_data(view: CompilationView) -> dict:
    """What `viewer_data` holds before packing (the record's fields and what the view derives)."""
    data = view.record.to_dict()
    data.update(stages=list(view.stages), symbols=readable_symbols(view.record),
                call_sites=readable_call_sites(view.record), link_diff=diff_data(view.diff))
    return json.loads(json.dumps(data))


def test_packed_json_keeps_the_names_readable_and_round_trips_to_the_same_content():
    view = CompilationView(record_with_sources())
    stored = json.loads(json.dumps(view._repr_mimebundle_()[COMPILATION_MIMETYPE]))
    assert set(stored) == set(PLAIN_FIELDS) | {"packed"} and stored["packed"]["encoding"] == PACKING
    assert stored["kernel_name"] == "grad_f"
    assert "ir_before_link" not in stored and len(json.dumps(stored)) < len(json.dumps(unpack(stored))) / 4
    assert unpack(stored) == unpacked_view_data(view)


def test_ir_after_link_is_stored_as_its_changes_from_ir_before_link():
    record = sample_record()
    body = json.loads(gzip.decompress(base64.b64decode(pack(unpacked_view_data(CompilationView(record)))
                                                       ["packed"]["data"])))
    assert "ir_after_link" not in body
    stored = sum(len(line) for piece in body["ir_after_link_changes"]["lines"] for line in piece)
    assert stored < len(record.ir_after_link) / 4  # only the linked function and the changed lines


@pytest.mark.parametrize("after", ["a\r\nb\n", "x\n", "", "line\u2028break\n"])
def test_modules_whose_lines_the_viewer_would_split_differently_are_stored_whole(after):
    data = {"ir_before_link": "x\ny\n", "ir_after_link": after,
            "link_diff": {"opcodes": [list(op) for op in diff_ir("x\ny\n", after).opcodes]}}
    assert unpack(pack(data)) == data


def test_the_viewers_typescript_decoder_gives_the_same_content(tmp_path):
    """extension/src/model.ts's unpackCompilation, transpiled and run by node, on a real bundle."""
    node, typescript = shutil.which("node"), EXTENSION / "node_modules" / "typescript"
    if node is None or not typescript.is_dir():
        pytest.skip("needs node and extension/node_modules (cd extension && npm install)")
    view = CompilationView(record_with_sources())
    (tmp_path / "stored.json").write_text(json.dumps(view._repr_mimebundle_()[COMPILATION_MIMETYPE]))
    script = tmp_path / "decode.js"
    script.write_text(f"""
const fs = require('fs');
const ts = require({json.dumps(str(typescript))});
const source = fs.readFileSync({json.dumps(str(EXTENSION / "src" / "model.ts"))}, 'utf8');
const js = ts.transpileModule(source, {{compilerOptions: {{module: ts.ModuleKind.CommonJS,
                                                          target: ts.ScriptTarget.ES2020}}}}).outputText;
const model = {{exports: {{}}}};
new Function('exports', 'module', js)(model.exports, model);
const stored = JSON.parse(fs.readFileSync({json.dumps(str(tmp_path / "stored.json"))}, 'utf8'));
model.exports.unpackCompilation(stored).then(data =>
  fs.writeFileSync({json.dumps(str(tmp_path / "decoded.json"))}, JSON.stringify(data)));
""")
    subprocess.run([node, str(script)], check=True, timeout=120)
    assert json.loads((tmp_path / "decoded.json").read_text()) == unpacked_view_data(view)


# ------------------------------------------------------------ the prebuilt bundle and its packaging

def source_hash() -> str:
    """What extension/scripts/stamp.js records at build time: a hash of src/, style/ and package.json."""
    inputs = sorted([*(p.relative_to(EXTENSION).as_posix() for d in ("src", "style")
                       for p in (EXTENSION / d).rglob("*") if p.is_file()), "package.json"])
    digest = hashlib.sha256()
    for name in inputs:
        digest.update(name.encode() + b"\0" + (EXTENSION / name).read_bytes() + b"\0")
    return digest.hexdigest()


def test_committed_bundle_is_built_from_the_committed_source():
    recorded = (BUILT / "source-hash.txt").read_text().strip()
    assert recorded == source_hash(), (
        "extension/labextension is older than extension/src or style: rebuild it with "
        "`cd extension && npm install && npm run build` and commit extension/labextension")


def test_built_package_is_a_mime_extension_whose_entry_file_exists():
    package = json.loads((BUILT / "package.json").read_text())
    assert package["name"] == "gpuad-jupyterlab"
    assert package["jupyterlab"]["mimeExtension"] is True
    entry = package["jupyterlab"]["_build"]["load"]
    assert (BUILT / entry).is_file()
    # The bundle registers the MIME type the Python side puts in display bundles.
    assert any(COMPILATION_MIMETYPE in p.read_text() for p in (BUILT / "static").glob("*.js"))


def pyproject_data_files() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]


def test_pyproject_installs_every_built_file_where_jupyterlab_looks():
    backend = load_backend()
    installed = {target: source for target, source in backend.data_files(ROOT)}
    built = {p for p in BUILT.rglob("*") if p.is_file()}
    assert built <= set(installed.values())
    prefix = "share/jupyter/labextensions/gpuad-jupyterlab/"
    assert all(target.startswith(prefix) for target in installed)
    assert installed[prefix + "package.json"] == BUILT / "package.json"
    assert installed[prefix + "install.json"] == EXTENSION / "install.json"
    assert set(pyproject_data_files())  # the table the backend read is pyproject's own


def load_backend():
    path = EXTENSION / "build_backend" / "gpuad_build_backend.py"
    spec = importlib.util.spec_from_file_location("gpuad_build_backend", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_editable_wheels_get_the_data_files_listed_in_record(tmp_path):
    # setuptools leaves data files out of editable wheels; the backend adds them.
    wheel = tmp_path / "gpuad-0.1.0-0.editable-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("__editable__.gpuad-0.1.0.pth", "/src\n")
        z.writestr("gpuad-0.1.0.dist-info/RECORD", "__editable__.gpuad-0.1.0.pth,,\n"
                                                   "gpuad-0.1.0.dist-info/RECORD,,\n")
    source = tmp_path / "package.json"
    source.write_text('{"name": "x"}')
    load_backend().add_data_files(wheel, [("share/jupyter/labextensions/x/package.json", source)])
    with zipfile.ZipFile(wheel) as z:
        path = "gpuad-0.1.0.data/data/share/jupyter/labextensions/x/package.json"
        assert z.read(path) == source.read_bytes()
        record = z.read("gpuad-0.1.0.dist-info/RECORD").decode().splitlines()
    digest = base64.urlsafe_b64encode(hashlib.sha256(source.read_bytes()).digest()).rstrip(b"=").decode()
    assert f"{path},sha256={digest},{len(source.read_bytes())}" in record
    assert record[-1] == "gpuad-0.1.0.dist-info/RECORD,,"
