"""A Llama-style decoder served the production way: a flattened batch over a paged KV cache.

forward(input_ids [T], positions [T], kv_cache, slot_mapping [T], block_table [S, max_blocks],
        seq_lens [S], query_start_loc [S + 1]) -> logits [T, vocab]

vLLM's layout: one call runs the tokens of S sequences, each a prefill chunk (several
tokens) or a decode step (one token), flattened into T tokens; the cache is
[layers, 2, blocks, BLOCK_SIZE, kv_heads, head_dim] and each sequence owns the blocks its
block-table row names. Attention (serving::paged_attention, a splitting op) writes each
token's keys and values at slot_mapping and attends over its own sequence's blocks up to
its length (serving_ops.py). A single sequence is a batch of one. The package re-exports
BLOCK_SIZE and new_kv_cache(num_blocks, dtype=..., device=...) (`exports` below). The
package is bf16-ready: SERVING_DTYPE=bfloat16 builds the model in bf16, SERVING_CONFIG=1b
the 1.1B-parameter configuration the GPU benchmark uses. The layers are in llama.py; a
small engine loop (continuous batching, greedy) in engine.py.
"""

import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_ops  # noqa: E402
from llama import CONFIGS, Config, Decoder, build, new_kv_cache  # noqa: E402,F401

CONFIG = CONFIGS[os.environ.get("SERVING_CONFIG", "tiny")]
DTYPE = getattr(torch, os.environ.get("SERVING_DTYPE", "float32"))
model = build(CONFIG, DTYPE)

# Three sequences: a 5-token prefill chunk at position 3, a decode step at 9, a new 2-token prompt.
_block = serving_ops.BLOCK_SIZE
_block_table = torch.tensor([[0, 1] + [-1] * (CONFIG.max_blocks_per_seq - 2),
                             [2] + [-1] * (CONFIG.max_blocks_per_seq - 1),
                             [3] + [-1] * (CONFIG.max_blocks_per_seq - 1)])
_positions = torch.tensor([3, 4, 5, 6, 7, 9, 0, 1])
_owner = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2])
example_inputs = (
    torch.randint(0, CONFIG.vocab, (8,), generator=torch.Generator().manual_seed(0)),
    _positions,
    new_kv_cache(CONFIG, 8, DTYPE),
    _block_table[_owner, _positions // _block] * _block + _positions % _block,
    _block_table,
    torch.tensor([8, 10, 2]),
    torch.tensor([0, 5, 6, 8]),
)
_tokens = torch.export.Dim("tokens", min=1, max=CONFIG.max_tokens)
_seqs = torch.export.Dim("seqs", min=1, max=CONFIG.max_seqs)
_blocks = torch.export.Dim("blocks", min=1, max=1 << 24)  # any cache size
dynamic_shapes = ({0: _tokens}, {0: _tokens}, {2: _blocks}, {0: _tokens}, {0: _seqs}, {0: _seqs}, {0: _seqs + 1})
split_ops = ["serving::paged_attention"]
# Under CUDA graphs, padded tokens get slot -1: the op writes nothing for them; the
# per-sequence metadata are padded to the capture size too, with sequences of no tokens
# (seq_lens 0, query_start_loc repeating its last offset) that read no block.
pad_values = {"slot_mapping": -1, "block_table": 0, "seq_lens": 0, "query_start_loc": "last"}
# Names the package re-exports (the transpiler prints each one into its __init__.py).
exports = {
    "BLOCK_SIZE": serving_ops.BLOCK_SIZE,
    "new_kv_cache": functools.partial(
        serving_ops.new_kv_cache, layers=CONFIG.layers, kv_heads=CONFIG.kv_heads, head_dim=CONFIG.head_dim
    ),
}
