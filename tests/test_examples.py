"""Every example: the emitted tree equals the golden record, and the package's outputs
equal eager PyTorch at each range's bounds and middle and at every exact size."""

from __future__ import annotations

import pytest
import torch
from conftest import EXAMPLE_PATHS, EXAMPLES, ROOT, boundary_sizes, imported_package, inputs_at, load_model_module

from transpiler.treediff import diff_trees

REGENERATE = "scripts/regen-goldens"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_emitted_tree_matches_golden_record(name, example_out):
    fresh = example_out(name) / name
    golden = ROOT / "generated" / name
    assert golden.is_dir(), f"generated/{name} is missing; run {REGENERATE}"
    differences = diff_trees(golden, fresh)
    assert not differences, (
        f"generated/{name} differs from a fresh transpile:\n  "
        + "\n  ".join(differences[:20])
        + f"\nIf the change is intended, run {REGENERATE} {name} and commit generated/."
    )


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_outputs_equal_eager_at_range_boundaries(name, example_out):
    out = example_out(name)
    model_file = load_model_module(ROOT / EXAMPLES[name][0])
    eager = model_file.model.eval()
    with imported_package(out, name, EXAMPLE_PATHS) as package:
        if package.MUTATED_INPUTS:
            pytest.skip("writes its inputs in place: tests/test_state.py runs it over a decode loop")
        compiled = package.load()
        sizes = boundary_sizes(package)
        assert len(sizes) >= 3
        for size in sizes:
            inputs = inputs_at(model_file.example_inputs, package.INPUTS, size, seed=size)
            with torch.no_grad():
                expected = eager(*inputs)
            actual = compiled(*inputs)
            torch.testing.assert_close(
                actual, expected, rtol=1e-4, atol=1e-5, msg=lambda m, size=size: f"size {size}: {m}"
            )


def test_load_with_state_dict_uses_those_weights(example_out):
    out = example_out("mlp")
    model_file = load_model_module(ROOT / EXAMPLES["mlp"][0])
    eager = model_file.model.eval()
    with torch.no_grad():
        for parameter in eager.parameters():
            parameter.mul_(0.5)
    with imported_package(out, "mlp") as package:
        compiled = package.load(weights=eager.state_dict())
        inputs = inputs_at(model_file.example_inputs, package.INPUTS, 7)
        with torch.no_grad():
            torch.testing.assert_close(compiled(*inputs), eager(*inputs), rtol=1e-4, atol=1e-5)
        with pytest.raises(KeyError, match="missing 'net.0.weight' and 9 more in the state_dict"):
            package.load(weights={})
