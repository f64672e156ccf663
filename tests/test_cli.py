"""The command's own behaviour: --check, the summary, and a model no example covers,
transpiled with default options the way a new user would."""

from __future__ import annotations

import shutil
import textwrap

import torch
from conftest import EXAMPLES, ROOT, imported_package, run_cli

NEW_USER_MODEL = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch.export import Dim


    class Encoder(torch.nn.Module):
        \"\"\"Convolution, non-causal masked attention, two outputs in a dict.\"\"\"

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(6, 16, kernel_size=3, padding=1)
            self.norm = torch.nn.LayerNorm(16)
            self.qkv = torch.nn.Linear(16, 48)
            self.head = torch.nn.Linear(16, 3)

        def forward(self, features, mask):
            x = self.conv(features.transpose(1, 2)).transpose(1, 2)
            x = F.gelu(self.norm(x))
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            pooled = (attended + x).mean(dim=1)
            return {"scores": self.head(pooled), "tokens": attended}


    torch.manual_seed(0)
    model = Encoder().eval()
    example_inputs = (torch.randn(2, 10, 6), torch.ones(2, 10, 10, dtype=torch.bool))
    length = Dim("length", min=2, max=40)
    dynamic_shapes = ({1: length}, {1: length, 2: length})
    """
)


def test_new_user_model_with_default_options(tmp_path, capsys):
    model_path = tmp_path / "encoder.py"
    model_path.write_text(NEW_USER_MODEL)
    out = tmp_path / "out"
    assert run_cli([str(model_path), "-o", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "wrote" in summary and "2 piece calls" in summary and "1 splitting-op calls" in summary

    namespace = {}
    exec(compile(NEW_USER_MODEL, "encoder.py", "exec"), namespace)
    eager = namespace["model"]
    with imported_package(out, "encoder") as package:
        assert package.RANGES == ((2, 40),) and package.SIZES == ()
        compiled = package.load()
        generator = torch.Generator().manual_seed(1)
        for length in (2, 21, 40):
            features = torch.randn(2, length, 6, generator=generator)
            mask = torch.rand(2, length, length, generator=generator) > 0.3
            mask[:, :, 0] = True  # every query attends somewhere
            with torch.no_grad():
                expected = eager(features, mask)
            actual = compiled(features, mask)
            assert actual.keys() == expected.keys()
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_check_reports_up_to_date_and_differences(example_out, tmp_path, capsys):
    args = [str(ROOT / a) if a.startswith("examples/") else a for a in EXAMPLES["mlp"]]
    copy = tmp_path / "out"
    shutil.copytree(example_out("mlp"), copy)
    assert run_cli([*args, "-o", str(copy), "--check"]) == 0
    assert "is up to date" in capsys.readouterr().out

    stitch = copy / "mlp" / "stitch.py"
    stitch.write_text(stitch.read_text() + "# edited by hand\n")
    (copy / "mlp" / "stray.py").write_text("")
    assert run_cli([*args, "-o", str(copy), "--check"]) == 1
    err = capsys.readouterr().err
    assert "differs from a fresh transpile" in err
    assert "changed: stitch.py (+0 -1 lines)" in err
    assert "stray.py" in err


def test_check_needs_an_existing_package(tmp_path, capsys):
    args = [str(ROOT / a) if a.startswith("examples/") else a for a in EXAMPLES["mlp"]]
    assert run_cli([*args, "-o", str(tmp_path / "nothing"), "--check"]) == 2
    assert "does not exist" in capsys.readouterr().err
