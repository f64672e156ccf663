"""A Llama-style decoder served the production way: a KV cache written in place.

forward(input_ids [1, T], positions [1, T], kv_cache, slot_mapping [T]) -> logits [1, T, vocab]

Prefill and decode go through the same forward: prefill passes the prompt's tokens,
decode one token (or a few) at a time; attention (serving::attention, a splitting op)
writes each token's keys and values into kv_cache at slot_mapping and attends over the
cache. The package is bf16-ready: SERVING_DTYPE=bfloat16 builds the model in bf16,
SERVING_CONFIG=1b the 1.1B-parameter configuration the GPU benchmark uses. The layers
are in llama.py.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama import CONFIGS, Config, Decoder, build, new_kv_cache  # noqa: E402,F401

CONFIG = CONFIGS[os.environ.get("SERVING_CONFIG", "tiny")]
DTYPE = getattr(torch, os.environ.get("SERVING_DTYPE", "float32"))
model = build(CONFIG, DTYPE)

_prompt = 8
example_inputs = (
    torch.randint(0, CONFIG.vocab, (1, _prompt), generator=torch.Generator().manual_seed(0)),
    torch.arange(_prompt).unsqueeze(0),
    new_kv_cache(CONFIG, DTYPE),
    torch.arange(_prompt),
)
_tokens = torch.export.Dim("tokens", min=1, max=CONFIG.max_tokens)
dynamic_shapes = ({1: _tokens}, {1: _tokens}, None, {0: _tokens})
split_ops = ["serving::attention"]
# Under CUDA graphs, padded tokens get slot -1: the op writes them to the scratch slot.
pad_values = {"slot_mapping": -1}
