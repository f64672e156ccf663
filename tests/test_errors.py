"""Bad input: one line saying what is wrong and what to do, exit code 2, no traceback,
nothing written."""

from __future__ import annotations

import textwrap

import pytest
from conftest import run_cli

GOOD_HEADER = """
import torch
from torch.export import Dim

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.linear(x).relu()
"""
GOOD = (
    GOOD_HEADER
    + """
model = Net()
example_inputs = (torch.randn(4, 8),)
dynamic_shapes = ({0: Dim("batch", min=1, max=64)},)
"""
)

CASES = {
    "missing file": (None, [], "no such file"),
    "syntax error": ("def broken(:\n", [], "syntax error"),
    "raises at import": ("raise RuntimeError('no GPU here')\n", [], "raised RuntimeError when imported: no GPU here"),
    "no model": ("import torch\nexample_inputs = (torch.randn(2),)\n", [], "does not define `model`"),
    "no example_inputs": (GOOD_HEADER + "model = Net()\n", [], "does not define `example_inputs`"),
    "model not a module": (
        "import torch\nmodel = 3\nexample_inputs = (torch.randn(2),)\n",
        [],
        "not a torch.nn.Module",
    ),
    "inputs not tensors": (GOOD_HEADER + "model = Net()\nexample_inputs = (1, 2)\n", [], "must be a tuple of tensors"),
    "data-dependent control flow": (
        GOOD_HEADER.replace("return self.linear(x).relu()", "return x if x.sum() > 0 else -x")
        + "model = Net()\nexample_inputs = (torch.randn(4, 8),)\n",
        [],
        "torch.export could not capture",
    ),
    "unknown split op": (GOOD, ["--split-ops", "aten::not_an_op"], "unknown split op 'aten::not_an_op'"),
    "ranges overlap": (GOOD, ["--ranges", "1-16,10-64"], "overlap"),
    "ranges leave a gap": (GOOD, ["--ranges", "1-16,20-64"], "fall between"),
    "range outside the dim": (GOOD, ["--ranges", "1-16,17-100"], "falls outside x dim 0's bounds [1, 64]"),
    "malformed range": (GOOD, ["--ranges", "16-1"], "is not LO-HI"),
    "size outside the dim": (GOOD, ["--sizes", "65"], "--sizes: 65 falls outside"),
    "no dynamic dim": (
        GOOD_HEADER + "model = Net()\nexample_inputs = (torch.randn(4, 8),)\n",
        [],
        "no input has a dynamic dimension",
    ),
    "dispatch dim not dynamic": (GOOD, ["--dispatch-dim", "x:1"], "that dimension is not dynamic"),
    "dispatch input unknown": (GOOD, ["--dispatch-dim", "y:0"], "no input 'y'"),
    "bad package name": (GOOD, ["--name", "not-an-identifier"], "not a Python identifier"),
    "import fails": (GOOD, ["--import", "no_such_module_here"], "--import no_such_module_here"),
    "no compile workers": (GOOD, ["-j", "0"], "-j 0: give a number of worker processes"),
    "unknown static input": (GOOD, ["--static-inputs", "cache"], "static input 'cache' is not an input of forward"),
    "bad static_inputs": (GOOD + "static_inputs = 'x'\n", [], "`static_inputs` must be a tuple of input names"),
    "bad pad_values": (GOOD + "pad_values = {'x': 'zero'}\n", [], "`pad_values` must map input names to numbers"),
    "pad value for an unknown input": (
        GOOD + "pad_values = {'slots': -1}\n",
        [],
        "pad value for 'slots', which is not an input",
    ),
    "splitting op writes a view": (
        "import torch\n"
        "lib = torch.library.Library('viewwrite', 'DEF')\n"
        "lib.define('fill(Tensor(a!) x) -> ()')\n"
        "def fill(x):\n"
        "    x.fill_(1)\n"
        "lib.impl('fill', fill, 'CompositeExplicitAutograd')\n"
        "lib._register_fake('fill', lambda x: None)\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x, cache):\n"
        "        torch.ops.viewwrite.fill(cache[0])\n"
        "        return x * 2\n"
        "model = M()\n"
        "example_inputs = (torch.randn(4, 8), torch.zeros(2, 8))\n"
        "dynamic_shapes = ({0: torch.export.Dim('n', min=1, max=8)}, None)\n"
        "split_ops = ['viewwrite::fill']\n",
        [],
        "splitting op viewwrite::fill writes in place to a view of input `cache`",
    ),
    "returns a view of an input": (
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x, cache):\n"
        "        cache.add_(1)\n"
        "        return x * 2, cache[0]\n"
        "model = M()\n"
        "example_inputs = (torch.randn(4, 8), torch.zeros(2, 8))\n"
        "dynamic_shapes = ({0: torch.export.Dim('n', min=1, max=8)}, None)\n",
        [],
        "a view of input `cache`",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_with_one_line(case, tmp_path, capsys):
    source, extra, expected = CASES[case]
    model = tmp_path / "model.py"
    if source is not None:
        model.write_text(textwrap.dedent(source))
    out = tmp_path / "out"
    rc = run_cli([str(model), "-o", str(out), *extra])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, captured.err
    assert len(lines) == 1, f"expected one line, got:\n{captured.err}"
    assert lines[0].startswith("transpile: error: ")
    assert expected in lines[0]
    assert "Traceback" not in captured.err
    assert not out.exists(), "nothing may be written on error"


def test_unwritable_output_folder(tmp_path, capsys):
    model = tmp_path / "model.py"
    model.write_text(textwrap.dedent(GOOD))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc = run_cli([str(model), "-o", str(blocker / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot write to" in err[0], err
    assert blocker.read_text() == "not a folder"


def test_verbose_shows_the_traceback(tmp_path, capsys):
    model = tmp_path / "model.py"
    model.write_text("raise RuntimeError('boom')\n")
    rc = run_cli([str(model), "-o", str(tmp_path / "out"), "-v"])
    assert rc == 2
    assert "Traceback" in capsys.readouterr().err


def test_failed_transpile_leaves_existing_package_untouched(tmp_path, capsys):
    """A failure after the output exists must not remove or half-overwrite it."""
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "stitch.py").write_text("# an earlier package\n")
    model = tmp_path / "model.py"
    model.write_text(textwrap.dedent(GOOD))
    rc = run_cli([str(model), "-o", str(out), "--ranges", "1-16,10-64"])
    assert rc == 2
    assert (out / "model" / "stitch.py").read_text() == "# an earlier package\n"
    assert sorted(p.name for p in out.iterdir()) == ["model"]


def test_atomic_write_restores_previous_package_when_rename_fails(tmp_path, monkeypatch):
    from transpiler import write
    from transpiler.emit import RenderedPackage

    target = tmp_path / "pkg"
    target.mkdir()
    (target / "old.py").write_text("old\n")
    rendered = RenderedPackage(files={"new.py": b"new\n"}, binaries={}, manifest={})
    real_rename = write.os.rename
    calls = []

    def failing_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # moving the new tree into place
            raise OSError("disk full")
        return real_rename(src, dst)

    monkeypatch.setattr(write.os, "rename", failing_rename)
    with pytest.raises(OSError):
        write.write_package(rendered, target)
    assert (target / "old.py").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_export_guard_failing_inside_the_range_is_refused_with_its_detail(tmp_path):
    """The deferred-assert retry (for torch versions that cannot prove true guards) still
    refuses a guard that fails for some declared size, with torch.export's own lines."""
    model = tmp_path / "needs_even.py"
    model.write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x.view(-1, 2, 4).sum(1)\n"
        "model = M()\n"
        "example_inputs = (torch.randn(8, 4),)\n"
        "dynamic_shapes = ({0: torch.export.Dim('n', min=1, max=64)},)\n"
    )
    from transpiler.capture import export_model
    from transpiler.errors import TranspileError
    from transpiler.model_file import load_model_file

    with pytest.raises(TranspileError) as caught:
        export_model(load_model_file(model, []))
    message = str(caught.value)
    assert "torch.export could not capture needs_even.py's forward" in message
    assert "\n" not in message
    assert "Not all values" in message or "Suggested fix" in message or "satisfy the generated guard" in message


def test_runtime_asserts_are_dropped_only_when_they_hold_over_the_range():
    import sympy
    import torch
    from torch.export import Dim
    from torch.utils._sympy.value_ranges import ValueRanges

    from transpiler.runtime_asserts import drop_proven_asserts, holds

    # The guard torch 2.11 cannot prove for Hugging Face decoders: true for every size.
    s = sympy.Symbol("s70", integer=True, positive=True)
    assert holds(sympy.Eq(sympy.Min(16 * s, 32 * s), 16 * s), {s: ValueRanges(1, 256)})
    assert not holds(sympy.Eq(sympy.Mod(s, 2), 0), {s: ValueRanges(1, 256)})
    assert holds(sympy.Eq(sympy.Mod(s, 2), 0), {s: ValueRanges(4, 4)})

    class Even(torch.nn.Module):
        def forward(self, x):
            return x.view(-1, 2, 4).sum(1)

    args = (torch.randn(8, 4),)
    # The view needs an even size, which fails inside 1-64: the asserts stay and it is refused.
    fails = torch.export.export(
        Even(),
        args,
        dynamic_shapes=({0: Dim("n", min=1, max=64)},),
        strict=False,
        prefer_deferred_runtime_asserts_over_guards=True,
    )
    assert not drop_proven_asserts(fails)
    assert any(n.target is torch.ops.aten._assert_scalar.default for n in fails.graph.nodes)
