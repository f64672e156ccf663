"""Continuous batching over a paged KV cache (issue 16), on the CPU.

The serving example's package runs eight sequences of different prompt lengths, started at
different steps, prefilled in chunks and decoded together through the engine loop
(examples/serving_llama/engine.py); each sequence's tokens and logits must equal the eager
model run on that sequence alone on its own cache. Bad metadata gets one error and leaves
the cache untouched, from the reference op and from the package.
"""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
import torch
from conftest import EXAMPLE_PATHS, EXAMPLES, ROOT, imported_package, load_model_module

SERVING = ROOT / "examples" / "serving_llama"
# (prompt length, step it arrives at): lengths around the block size (16) and the chunk (8).
ARRIVALS = [(3, 0), (16, 0), (17, 1), (1, 2), (30, 3), (9, 5), (24, 8), (5, 13)]
NEW_TOKENS = 32


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"serving_test_{name}", SERVING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def serving(example_out):
    out = example_out("serving_llama")
    reference = load_model_module(ROOT / EXAMPLES["serving_llama"][0])
    return out, reference


def _prompts(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (length,), generator=generator).tolist() for length, _ in ARRIVALS]


def _alone(engine, eager, config, prompt, new_tokens):
    cache = engine_cache(config, blocks=config.max_blocks_per_seq)
    return engine.generate_alone(eager, cache, prompt, new_tokens, 16, config.max_blocks_per_seq)


