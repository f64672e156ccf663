"""Cold start: a splitting op made with torch.library.custom_op is named in the summary,
and the package calls it without importing torch._dynamo; load() logs its stages."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

from conftest import imported_package, run_cli

OPS = textwrap.dedent(
    """
    import torch

    @torch.library.custom_op("coldstart::scale", mutates_args=())
    def scale(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @scale.register_fake
    def _(x):
        return torch.empty_like(x)
    """
)
MODEL = textwrap.dedent(
    """
    import torch
    import coldstart_ops  # noqa: F401

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 8)
            self.b = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.b(torch.ops.coldstart.scale(self.a(x)))

    torch.manual_seed(0)
    model = M()
    example_inputs = (torch.randn(4, 8),)
    dynamic_shapes = ({0: torch.export.Dim("n", min=1, max=16)},)
    split_ops = ["coldstart::scale"]
    """
)
CALL = textwrap.dedent(
    """
    import sys, torch
    import coldstart
    model = coldstart.load()
    out = model(torch.randn(3, 8))
    print("DYNAMO", sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
    """
)


def test_custom_op_splitting_op_is_noted_and_called_without_dynamo(tmp_path, capsys):
    (tmp_path / "coldstart_ops.py").write_text(OPS)
    (tmp_path / "model.py").write_text(MODEL)
    out = tmp_path / "out"
    assert (
        run_cli([str(tmp_path / "model.py"), "--name", "coldstart", "--import", "coldstart_ops", "-o", str(out)]) == 0
    )
    summary = capsys.readouterr().out
    assert "note: splitting op coldstart::scale is made with torch.library.custom_op" in summary
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(out), str(tmp_path)])}
    result = subprocess.run([sys.executable, "-c", CALL], env=env, capture_output=True, text=True, check=True)
    assert "DYNAMO []" in result.stdout, result.stdout + result.stderr


def test_load_logs_each_stage_at_debug_level(example_out, caplog):
    out = example_out("mlp")
    with imported_package(out, "mlp") as package:
        with caplog.at_level(logging.DEBUG, logger="mlp"):
            package.load()
    stages = [r.getMessage() for r in caplog.records if r.name == "mlp"]
    assert [m.split(" in ")[0] for m in stages] == ["load: machine check", "load: kernels", "load: weights"]
