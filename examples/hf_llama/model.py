"""A tiny Hugging Face decoder (Llama by default) with random weights (no download),
attention through sdpa, a dynamic sequence length.

HF_ARCH=qwen2 or HF_ARCH=mistral builds the same shape in those architectures. The
transpiler captures sdpa as one opaque op (transpile::sdpa), so export never runs
sdpa's device meta functions, whose guards pin the sequence length on CUDA.
"""

import os

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
}
config_class, model_class = ARCHITECTURES[os.environ.get("HF_ARCH", "llama")]
config = config_class(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
    use_cache=False,
    attn_implementation="sdpa",
)


class Logits(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = model_class(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(input_ids=input_ids, use_cache=False).logits


torch.manual_seed(0)
model = Logits().eval()
example_inputs = (torch.randint(0, config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0)),)
dynamic_shapes = ({1: torch.export.Dim("seq", min=1, max=config.max_position_embeddings)},)
