"""State written in place (KV caches, cache inputs, buffers) is updated exactly as eager
updates it: a decode loop compared with eager after every call, outputs and state."""

from __future__ import annotations

import pytest
import torch
from conftest import EXAMPLE_PATHS, EXAMPLES, ROOT, imported_package, load_model_module

# Prefill, single-token steps, a multi-token step, each range's bounds and the exact size.
SERVING_STEPS = [7, 1, 1, 16, 17, 1, 64, 1, 3]


def _one_sequence(start: int, tokens: int, max_blocks: int):
    """Metadata for one sequence whose blocks are 0, 1, 2...: slot i holds position i."""
    positions = torch.arange(start, start + tokens)
    return positions, (
        positions.clone(),
        torch.arange(max_blocks).unsqueeze(0),
        torch.tensor([start + tokens]),
        torch.tensor([0, tokens]),
    )


def _decode_loop(package, reference, steps, cache_factory, seed=0):
    """Run the package and eager over the same steps on their own caches; compare after each."""
    compiled = package.load()
    config = reference.CONFIG
    package_cache, eager_cache = cache_factory(), cache_factory()
    generator = torch.Generator().manual_seed(seed)
    position = 0
    errors = []
    for tokens in steps:
        input_ids = torch.randint(0, config.vocab, (tokens,), generator=generator)
        positions, metadata = _one_sequence(position, tokens, config.max_blocks_per_seq)
        with torch.no_grad():
            expected = reference.model(input_ids, positions, eager_cache, *metadata)
        actual = compiled(input_ids, positions, package_cache, *metadata)
        torch.testing.assert_close(
            actual, expected, rtol=1e-4, atol=1e-4, msg=lambda m: f"{tokens} tokens at {position}: {m}"
        )
        torch.testing.assert_close(
            package_cache, eager_cache, rtol=0, atol=1e-5, msg=lambda m: f"cache after {tokens} tokens: {m}"
        )
        errors.append((actual - expected).abs().max().item())
        position += tokens
    return package_cache, errors


@pytest.fixture(scope="module")
def serving(example_out):
    out = example_out("serving_llama")
    reference = load_model_module(ROOT / EXAMPLES["serving_llama"][0])
    return out, reference


def _reference_module(model_file):
    """The model file as a module (CONFIG, DTYPE, new_kv_cache, model), seeded as the package's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serving_reference", model_file.path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serving_decode_loop_matches_eager(serving):
    out, model_file = serving
    reference = _reference_module(model_file)
    config = reference.CONFIG
    with imported_package(out, "serving_llama", EXAMPLE_PATHS) as package:
        assert package.MUTATED_INPUTS == ("kv_cache",)
        for steps in (SERVING_STEPS, [config.max_tokens]):  # the top of the last range on a fresh cache
            cache, errors = _decode_loop(
                package, reference, steps, lambda: reference.new_kv_cache(config, config.max_blocks_per_seq)
            )
            assert cache.abs().sum() > 0  # the loop really wrote the cache
            assert len(errors) == len(steps)


def test_two_caches_are_updated_each_alone(serving):
    """Two sequences, each with its own cache, interleaved through one loaded package."""
    out, model_file = serving
    reference = _reference_module(model_file)
    config = reference.CONFIG
    with imported_package(out, "serving_llama", EXAMPLE_PATHS) as package:
        compiled = package.load()
        caches = [reference.new_kv_cache(config, 8) for _ in range(2)]
        eager_caches = [reference.new_kv_cache(config, 8) for _ in range(2)]
        generator = torch.Generator().manual_seed(5)
        positions_of = [0, 0]
        for sequence, tokens in [(0, 5), (1, 9), (0, 1), (1, 1), (0, 2)]:
            untouched = caches[1 - sequence].clone()
            start = positions_of[sequence]
            input_ids = torch.randint(0, config.vocab, (tokens,), generator=generator)
            positions, metadata = _one_sequence(start, tokens, config.max_blocks_per_seq)
            with torch.no_grad():
                expected = reference.model(input_ids, positions, eager_caches[sequence], *metadata)
            actual = compiled(input_ids, positions, caches[sequence], *metadata)
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(caches[sequence], eager_caches[sequence], rtol=0, atol=1e-5)
            assert torch.equal(caches[1 - sequence], untouched), "the other sequence's cache changed"
            positions_of[sequence] += tokens


def test_non_contiguous_cache_is_refused(serving):
    out, model_file = serving
    reference = _reference_module(model_file)
    config = reference.CONFIG
    with imported_package(out, "serving_llama", EXAMPLE_PATHS) as package:
        compiled = package.load()
        cache = reference.new_kv_cache(config, 8)
        strided = cache.transpose(4, 5).contiguous().transpose(4, 5)  # same shape, other strides
        positions, metadata = _one_sequence(0, 2, config.max_blocks_per_seq)
        with pytest.raises(ValueError, match="kv_cache: the forward writes it in place, so it must be contiguous"):
            compiled(torch.tensor([1, 2]), positions, strided, *metadata)


def test_index_copy_cache_input_matches_eager(example_out):
    out = example_out("cache_update")
    model_file = load_model_module(ROOT / EXAMPLES["cache_update"][0])
    with imported_package(out, "cache_update") as package:
        assert package.MUTATED_INPUTS == ("cache",)
        compiled = package.load()
        package_cache, eager_cache = torch.zeros(64, 32), torch.zeros(64, 32)
        generator = torch.Generator().manual_seed(3)
        # Exact size 1, range bounds 8 | 9 and 64, and sizes between.
        for tokens in [3, 1, 8, 9, 1, 64, 5]:
            rows = torch.randperm(64, generator=generator)[:tokens]  # distinct rows: index_copy_ is then exact
            x = torch.randn(tokens, 32, generator=generator)
            with torch.no_grad():
                expected = model_file.model(x, eager_cache, rows)
            actual = compiled(x, package_cache, rows)
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(package_cache, eager_cache, rtol=0, atol=1e-6)
        assert package_cache.abs().sum() > 0


def test_buffers_updated_in_place_match_eager(example_out):
    out = example_out("running_stats")
    model_file = load_model_module(ROOT / EXAMPLES["running_stats"][0])
    eager = model_file.model
    with imported_package(out, "running_stats") as package:
        assert package.MUTATED_INPUTS == ()
        assert package.MUTATED_WEIGHTS == ("running_mean", "steps")
        compiled = package.load(weights=eager.state_dict())
        generator = torch.Generator().manual_seed(4)
        for batch in [4, 1, 8, 9, 64, 1, 30]:
            x = torch.randn(batch, 16, generator=generator)
            with torch.no_grad():
                expected = eager(x)
            actual = compiled(x)
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
            state = compiled.state_dict()
            torch.testing.assert_close(state["running_mean"], eager.running_mean, rtol=0, atol=1e-6)
            assert state["steps"].item() == eager.steps.item()
        assert eager.steps.item() == 7


def test_manifest_records_state(example_out):
    import json

    manifest = json.loads((example_out("serving_llama") / "serving_llama" / "manifest.json").read_text())
    assert manifest["state"] == {
        "mutated_inputs": ["kv_cache"],
        "mutated_weights": [],
        "writers": {"kv_cache": ["serving::paged_attention"]},
        "static_inputs": ["kv_cache"],
        "pad_values": {"block_table": 0, "query_start_loc": "last", "seq_lens": 0, "slot_mapping": -1},
    }
    init = (example_out("serving_llama") / "serving_llama" / "__init__.py").read_text()
    assert "input kv_cache: written by serving::paged_attention" in init
