"""--weights none builds MODEL.py's model with fake parameters (transpiler/fake_weights.py):
no parameter storage, buffers computed in __init__ real, the package the same bytes as one
transpiled from real weights, and one-line refusals for models that need parameter values."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import boundary_sizes, imported_package, inputs_at

from transpiler.cli import main
from transpiler.fake_weights import is_fake
from transpiler.model_file import load_model_file

# A decoder-like block: parameters made on the meta device, moved with to_empty and cast
# with .to(dtype) (as examples/serving_llama does), a rotary table computed in __init__ (a
# non-persistent buffer: real, and shipped), a persistent buffer, tied weights, tp_dim.
ROTARY_MODEL = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, vocab=64, hidden=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.proj.weight.tp_dim = 0
        inv_freq = 1.0 / (10000 ** (torch.arange(0, hidden, 2).float() / hidden))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("scale", torch.full((hidden,), 0.5))

    def forward(self, ids, positions):
        x = self.embed(ids)
        angles = positions.float()[..., None] * self.inv_freq
        rotary = torch.cat((angles.cos(), angles.sin()), dim=-1)
        x = self.proj(x * rotary) * self.scale
        return self.head(torch.nn.functional.gelu(x))


def build():
    torch.manual_seed(0)
    with torch.device("meta"):
        block = Block().to(torch.float32)
    block = block.to_empty(device="cpu")
    block.head.weight = block.embed.weight  # tied (to_empty would untie them)
    with torch.no_grad():
        block.inv_freq.copy_(1.0 / (10000 ** (torch.arange(0, 32, 2).float() / 32)))
        block.scale.fill_(0.5)
        for parameter in block.parameters():
            nn.init.normal_(parameter, std=0.2)
    return block.eval()


model = build()
example_inputs = (torch.randint(0, 64, (1, 6)), torch.arange(6).unsqueeze(0))
_tokens = torch.export.Dim("tokens", min=1, max=32)
dynamic_shapes = ({1: _tokens}, {1: _tokens})
"""


@pytest.fixture
def rotary_model(tmp_path) -> Path:
    path = tmp_path / "rotary" / "model.py"
    path.parent.mkdir()
    path.write_text(ROTARY_MODEL)
    return path


def test_parameters_are_fakes_and_buffers_stay_real(rotary_model):
    model = load_model_file(rotary_model, [], fake_parameters=True).model
    parameters = dict(model.named_parameters(remove_duplicate=False))
    assert parameters and all(is_fake(p) and p.device.type == "cpu" for p in parameters.values())
    assert parameters["head.weight"] is parameters["embed.weight"]  # still tied
    assert parameters["proj.weight"].tp_dim == 0
    assert not any(is_fake(b) for b in model.buffers())
    expected = 1.0 / (10000 ** (torch.arange(0, 32, 2).float() / 32))
    assert torch.equal(model.inv_freq, expected) and torch.equal(model.scale, torch.full((32,), 0.5))
    # Loaded without fakes, the same file gives real parameters.
    real = load_model_file(rotary_model, []).model
    assert not any(is_fake(p) for p in real.parameters())


def test_the_package_equals_a_real_weights_transpile_and_matches_eager(rotary_model, tmp_path, monkeypatch):
    from transpiler import model_file
    from transpiler.treediff import diff_trees

    args = [
        str(rotary_model),
        "--name",
        "rotary",
        "--weights",
        "none",
        "--ranges",
        "1-8,9-32",
        "--sizes",
        "1",
        "-j",
        "1",
        "-q",
    ]
    assert main([*args, "-o", str(tmp_path / "fake")]) == 0
    # The same transpile with real parameters (what --weights none did before).
    with monkeypatch.context() as patch:
        patch.setattr(model_file, "parameters_as_fakes", contextlib.nullcontext)
        assert main([*args, "-o", str(tmp_path / "real")]) == 0
    assert diff_trees(tmp_path / "real" / "rotary", tmp_path / "fake" / "rotary") == []
    assert (tmp_path / "fake" / "rotary" / "weights.safetensors").is_file()  # the rotary table ships

    reference = load_model_file(rotary_model, [])
    eager = reference.model
    with imported_package(tmp_path / "fake", "rotary") as package:
        compiled = package.load(weights=eager.state_dict())
        for size in boundary_sizes(package):
            inputs = inputs_at(reference.example_inputs, package.INPUTS, size)
            with torch.no_grad():
                torch.testing.assert_close(compiled(*inputs), eager(*inputs), atol=1e-4, rtol=0)


def _refused(tmp_path, source: str) -> str:
    path = tmp_path / "bad" / "model.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(source))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "transpiler.cli",
            str(path),
            "-o",
            str(tmp_path / "out"),
            "--weights",
            "none",
            "-j",
            "1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "out").exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_constructor_that_reads_a_parameter_value_is_refused_in_one_line(tmp_path):
    line = _refused(
        tmp_path,
        """
        import torch
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(4, 4)
                self.big = bool(self.linear.weight.abs().max() > 0.1)
            def forward(self, x):
                return self.linear(x)
        model = M()
        example_inputs = (torch.randn(2, 4),)
        dynamic_shapes = ({0: torch.export.Dim("b", min=1, max=8)},)
    """,
    )
    assert "reads a parameter's value while it builds the model" in line and "--weights embed" in line


def test_a_shipped_buffer_computed_from_parameters_is_refused_in_one_line(tmp_path):
    line = _refused(
        tmp_path,
        """
        import torch
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(4, 4)
                self.register_buffer("frozen", self.linear.weight.detach() * 2, persistent=False)
            def forward(self, x):
                return self.linear(x) @ self.frozen
        model = M()
        example_inputs = (torch.randn(2, 4),)
        dynamic_shapes = ({0: torch.export.Dim("b", min=1, max=8)},)
    """,
    )
    assert "frozen is computed from parameters" in line and "--weights embed" in line


def test_building_a_model_with_fakes_holds_no_parameter_memory(tmp_path):
    """1 GiB of parameters, initialized with nn.init (which writes every page when real):
    built with fakes, the process's peak resident memory grows by far less."""
    path = tmp_path / "big.py"
    path.write_text(
        textwrap.dedent("""
        import torch
        model = torch.nn.Sequential(*[torch.nn.Linear(8192, 8192, bias=False) for _ in range(4)])
        for p in model.parameters():
            torch.nn.init.normal_(p)
        example_inputs = (torch.randn(2, 8192),)
    """)
    )
    script = textwrap.dedent(f"""
        import resource, torch
        from transpiler.model_file import load_model_file
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        load_model_file({str(path)!r}, [], fake_parameters=True)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    grown_mib = int(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout)
    assert grown_mib < 200, grown_mib
