"""The emitted package at run time: nothing compiles at import, clear errors for bad
calls and for a machine the kernels were not built for, and size dispatch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import EXAMPLE_PATHS, ROOT, imported_package

ISOLATED_RUN = textwrap.dedent(
    """
    import importlib, sys
    import torch
    name, example = sys.argv[1], sys.argv[2]
    before = set(sys.modules)
    package = importlib.import_module(name)
    model = package.load()
    generator = torch.Generator().manual_seed(0)
    inputs = tuple(
        torch.randn([5 if d is None else d for d in shape], generator=generator, dtype=dtype)
        if dtype.is_floating_point
        else torch.randint(0, 16, [5 if d is None else d for d in shape], generator=generator, dtype=dtype)
        for _, dtype, shape in package.INPUTS
    )
    outputs = model(*inputs)
    loaded = sorted(m for m in set(sys.modules) - before
                    if m.startswith(("torch._dynamo", "torch._inductor", "triton", "transpiler")))
    compiler_modules = sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor")))
    # The eager reference comes after the checks, from the model file itself.
    sys.path.insert(0, example)
    import importlib.util
    spec = importlib.util.spec_from_file_location("reference_model", example + "/model.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    with torch.no_grad():
        expected = reference.model(*inputs)
    print("LOADED", loaded)
    print("COMPILER_MODULES", compiler_modules)
    print("MAX_ERROR", (outputs - expected).abs().max().item())
    """
)


@pytest.mark.parametrize("name", ["tiny_llama", "custom_op"])
def test_import_and_call_compile_nothing(name, example_out, tmp_path):
    """A fresh process with failing compilers and an empty Inductor cache: load() and a
    first call import no compiler (custom_op's splitting op is registered with define + impl)."""
    out = example_out(name)
    failing = tmp_path / "no-compiler"
    failing.write_text("#!/bin/sh\necho compiler called >&2\nexit 1\n")
    failing.chmod(0o755)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(out), *EXAMPLE_PATHS]),
        "CC": str(failing),
        "CXX": str(failing),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "empty-inductor-cache"),
        "TRITON_CACHE_DIR": str(tmp_path / "empty-triton-cache"),
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
    }
    for tool in ("gcc", "g++", "cc", "c++"):
        (tmp_path / tool).symlink_to(failing)
    result = subprocess.run(
        [sys.executable, "-c", ISOLATED_RUN, name, str(ROOT / "examples" / name)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["LOADED"] == "[]", lines["LOADED"]
    assert lines["COMPILER_MODULES"] == "[]", lines["COMPILER_MODULES"]
    assert float(lines["MAX_ERROR"]) < 1e-4
    assert "compiler called" not in result.stderr
    assert not (tmp_path / "empty-inductor-cache").exists()


def test_emitted_modules_import_no_compiler():
    """Every module of every golden package imports only torch, the standard library and
    its own modules (kernels/ holds binaries and their sources, C++ or Triton, none a module)."""
    import ast

    forbidden = ("torch._dynamo", "torch._inductor", "triton", "transpiler", "pickle", "safetensors")
    modules = list((ROOT / "generated").rglob("*.py"))
    assert len(modules) > 20
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                assert not name.startswith(forbidden), f"{path.relative_to(ROOT)} imports {name}"


def test_wrong_inputs_raise_clear_errors(example_out):
    with imported_package(example_out("tiny_llama"), "tiny_llama") as package:
        model = package.load()
        assert "kernel" not in sys.modules, "kernel binaries must not stay registered as `kernel`"
        ids = torch.zeros(1, 4, dtype=torch.int64)
        with pytest.raises(TypeError, match=r"tiny_llama takes 2 inputs \(input_ids, positions\), got 1"):
            model(ids)
        with pytest.raises(TypeError, match="positions: expected dtype torch.int64, got torch.float32"):
            model(ids, ids.float())
        with pytest.raises(ValueError, match=r"input_ids: expected shape \(1, N\), got \(4,\)"):
            model(ids[0], ids)
        with pytest.raises(TypeError, match="input_ids: expected a tensor, got list"):
            model([1, 2], ids)


def test_size_outside_every_range_names_the_size_and_ranges(example_out):
    with imported_package(example_out("mlp"), "mlp") as package:
        model = package.load()
        with pytest.raises(ValueError, match=r"x dim 0 is 129, outside the compiled sizes \(size 4, 1-32, 33-128\)"):
            model(torch.randn(129, 32))


def test_dispatch_prefers_exact_sizes_then_ranges(example_out):
    with imported_package(example_out("tiny_llama"), "tiny_llama") as package:
        package.load()
        from tiny_llama import dispatch

        assert dispatch.select(1) is dispatch.SIZE_1
        assert dispatch.select(8) is dispatch.SIZE_8
        assert dispatch.select(2) is dispatch.RANGE_1_16
        assert dispatch.select(16) is dispatch.RANGE_1_16
        assert dispatch.select(17) is dispatch.RANGE_17_256
        assert dispatch.select(256) is dispatch.RANGE_17_256
        for size in (0, 257):
            with pytest.raises(ValueError, match=f"is {size}, outside"):
                dispatch.select(size)


def _copy_package(example_out, tmp_path, name="mlp"):
    copy = tmp_path / "copy"
    shutil.copytree(example_out(name) / name, copy / name)
    return copy


@pytest.mark.parametrize(
    "edit, message",
    [
        (('TORCH_VERSION = "', 'TORCH_VERSION = "0.0.'), "was built for torch 0.0."),
        (("CPU_FEATURES = (", 'CPU_FEATURES = ("avx512_no_such_feature", '), "lacks: avx512_no_such_feature"),
        (('PYTHON_VERSION = "', 'PYTHON_VERSION = "2.'), "were built for Python 2."),
    ],
)
def test_machine_mismatch_is_refused_at_load(example_out, tmp_path, edit, message):
    copy = _copy_package(example_out, tmp_path)
    init = copy / "mlp" / "__init__.py"
    init.write_text(init.read_text().replace(*edit, 1))
    with imported_package(copy, "mlp") as package:
        with pytest.raises(package.runtime.MachineMismatch, match=message):
            package.load()


def test_missing_binary_is_refused_at_load(example_out, tmp_path):
    copy = _copy_package(example_out, tmp_path)
    for binary in (copy / "mlp" / "kernels").rglob("*.so"):
        binary.unlink()
    with imported_package(copy, "mlp") as package:
        with pytest.raises(package.runtime.MachineMismatch, match="is missing .*transpile the model again"):
            package.load()


def test_manifest_records_hashes_of_every_file(example_out):
    import hashlib

    root = example_out("tiny_llama") / "tiny_llama"
    manifest = json.loads((root / "manifest.json").read_text())
    binaries = json.loads((root / "binaries.json").read_text())
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert set(manifest["files"]) | set(binaries) | {"manifest.json", "binaries.json"} == on_disk
    for relative, digest in {**manifest["files"], **binaries}.items():
        assert hashlib.sha256((root / relative).read_bytes()).hexdigest() == digest, relative
    assert manifest["ranges"] == [[1, 16], [17, 256]] and manifest["sizes"] == [1, 8]
    assert (
        manifest["model"]["sha256"] == hashlib.sha256((ROOT / "examples/tiny_llama/model.py").read_bytes()).hexdigest()
    )
    assert manifest["torch"] == torch.__version__.split("+")[0]
    assert manifest["cpu_isa"] == "avx2"


def test_cuda_golden_record_is_formatted_source():
    """The CUDA package under generated/cuda was produced on a GPU (scripts/gpu-check.sh);
    CI has none, so it checks what it can: black-stable Python, launch metadata, no cubins."""
    import black

    root = ROOT / "generated" / "cuda" / "tiny_llama"
    sources = sorted([*root.rglob("*.py"), *root.rglob("*.triton")])  # modules and kernel sources
    assert len(sources) > 10
    for path in sources:
        text = path.read_text()
        assert black.format_str(text, mode=black.Mode(magic_trailing_comma=False)) == text, path
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["device"] == "cuda" and manifest["gpu"]["arch"] >= 70
    for metadata in (root / "kernels").rglob("*.json"):
        launch = json.loads(metadata.read_text())
        assert launch["num_warps"] > 0 and launch["arg_types"]
        assert (metadata.with_suffix(".triton")).is_file()
    assert not list(root.rglob("*.cubin"))
