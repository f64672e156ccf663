"""A tiny Hugging Face GPT-2 with random weights (no download).

The wrapper's forward(input_ids) returns only the logits tensor, so the
exported program's output is a plain tensor rather than a ModelOutput.
"""

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

config = GPT2Config(
    n_layer=2,
    n_embd=64,
    n_head=4,
    n_positions=128,
    vocab_size=256,
    # GPT-2's default bos/eos id (50256) is outside this small vocabulary and
    # makes transformers print a warning at import; use the last token instead.
    bos_token_id=255,
    eos_token_id=255,
    use_cache=False,
    attn_implementation="sdpa",
)


class GPT2Logits(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.gpt2 = GPT2LMHeadModel(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.gpt2(input_ids=input_ids, use_cache=False).logits


torch.manual_seed(0)
model = GPT2Logits(config).eval()

# input_ids: int64 [batch=1, seq=8]
example_inputs = (torch.randint(0, config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0)),)

# The sequence dimension (dim 1) is dynamic, up to the position table size.
# min=1 works: transformers builds the causal mask from the symbolic length, so
# export does not specialize size 1. Note that in the exported graph
# scaled_dot_product_attention gets an explicit boolean attn_mask (is_causal=False).
dynamic_shapes = ({1: torch.export.Dim("seq", min=1, max=config.n_positions)},)
