"""Relocatable: a package copied anywhere (another folder, a read-only file system)
imports, loads and runs equal to eager; nothing in it depends on where it was written."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from conftest import ROOT, boundary_sizes, imported_package, inputs_at, load_model_module

_CALL = """
import sys, torch
folder = sys.argv[1]
sys.path.insert(0, folder + "/site")
import mlp
assert mlp.__file__.startswith(folder), mlp.__file__
model = mlp.load()
cases = torch.load(folder + "/cases.pt")
for x, expected in cases:
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-4)
print("ran", len(cases), "sizes equal to eager from", folder)
"""


def _read_only(command: list[str], folder: Path) -> list[str]:
    """The command with `folder` read-only: mode bits for a user, and for root (as CI runs,
    which mode bits do not stop) a read-only bind mount in a mount namespace of its own."""
    if os.geteuid() != 0:
        return command
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, str(folder), *command]


def test_a_copied_package_runs_from_a_read_only_folder(example_out):
    out = example_out("mlp")
    eager = load_model_module(ROOT / "examples" / "mlp" / "model.py")
    with imported_package(out, "mlp") as package:
        sizes = boundary_sizes(package)
        inputs = [inputs_at(eager.example_inputs, package.INPUTS, size, seed=size)[0] for size in sizes]
    with torch.no_grad():
        cases = [(x, eager.model.eval()(x)) for x in inputs]

    # Somewhere else entirely, readable by everyone, writable by no one.
    folder = Path(tempfile.mkdtemp(prefix="relocated-"))
    try:
        shutil.copytree(out / "mlp", folder / "site" / "mlp", ignore=shutil.ignore_patterns("__pycache__"))
        torch.save(cases, folder / "cases.pt")
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        env = {**os.environ, "HOME": str(folder), "PYTHONPATH": ""}
        probe = _read_only(
            [sys.executable, "-c", "open(__import__('sys').argv[1] + '/probe', 'w')", str(folder)], folder
        )
        assert subprocess.run(probe, capture_output=True).returncode != 0, "the folder is still writable"
        result = subprocess.run(
            _read_only([sys.executable, "-c", _CALL, str(folder)], folder),
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"ran {len(cases)} sizes equal to eager" in result.stdout
        # Nothing was written into the package (no bytecode, no cache).
        assert not list(folder.rglob("__pycache__"))
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(stat.S_IRWXU)
        shutil.rmtree(folder)
