"""Same model and options -> the same bytes, whatever the hash seed, output path,
working directory or number of compile workers."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

from transpiler.treediff import source_files


def _transpile(cwd, out, seed, model, jobs=1):
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    command = [
        sys.executable,
        "-m",
        "transpiler.cli",
        str(model),
        "-o",
        str(out),
        "--name",
        "mlp",
        "--ranges",
        "1-32,33-128",
        "--sizes",
        "4",
        "-q",
        "-j",
        str(jobs),
    ]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


def test_two_transpiles_are_byte_identical(tmp_path):
    first_cwd, second_cwd = tmp_path / "a", tmp_path / "b" / "deeper"
    first_cwd.mkdir()
    second_cwd.mkdir(parents=True)
    model = ROOT / "examples" / "mlp" / "model.py"
    # One run names the model by a relative path, the other by an absolute one.
    _transpile(first_cwd, tmp_path / "out-one", 1, os.path.relpath(model, first_cwd))
    # ... and compiles on a pool of two workers, in whatever order they finish.
    _transpile(second_cwd, tmp_path / "elsewhere" / "out-two", 4242, model, jobs=2)
    first = source_files(tmp_path / "out-one" / "mlp")
    second = source_files(tmp_path / "elsewhere" / "out-two" / "mlp")
    assert first.keys() == second.keys()
    differing = [path for path in first if first[path] != second[path]]
    assert not differing, differing
    assert "manifest.json" in first and "weights.safetensors" in first
    # Nothing machine- or path-specific leaks into the sources.
    for path, data in first.items():
        if path.endswith((".py", ".json", ".cpp")):
            text = data.decode()
            for leak in (str(tmp_path), str(ROOT), "/tmp/", "0x7f"):
                assert leak not in text, f"{path} contains {leak}"