def engine_cache(config, blocks):
    return torch.zeros(config.layers, 2, blocks, 16, config.kv_heads, config.hidden // config.heads)


def test_package_exports_block_size_and_cache(serving):
    out, reference = serving
    config = reference.model.config
    with imported_package(out, "serving_llama", EXAMPLE_PATHS) as package:
        assert package.BLOCK_SIZE == 16
        cache = package.new_kv_cache(10, dtype=torch.bfloat16)
        assert cache.shape == (config.layers, 2, 10, 16, config.kv_heads, config.hidden // config.heads)
        assert cache.dtype == torch.bfloat16 and not cache.any()
        assert package.MUTATED_INPUTS == ("kv_cache",)


def test_continuous_batching_matches_each_sequence_alone(serving):
    out, reference = serving
    engine = _module("engine")
    eager = reference.model
    config = eager.config
    prompts = _prompts()
    with imported_package(out, "serving_llama", EXAMPLE_PATHS) as package:
        model = package.load()
        # 36 blocks: the eight need 31 at most; the ninth gets blocks the first ones freed.
        runner = engine.Engine(model, package.new_kv_cache(36), package.BLOCK_SIZE, config.max_blocks_per_seq, chunk=8)
        pending = sorted(((step, i) for i, (_, step) in enumerate(ARRIVALS)), reverse=True)
        late_prompt, late_request, freed_before_late = [7, 8, 9, 10, 11], None, None
        mixed_steps = 0
        while pending or runner.has_work():
            while pending and pending[-1][0] <= runner.steps:
                _, i = pending.pop()
                runner.add(engine.Request(f"seq{i}", prompts[i], NEW_TOKENS))
            if late_request is None and runner.finished:
                freed_before_late = set(runner.allocator.free)
                late_request = engine.Request("late", late_prompt, 8)
                runner.add(late_request)
            chunks = runner.step()
            lengths = {len(c.tokens) for c in chunks}
            mixed_steps += 1 in lengths and len(lengths) > 1  # prefill chunks beside decodes
        assert mixed_steps > 0, "no step mixed prefill chunks and decodes"
        assert set(late_request.blocks) & freed_before_late, "the late sequence did not reuse freed blocks"
        assert len(runner.allocator.free) == 36  # every block came back

        for i, prompt in enumerate(prompts):
            batched = runner.finished[f"seq{i}"]
            alone = _alone(engine, eager, config, prompt, NEW_TOKENS)
            assert batched.output == alone.output, f"seq{i} (prompt {len(prompt)}): tokens differ from eager alone"
            torch.testing.assert_close(
                torch.stack(batched.logits), torch.stack(alone.logits), rtol=0, atol=1e-4, msg=lambda m: f"seq{i}: {m}"
            )
        alone = _alone(engine, eager, config, late_prompt, 8)
        assert runner.finished["late"].output == alone.output
        torch.testing.assert_close(
            torch.stack(runner.finished["late"].logits), torch.stack(alone.logits), rtol=0, atol=1e-4
        )


def _valid_call(config, cache_blocks=8):
    """Two sequences: a 3-token prefill in block 2, a decode at position 16 in blocks 0, 5."""
    head_dim = config.hidden // config.heads
    cache = torch.randn(config.layers, 2, cache_blocks, 16, config.kv_heads, head_dim)
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(4, config.heads, head_dim, generator=generator)
    k = torch.randn(4, config.kv_heads, head_dim, generator=generator)
    v = torch.randn(4, config.kv_heads, head_dim, generator=generator)
    metadata = {
        "slot_mapping": torch.tensor([32, 33, 34, 80]),
        "block_table": torch.tensor([[2, -1, -1], [0, 5, -1]]),
        "seq_lens": torch.tensor([3, 17]),
        "query_start_loc": torch.tensor([0, 3, 4]),
    }
    return q, k, v, cache, metadata


def _call(q, k, v, cache, metadata, layer=0):
    return torch.ops.serving.paged_attention(
        q,
        k,
        v,
        cache,
        metadata["slot_mapping"],
        metadata["block_table"],
        metadata["seq_lens"],
        metadata["query_start_loc"],
        layer,
        0.25,
    )


def test_reference_op_matches_dense_attention(serving):
    """Each sequence's rows equal causal attention over its own keys, written where the
    block table says."""
    _, reference = serving
    config = reference.model.config
    q, k, v, cache, metadata = _valid_call(config)
    before = cache.clone()
    out = _call(q, k, v, cache, metadata)
    assert torch.equal(cache[0, 0, 2, :3], k[:3]) and torch.equal(cache[0, 1, 5, 0], v[3])
    changed = (cache != before).flatten(4).any(-1)  # per slot
    assert changed.sum() == 4 * 2  # four slots of keys and of values, nothing else
    group = config.heads // config.kv_heads
    # Sequence 1: one query at position 16 over the 16 keys of block 0 and its own.
    keys = torch.cat([cache[0, 0, 0], cache[0, 0, 5, :1]]).repeat_interleave(group, 1)
    values = torch.cat([cache[0, 1, 0], cache[0, 1, 5, :1]]).repeat_interleave(group, 1)
    expected = torch.softmax(torch.einsum("hd,lhd->hl", q[3], keys) * 0.25, -1)
    torch.testing.assert_close(out[3], torch.einsum("hl,lhd->hd", expected, values), rtol=0, atol=1e-5)
    # Sequence 0: causal over its three tokens.
    keys, values = k[:3].repeat_interleave(group, 1), v[:3].repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", q[:3], keys) * 0.25
    scores = scores.masked_fill(~torch.ones(3, 3, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(out[:3], torch.einsum("hqk,khd->qhd", scores.softmax(-1), values), rtol=0, atol=1e-5)


BAD_METADATA = [
    (
        "block table past the cache",
        {"block_table": torch.tensor([[2, -1, -1], [0, 8, -1]])},
        "block_table row 1 points to block 8, outside the cache's 8 blocks",
    ),
    (
        "unassigned block",
        {"block_table": torch.tensor([[2, -1, -1], [0, -1, -1]])},
        "block_table row 1 points to block -1",
    ),
    (
        "sequence longer than its blocks",
        {"seq_lens": torch.tensor([3, 49]), "slot_mapping": torch.tensor([32, 33, 34, 80])},
        "sequence 1 has length 49, longer than its 3 blocks of 16",
    ),
    (
        "seq_lens of the wrong length",
        {"seq_lens": torch.tensor([3, 17, 1])},
        "seq_lens has shape (3,) for 2 block-table rows",
    ),
    (
        "query_start_loc of the wrong length",
        {"query_start_loc": torch.tensor([0, 4])},
        "query_start_loc has shape (2,) for 2 sequences",
    ),
    (
        "slot_mapping of the wrong length",
        {"slot_mapping": torch.tensor([32, 33, 34])},
        "slot_mapping has shape (3,) for 4 tokens",
    ),
    (
        "slot outside the block table",
        {"slot_mapping": torch.tensor([32, 33, 35, 80])},
        "slot_mapping[2] is 35, but sequence 0's block table puts position 2 at slot 34",
    ),
    ("more new tokens than seq_len", {"seq_lens": torch.tensor([2, 17])}, "sequence 0 has 3 new tokens but seq_len 2"),
]


@pytest.mark.parametrize("what,change,message", BAD_METADATA, ids=[b[0] for b in BAD_METADATA])
def test_bad_metadata_is_refused_before_any_write(serving, what, change, message):
    _, reference = serving
    q, k, v, cache, metadata = _valid_call(reference.model.config)
    before = cache.clone()
    with pytest.raises(ValueError, match=re.escape("serving::paged_attention: " + message)):
        _call(q, k, v, cache, {**metadata, **change})
    assert torch.equal(cache, before), f"{what}: the cache was written"


def test_package_refuses_bad_metadata_before_any_write(serving):
    out, reference = serving
    config = reference.model.config
    with imported_package(out, "serving_llama", EXAMPLE_PATHS) as package:
        model = package.load()
        cache = torch.randn(config.layers, 2, 8, 16, config.kv_heads, config.hidden // config.heads)
        before = cache.clone()
        args = (torch.tensor([1, 2]), torch.tensor([0, 1]), cache, torch.tensor([0, 1]))
        with pytest.raises(ValueError, match="block_table row 0 points to block 9, outside the cache's 8 blocks"):
            model(*args, torch.tensor([[9] + [-1] * 7]), torch.tensor([2]), torch.tensor([0, 2]))
        assert torch.equal(cache, before)


def test_engine_refuses_a_request_longer_than_a_sequences_blocks(serving):
    out, reference = serving
    engine = _module("engine")
    runner = engine.Engine(reference.model, engine_cache(reference.model.config, 16), 16, max_blocks_per_seq=2)
    with pytest.raises(ValueError, match="request long: 30 \\+ 3 tokens need 3 blocks, more than a sequence's 2"):
        runner.add(engine.Request("long", list(range(30)), 3))
    assert not runner.has_work()
