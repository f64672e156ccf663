"""Shared fixtures: each example is transpiled once per test session, whatever the
number of xdist workers, and every test shares one Inductor cache."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))

import pytest  # noqa: E402
import torch  # noqa: E402
from filelock import FileLock  # noqa: E402

EXAMPLES = json.loads((ROOT / "examples" / "examples.json").read_text())
# Folders of modules the example packages import (custom ops: --import).
EXAMPLE_PATHS = [str(ROOT / "examples" / "custom_op"), str(ROOT / "examples" / "serving_llama")]


def run_cli(args: list[str]) -> int:
    """The command in this process; one compile worker unless the test asks for more (the
    xdist workers already use the cores)."""
    from transpiler.cli import main

    if not any(a == "-j" or a.startswith("--jobs") for a in args):
        args = [*args, "-j", "1"]
    return main(args)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A folder shared by all xdist workers of this session."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return root


def transpile_once(shared_dir: Path, name: str, args: list[str]) -> Path:
    """Transpile into shared_dir/name/ unless a worker already did; return OUT."""
    out = shared_dir / f"out-{name}"
    with FileLock(str(shared_dir / f"{name}.lock")):
        done = out / ".done"
        if not done.exists():
            rc = run_cli([*args, "-o", str(out), "-q"])
            assert rc == 0, f"transpile {' '.join(args)} failed with exit code {rc}"
            done.write_text("ok")
    return out


@pytest.fixture(scope="session")
def example_out(shared_dir):
    """example name -> OUT folder holding a fresh transpile of it (OUT/name/)."""

    def get(name: str) -> Path:
        args = [str(ROOT / a) if a.startswith("examples/") else a for a in EXAMPLES[name]]
        lockfile = ROOT / "generated" / name / "tuning.json"
        if lockfile.is_file():  # a tuned example replays its golden lockfile, as regen-goldens does
            args += ["--tuning", str(lockfile)]
        return transpile_once(shared_dir, name, args)

    return get


@contextlib.contextmanager
def imported_package(out: Path, name: str, extra_paths=()):
    """Import OUT/name as a top-level package, then forget it (and its submodules)."""
    paths = [str(out), *extra_paths]
    sys.path[:0] = paths
    try:
        yield importlib.import_module(name)
    finally:
        for path in paths:
            sys.path.remove(path)
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


def load_model_module(model_path: Path):
    """Import a model.py the way the transpiler does, for eager references."""
    from transpiler.model_file import load_model_file

    return load_model_file(model_path, [])


def inputs_at(example_inputs, specs, size: int, seed: int = 0):
    """Inputs with every dynamic dim set to `size`: floats random, ints tiled from the example."""
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for example, (_, dtype, shape) in zip(example_inputs, specs):
        target = [size if dim is None else dim for dim in shape]
        if dtype.is_floating_point:
            inputs.append(torch.randn(target, generator=generator, dtype=dtype))
        else:
            tiled = example
            for axis, dim in enumerate(shape):
                if dim is None:
                    repeats = -(-size // tiled.shape[axis])
                    tiled = tiled.repeat(*[repeats if a == axis else 1 for a in range(tiled.dim())])
                    tiled = tiled.narrow(axis, 0, size)
            inputs.append(tiled.contiguous())
    return tuple(inputs)


def boundary_sizes(package) -> list[int]:
    """Each range's bounds and middle, and every exact size."""
    sizes = set(package.SIZES)
    for lo, hi in package.RANGES:
        sizes |= {lo, hi, (lo + hi) // 2}
    return sorted(sizes)
