"""The golden record follows the package runtime by command only.

Every golden package (CPU and CUDA) holds the runtime modules verbatim as
transpiler/runtime/ has them, and its manifest's fingerprint is what emit.render computes;
the CUDA golden, made on a GPU, is brought up to date on the CPU by
`scripts/regen-goldens --cuda-from-record`, which re-renders exactly what a transpile would."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT
from test_targets import as_cuda, cpu_package  # noqa: F401  (the fixture: the mlp example's Package)

from transpiler.golden_record import CUDA_MODULES, fingerprint, graph_tables, rerender_cuda_package, sha256
from transpiler.runtime import MODULES, runtime_files

GOLDENS = sorted(p.parent for p in (ROOT / "generated").glob("**/manifest.json"))
STALE = "run scripts/regen-goldens (for generated/cuda: scripts/regen-goldens --cuda-from-record)"


def _id(root):
    return root.relative_to(ROOT / "generated").as_posix()


def test_the_record_holds_cpu_and_cuda_goldens():
    assert len(GOLDENS) >= 10 and any(
        json.loads((r / "manifest.json").read_text())["device"] == "cuda" for r in GOLDENS
    )


@pytest.mark.parametrize("root", GOLDENS, ids=_id)
def test_runtime_modules_are_verbatim_copies_of_their_source(root):
    manifest = json.loads((root / "manifest.json").read_text())
    expected = {"runtime.py"}
    if manifest["device"] == "cuda":
        expected |= set(CUDA_MODULES)
    if "tensor_parallel" in manifest:
        expected.add("distributed_runtime.py")
    if "from . import ops" in (root / "stitch.py").read_text():
        expected.add("ops.py")
    shipped = {name for name in MODULES if (root / name).is_file()}
    assert shipped == expected, f"{_id(root)} ships {sorted(shipped)}, expected {sorted(expected)}; {STALE}"
    for name, source in runtime_files(*sorted(shipped)).items():
        assert (root / name).read_text() == source, (
            f"{_id(root)}/{name} differs from transpiler/runtime/{name}; {STALE}"
        )


@pytest.mark.parametrize("root", GOLDENS, ids=_id)
def test_manifest_hashes_and_fingerprint_are_consistent(root):
    """The fingerprint recomputes from the manifest (so golden_record.fingerprint is
    emit.render's formula) and, where the files are checked in, from the files themselves."""
    manifest = json.loads((root / "manifest.json").read_text())
    sizes = []
    if manifest["device"] == "cuda":
        sizes = list(graph_tables((root / "cudagraphs.py").read_text())["CAPTURE_SIZES"])
        on_disk = {path: sha256((root / path).read_bytes()) for path in manifest["files"]}
        assert on_disk == manifest["files"], f"{_id(root)}: manifest hashes differ from its files; {STALE}"
    assert fingerprint(manifest, manifest["files"], sizes) == manifest["fingerprint"], _id(root)
    assert f'FINGERPRINT = "{manifest["fingerprint"]}"' in (root / "__init__.py").read_text(), _id(root)


def test_rerendering_from_the_record_reproduces_a_transpile(cpu_package, tmp_path):  # noqa: F811
    """A CUDA package as emit.render writes it, aged (an older runtime and graph tables'
    wording, the hashes and fingerprint that went with them), is brought back byte for
    byte by rerender_cuda_package."""
    from transpiler.emit import render
    from transpiler.weights_file import as_bytes

    rendered = render(as_cuda(cpu_package))
    files = {path: as_bytes(data) for path, data in rendered.files.items()}  # the weights file is a stream
    expected = {**files, "manifest.json": (json.dumps(rendered.manifest, indent=2, sort_keys=True) + "\n").encode()}
    root = tmp_path / "mlp"
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    # Age it: what an older tool would have written.
    manifest = json.loads(expected["manifest.json"])
    (root / "runtime.py").write_text('"""An older runtime."""\n')
    (root / "cudagraphs_runtime.py").unlink()
    del manifest["files"]["cudagraphs_runtime.py"]
    graphs = (root / "cudagraphs.py").read_text()
    (root / "cudagraphs.py").write_text(graphs.replace("# The forward's inputs, in order.\n", ""))
    for path in ("runtime.py", "cudagraphs.py"):
        manifest["files"][path] = sha256((root / path).read_bytes())
    sources = sorted(p for p in manifest["files"] if p.endswith(".triton"))  # an older tool named them .py
    assert sources
    for path in sources:
        (root / path).rename(root / path.replace(".triton", ".py"))
        manifest["files"][path.replace(".triton", ".py")] = manifest["files"].pop(path)
    sizes = [1, 2, 4, 8]  # as_cuda's capture sizes
    old = fingerprint(manifest, manifest["files"], sizes)
    init = (root / "__init__.py").read_text().replace(rendered.manifest["fingerprint"], old)
    (root / "__init__.py").write_text(init)
    manifest["files"]["__init__.py"] = sha256(init.encode())
    manifest["fingerprint"] = old
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    written = rerender_cuda_package(root)
    assert set(written) == {
        "runtime.py",
        "cudagraphs_runtime.py",
        "cudagraphs.py",
        "__init__.py",
        "manifest.json",
        *sources,
    }
    on_disk = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert on_disk.keys() == expected.keys()
    for path, data in expected.items():
        assert on_disk[path] == data, path
    assert rerender_cuda_package(root) == []  # up to date: nothing written


def test_rerendering_refuses_what_it_cannot_do(tmp_path):
    from transpiler.errors import TranspileError

    with pytest.raises(TranspileError, match="holds no manifest.json"):
        rerender_cuda_package(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"device": "cpu"}))
    with pytest.raises(TranspileError, match="is a cpu package; regenerate CPU goldens by transpiling"):
        rerender_cuda_package(tmp_path)
