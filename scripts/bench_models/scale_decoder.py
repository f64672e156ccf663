"""The serving decoder (examples/serving_llama) at a configuration given by the environment,
for scripts/scale_bench.py: SCALE_CONFIG is a JSON object of llama.Config fields (hidden,
layers, heads, kv_heads, ffn, vocab, max_tokens, max_seqs, max_blocks_per_seq), SCALE_DTYPE
the dtype. Built, fed and exported as examples/serving_llama/model.py is (llama.build, a
flattened batch over a paged cache), at another configuration.
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "serving_llama"))
import serving_ops  # noqa: E402
from llama import Config, build, new_kv_cache  # noqa: E402

CONFIG = Config(**json.loads(os.environ.get("SCALE_CONFIG", "{}")))
DTYPE = getattr(torch, os.environ.get("SCALE_DTYPE", "float32"))
model = build(CONFIG, DTYPE)

# Two sequences: a 5-token prefill chunk at position 3 and a decode step at 9.
_block = serving_ops.BLOCK_SIZE
_block_table = torch.tensor(
    [[0, 1] + [-1] * (CONFIG.max_blocks_per_seq - 2), [2] + [-1] * (CONFIG.max_blocks_per_seq - 1)]
)
_positions = torch.tensor([3, 4, 5, 6, 7, 9])
_owner = torch.tensor([0, 0, 0, 0, 0, 1])
example_inputs = (
    torch.randint(0, CONFIG.vocab, (6,), generator=torch.Generator().manual_seed(0)),
    _positions,
    new_kv_cache(CONFIG, 4, DTYPE),
    _block_table[_owner, _positions // _block] * _block + _positions % _block,
    _block_table,
    torch.tensor([8, 10]),
    torch.tensor([0, 5, 6]),
)
_tokens = torch.export.Dim("tokens", min=1, max=CONFIG.max_tokens)
_seqs = torch.export.Dim("seqs", min=1, max=CONFIG.max_seqs)
_blocks = torch.export.Dim("blocks", min=1, max=1 << 24)
dynamic_shapes = ({0: _tokens}, {0: _tokens}, {2: _blocks}, {0: _tokens}, {0: _seqs}, {0: _seqs}, {0: _seqs + 1})
split_ops = ["serving::paged_attention"]
pad_values = {"slot_mapping": -1}
