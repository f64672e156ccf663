"""A wheel of an emitted package (transpiler/package_wheel.py): reproducible, tagged for
its binaries, requiring its torch; installed with pip into a fresh venv it imports, loads
and runs from site-packages equal to eager, and load() keeps its checks. The CUDA
target's wheel is built from a package rendered with stand-in cubins."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT, boundary_sizes, imported_package, inputs_at, load_model_module, run_cli
from test_targets import as_cuda, cpu_package  # noqa: F401  (the fixture)

from transpiler.package_wheel import build_wheel, requirements


def _entries(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _check_record(entries: dict[str, bytes]) -> None:
    (record_path,) = [p for p in entries if p.endswith(".dist-info/RECORD")]
    rows = [line.split(",") for line in entries[record_path].decode().splitlines()]
    assert {row[0] for row in rows} == set(entries)
    for path, digest, size in rows:
        if path == record_path:
            continue
        data = entries[path]
        expected = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert (digest, int(size)) == (expected, len(data)), path


def test_the_wheel_is_reproducible_tagged_and_pinned(example_out, tmp_path):
    package = example_out("mlp") / "mlp"
    first, second = build_wheel(package, tmp_path / "one"), build_wheel(package, tmp_path / "two")
    assert first.read_bytes() == second.read_bytes()
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert first.name.endswith(f"-{python}-{python}-linux_x86_64.whl") and first.name.startswith("mlp-0+")
    entries = _entries(first)
    with zipfile.ZipFile(first) as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos if ".dist-info/" not in i.filename] == sorted(
        i.filename for i in infos if ".dist-info/" not in i.filename
    )
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    shipped = {
        p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    assert {p[len("mlp/") :] for p in entries if p.startswith("mlp/")} == shipped  # binaries included
    metadata = next(v for k, v in entries.items() if k.endswith("METADATA")).decode()
    assert f"Requires-Dist: torch=={torch.__version__.split('+')[0]}" in metadata.splitlines()
    assert f"Requires-Python: =={sys.version_info.major}.{sys.version_info.minor}.*" in metadata
    _check_record(entries)


_RUN = """
import sys, torch
import mlp
assert "site-packages" in mlp.__file__, mlp.__file__
model = mlp.load()
cases = torch.load(sys.argv[1])
for x, expected in cases:
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-4)
print("ran", len(cases), "sizes equal to eager from", mlp.__file__)
"""
_MISSING_BINARY = """
import pathlib, mlp
next(pathlib.Path(mlp.__file__).parent.rglob("*.so")).unlink()
mlp.load()
"""


def test_pip_installs_the_wheel_into_a_fresh_venv_and_it_runs_from_site_packages(example_out, tmp_path):
    out = example_out("mlp")
    wheel = build_wheel(out / "mlp", tmp_path / "dist")
    eager = load_model_module(ROOT / "examples" / "mlp" / "model.py")
    with imported_package(out, "mlp") as package:
        inputs = [inputs_at(eager.example_inputs, package.INPUTS, s, seed=s)[0] for s in boundary_sizes(package)]
    with torch.no_grad():
        torch.save([(x, eager.model.eval()(x)) for x in inputs], tmp_path / "cases.pt")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # torch, and only what a .pth adds, from this environment: nothing is downloaded.
    (Path(site) / "torch_from_outside.pth").write_text(str(Path(torch.__file__).parent.parent) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # --no-deps: pip would also resolve torch's own requirements, which that environment
    # need not hold in full (setuptools); the wheel's pin on torch is checked below instead.
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    pinned = subprocess.run(
        [python, "-c", "from importlib.metadata import requires, version; print(requires('mlp'), version('torch'))"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    ).stdout.split()
    assert pinned[0] == f"['torch=={torch.__version__.split('+')[0]}']" and pinned[1] == torch.__version__
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [python, "-c", _RUN, str(tmp_path / "cases.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=elsewhere,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ran {len(inputs)} sizes equal to eager from {site}/mlp/__init__.py" in result.stdout
    # load()'s checks hold in site-packages: a missing binary is refused by name.
    refused = subprocess.run([python, "-c", _MISSING_BINARY], capture_output=True, text=True, env=env, cwd=elsewhere)
    assert refused.returncode != 0
    assert "MachineMismatch: kernel binary mlp/kernels/piece_0/" in refused.stderr and "is missing" in refused.stderr


def test_a_cuda_package_wheel_ships_its_cubins_and_pins_triton(cpu_package, tmp_path):  # noqa: F811
    from transpiler.emit import render
    from transpiler.write import write_package

    write_package(render(as_cuda(cpu_package)), tmp_path / "out" / "mlp")
    wheel = build_wheel(tmp_path / "out" / "mlp", tmp_path / "dist")
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert wheel.name.endswith(f"-{python}-none-linux_x86_64.whl")  # no CPython extension inside
    entries = _entries(wheel)
    cubins = [p for p in entries if p.endswith(".cubin")]
    assert cubins and all(entries[p] == b"cubin" for p in cubins)
    metadata = next(v for k, v in entries.items() if k.endswith("METADATA")).decode().splitlines()
    assert "Requires-Dist: triton==3.6.0" in metadata
    assert "Requires-External: CUDA (==13.0)" in metadata
    assert "Requires-External: NVIDIA GPU of compute capability 9.0" in metadata
    _check_record(entries)
    assert build_wheel(tmp_path / "out" / "mlp", tmp_path / "again").read_bytes() == wheel.read_bytes()


def test_the_distributions_of_op_modules_are_required():
    manifest = {
        "torch": "2.13.0",
        "gpu": {},
        "required_ops": [
            {
                "op": "transformers::grouped_mm_fallback",
                "module": "transformers.integrations.moe",
                "requirement": "transformers==5.23.0",
            },
            {"op": "mine::op", "module": "my_ops", "requirement": None},
        ],
    }
    assert requirements(manifest) == ["torch==2.13.0", "transformers==5.23.0"]


def test_bad_wheel_requests_are_refused_in_one_line(tmp_path, capsys):
    model = ROOT / "examples" / "mlp" / "model.py"
    assert run_cli([str(model), "-o", str(tmp_path), "--check", "--wheel", str(tmp_path / "dist")]) == 2
    assert "--wheel with --check" in capsys.readouterr().err
    with pytest.raises(Exception, match="is not an emitted package"):
        build_wheel(tmp_path, tmp_path / "dist")


def test_a_package_without_its_binaries_gives_no_wheel(example_out, tmp_path):
    import shutil

    from transpiler.errors import TranspileError

    copy = tmp_path / "mlp"
    shutil.copytree(example_out("mlp") / "mlp", copy)
    binary = sorted(copy.rglob("*.so"))[0]
    binary.unlink()
    with pytest.raises(TranspileError, match=f"binary {binary.relative_to(copy)} is missing; transpile again"):
        build_wheel(copy, tmp_path / "dist")
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())
