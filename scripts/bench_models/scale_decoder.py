"""The serving decoder (examples/serving_llama) at a configuration given by the environment,
for scripts/scale_bench.py: SCALE_CONFIG is a JSON object of llama.Config fields (hidden,
layers, heads, kv_heads, ffn, vocab, max_tokens, cache_slots), SCALE_DTYPE the dtype.
Built and exported exactly as examples/serving_llama/model.py does (llama.build).
"""

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "serving_llama"))
from llama import Config, build, new_kv_cache  # noqa: E402

CONFIG = Config(**json.loads(os.environ.get("SCALE_CONFIG", "{}")))
DTYPE = getattr(torch, os.environ.get("SCALE_DTYPE", "float32"))
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
pad_values = {"slot_mapping": -1}
