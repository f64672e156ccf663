"""scripts/regen-goldens --cuda-from-gpu: a CUDA golden replaced from a GPU run's returned
sources, or refused in one line with nothing changed."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "regen-goldens"


@pytest.fixture(scope="module")
def regen():
    loader = importlib.machinery.SourceFileLoader("regen_goldens", str(SCRIPT))
    spec = importlib.util.spec_from_loader("regen_goldens", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def make_package(folder: Path, files: dict[str, str], device="cuda") -> None:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    listed = {name: "hash" for name in files} | {"kernels/k.cubin": "hash"}
    (folder / "manifest.json").write_text(json.dumps({"device": device, "files": listed}))


def tarball_of(source: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for package in sorted(source.iterdir()):
            archive.add(package, arcname=f"./{package.name}")
    return path


@pytest.fixture
def goldens(tmp_path):
    root = tmp_path / "cuda"
    make_package(root / "tiny", {"__init__.py": "old\n", "kernels/stale.py": "gone\n"})
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_golden_is_replaced_by_the_gpu_runs_package(regen, goldens, tmp_path, capsys):
    run = tmp_path / "run"
    make_package(run / "tiny", {"__init__.py": "new\n", "kernels/k.py": "source\n"})
    make_package(run / "other", {"__init__.py": "not a golden\n"})
    assert regen.cuda_from_gpu(tarball_of(run, tmp_path / "c.tar.gz"), goldens) == 0
    assert snapshot(goldens / "tiny") == snapshot(run / "tiny") and not (goldens / "other").exists()
    assert "tiny: replaced from c.tar.gz" in capsys.readouterr().out


@pytest.mark.parametrize(
    "case, message",
    [
        ("no tarball", "is not a file"),
        ("not a tarball", "is not a readable tarball"),
        ("package missing", "holds no CUDA package tiny"),
        ("a CPU package", "holds no CUDA package tiny"),
        ("listed file missing", "c.tar.gz lacks kernels/k.py"),
    ],
)
def test_a_bad_tarball_is_refused_in_one_line_and_nothing_changes(regen, goldens, tmp_path, capsys, case, message):
    before = snapshot(goldens)
    run = tmp_path / "run"
    run.mkdir()
    tarball = tmp_path / "c.tar.gz"
    if case == "not a tarball":
        tarball.write_text("not a tarball")
    elif case == "package missing":
        make_package(run / "other", {"__init__.py": "x\n"})
        tarball_of(run, tarball)
    elif case == "a CPU package":
        make_package(run / "tiny", {"__init__.py": "x\n"}, device="cpu")
        tarball_of(run, tarball)
    elif case == "listed file missing":
        make_package(run / "tiny", {"__init__.py": "x\n", "kernels/k.py": "y\n"})
        (run / "tiny" / "kernels" / "k.py").unlink()
        tarball_of(run, tarball)
    assert regen.cuda_from_gpu(tarball, goldens) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert snapshot(goldens) == before


def test_the_repository_golden_is_a_cuda_package(regen):
    # The command's default folder holds at least one golden it can replace.
    manifests = list((regen.ROOT / "generated" / "cuda").glob("*/manifest.json"))
    assert manifests and all(json.loads(m.read_text())["device"] == "cuda" for m in manifests)
