"""Hugging Face decoders with sdpa attention and a dynamic sequence length transpile and
match eager: attention is captured as one opaque op (transpile::sdpa), so no sdpa meta
function's guard pins the length. Llama is an example (tests/test_examples.py); Qwen2
and Mistral are built from the same model file here."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT, imported_package, load_model_module, run_cli

MODEL = ROOT / "examples" / "hf_llama" / "model.py"


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_hf_architecture_transpiles_with_dynamic_length(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ARCH", arch)
    name = f"hf_{arch}"
    assert run_cli([str(MODEL), "--name", name, "--ranges", "1-256", "-o", str(tmp_path), "-q"]) == 0
    eager = load_model_module(MODEL).model
    assert type(eager.decoder).__name__.lower().startswith(arch)
    generator = torch.Generator().manual_seed(0)
    with imported_package(tmp_path, name) as package:
        compiled = package.load()
        for length in (1, 2, 37, 256):
            input_ids = torch.randint(0, 256, (1, length), generator=generator)
            with torch.no_grad():
                expected = eager(input_ids)
            torch.testing.assert_close(compiled(input_ids), expected, rtol=1e-4, atol=1e-4)
    stitch = (tmp_path / name / "stitch.py").read_text()
    assert "torch.ops.transpile.sdpa.default(" in stitch and "from . import ops" in stitch
