"""A package knows what it needs: ops from outside torch (transpiler/foreign_ops.py).

tests/foreign_ops/model.py calls three third-party ops: one made with
torch.library.custom_op whose body is plain torch (captured as its body), one made with
custom_op whose body reads `offsets.tolist()` (kept, as transformers' grouped_mm_fallback
is), and one registered with define + impl (kept). The package imports the modules of the
kept ones at load(), and refuses in one line when it cannot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

FOLDER = ROOT / "tests" / "foreign_ops"


def _python(code: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("foreign")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "transpiler.cli",
            str(FOLDER / "model.py"),
            "-o",
            str(out),
            "--name",
            "thirdparty",
            "--ranges",
            "1-64",
            "-j",
            "1",
            "--wheel",
            str(out / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_a_traceable_custom_op_is_compiled_not_imported(package):
    out, summary = package
    sources = "".join(p.read_text() for p in (out / "thirdparty").rglob("*.py"))
    assert "scaled_gelu" not in sources  # its gelu and mul are in the fused kernel
    assert "note: op thirdparty::scaled_gelu (torch.library.custom_op) is captured as its body" in summary
    manifest = json.loads((out / "thirdparty" / "manifest.json").read_text())
    assert manifest["required_ops"] == [
        {"op": "thirdparty::grouped_rows", "module": "traceable_ops", "requirement": None},
        {"op": "opaquelib::soft_clamp", "module": "opaque_ops", "requirement": None},
    ]
    assert "thirdparty::grouped_rows is kept as an op (its body cannot be traced: it reads tensor values" in summary
    assert (
        "opaquelib::soft_clamp is kept as an op (not made with torch.library.custom_op): the package imports opaque_ops at load()"
        in summary
    )


_RUN = """
import importlib.util, sys, torch
out, folder = sys.argv[1], sys.argv[2]
sys.path[:0] = [out, folder]
import thirdparty
assert "opaque_ops" not in sys.modules and "traceable_ops" not in sys.modules
model = thirdparty.load()
assert "opaque_ops" in sys.modules and "traceable_ops" in sys.modules, "load() did not import the op modules"
spec = importlib.util.spec_from_file_location("eager_model", folder + "/model.py")
eager = importlib.util.module_from_spec(spec); spec.loader.exec_module(eager)
for size in (1, 17, 33, 64):
    x = torch.randn(size, 16, generator=torch.Generator().manual_seed(size)) * 4
    with torch.no_grad():
        expected = eager.model(x)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-4)
print("equal to eager")
"""


def test_the_package_imports_what_registers_its_kept_ops_and_equals_eager(package):
    out, _ = package
    result = _python(_RUN, str(out), str(FOLDER))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "equal to eager" in result.stdout


def test_load_refuses_in_one_line_naming_the_op_and_module(package):
    out, _ = package
    result = _python("import sys; sys.path.insert(0, sys.argv[1]); import thirdparty; thirdparty.load()", str(out))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "ImportError: the model calls op thirdparty::grouped_rows, which module traceable_ops registers"
    ), last
    assert "put the folder holding traceable_ops on sys.path" in last


def test_transformers_grouped_mm_fallback_is_kept_and_its_module_recorded():
    """The op the issue's author met in HF Mixtral and Qwen2-MoE: made with custom_op, but its
    body loops over offs.tolist(), so it is kept, and the package imports its module."""
    from transformers.integrations import moe  # noqa: F401  (registers the op)

    from transpiler import foreign_ops

    class Grouped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(2, 8, 4))
            self.register_buffer("offs", torch.tensor([3, 6]), persistent=False)

        def forward(self, x):
            return torch.ops.transformers.grouped_mm_fallback(x, self.weight, offs=self.offs)

    def export():
        return torch.export.export(Grouped(), (torch.randn(6, 8),), strict=False)

    candidates = foreign_ops.inline_candidates(())
    assert "transformers::grouped_mm_fallback" in candidates
    program, inlined, untraceable = foreign_ops.export_inlining(export, candidates)
    assert inlined == [] and list(untraceable) == ["transformers::grouped_mm_fallback"]
    (required,) = foreign_ops.required_ops(program.graph_module)
    assert required.module == "transformers.integrations.moe"
    assert required.requirement == f"transformers=={__import__('transformers').__version__}"


def test_the_wheel_built_by_the_command_names_what_the_ops_need(package):
    """`transpile --wheel`: the op modules beside MODEL.py are no distribution, so the wheel
    requires torch alone; the package inside lists them in REQUIRED_OPS."""
    import zipfile

    out, summary = package
    (wheel,) = (out / "dist").glob("thirdparty-*.whl")
    assert f"wrote {wheel}" in summary
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith("METADATA"))).decode()
        init = archive.read("thirdparty/__init__.py").decode()
    assert [line for line in metadata.splitlines() if line.startswith("Requires-Dist")] == [
        f"Requires-Dist: torch=={torch.__version__.split('+')[0]}"
    ]
    assert '("opaquelib::soft_clamp", "opaque_ops", None)' in init


_OP_IN_MODEL_FILE = """
import torch
lib = torch.library.Library("inmodel", "DEF")
lib.define("twice(Tensor x) -> Tensor")
lib.impl("twice", lambda x: x * 2, "CompositeExplicitAutograd")
lib._register_fake("twice", lambda x: torch.empty_like(x))


class M(torch.nn.Module):
    def forward(self, x):
        return torch.ops.inmodel.twice(x) + 1


model = M()
example_inputs = (torch.randn(4, 8),)
dynamic_shapes = ({0: torch.export.Dim("n", min=1, max=8)},)
"""


def test_an_op_registered_by_the_model_file_itself_is_refused_in_one_line(tmp_path, capsys):
    from conftest import run_cli

    (tmp_path / "model.py").write_text(_OP_IN_MODEL_FILE)
    assert run_cli([str(tmp_path / "model.py"), "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert (
        "op inmodel::twice is registered by MODEL.py itself" in error and "move its registration into a module" in error
    )
    assert not (tmp_path / "out").exists()
