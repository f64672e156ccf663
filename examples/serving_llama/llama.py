"""The Llama-style decoder of the serving example: layers, configurations, the paged cache.

model.py builds the module-level `model` the transpiler reads from these; benchmarks
import this module alone to build a model without model.py's example instance.
"""

import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_ops  # noqa: E402  (registers serving::paged_attention)


@dataclass(frozen=True)
class Config:
    vocab: int = 256
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 128
    max_tokens: int = 128  # the most tokens one call takes (all sequences together)
    max_seqs: int = 128  # the most sequences one call takes
    max_blocks_per_seq: int = 8  # block-table width: a sequence holds up to 8 x BLOCK_SIZE positions
    num_blocks: int = 256  # blocks of a default cache (new_kv_cache(config))
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


CONFIGS = {
    "tiny": Config(),
    # Llama-architecture, 1.1B parameters (TinyLlama's shape).
    "1b": Config(
        vocab=32000, hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192,
        max_tokens=2048, max_seqs=256, max_blocks_per_seq=256, num_blocks=4096,
    ),
}


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config: Config, layer: int):
        super().__init__()
        self.layer = layer
        self.heads, self.kv_heads = config.heads, config.kv_heads
        self.head_dim = config.hidden // config.heads
        self.q_proj = nn.Linear(config.hidden, config.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden, config.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden, config.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.heads * self.head_dim, config.hidden, bias=False)

    def forward(self, x, cos, sin, kv_cache, metadata):
        tokens = x.shape[0]
        q = rotate(self.q_proj(x).view(tokens, self.heads, self.head_dim), cos, sin)
        k = rotate(self.k_proj(x).view(tokens, self.kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(tokens, self.kv_heads, self.head_dim)
        out = torch.ops.serving.paged_attention(q, k, v, kv_cache, *metadata, self.layer, self.head_dim**-0.5)
        return self.o_proj(out.reshape(tokens, self.heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, config: Config, layer: int):
        super().__init__()
        self.input_norm = RMSNorm(config.hidden)
        self.attn = Attention(config, layer)
        self.post_norm = RMSNorm(config.hidden)
        self.gate = nn.Linear(config.hidden, config.ffn, bias=False)
        self.up = nn.Linear(config.hidden, config.ffn, bias=False)
        self.down = nn.Linear(config.ffn, config.hidden, bias=False)

    def forward(self, x, cos, sin, kv_cache, metadata):
        x = x + self.attn(self.input_norm(x), cos, sin, kv_cache, metadata)
        h = self.post_norm(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


class Decoder(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        head_dim = config.hidden // config.heads
        self.embed = nn.Embedding(config.vocab, config.hidden)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.layers))
        self.norm = RMSNorm(config.hidden)
        self.lm_head = nn.Linear(config.hidden, config.vocab, bias=False)
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_ids, positions, kv_cache, slot_mapping, block_table, seq_lens, query_start_loc):
        """A flattened batch: input_ids, positions, slot_mapping [T]; block_table [S, max_blocks],
        seq_lens [S], query_start_loc [S + 1] (serving_ops.paged_attention says what they
        mean); kv_cache [layers, 2, blocks, BLOCK_SIZE, kv_heads, head_dim]. Returns logits [T, vocab]."""
        x = self.embed(input_ids)  # [T, hidden]
        angles = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)[:, None, :]  # [T, 1, head_dim]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        metadata = (slot_mapping, block_table, seq_lens, query_start_loc)
        for layer in self.layers:
            x = layer(x, cos, sin, kv_cache, metadata)
        return self.lm_head(self.norm(x))


def new_kv_cache(config: Config, num_blocks: int | None = None, dtype=torch.float32, device="cpu"):
    """An empty paged cache: [layers, 2 (keys, values), num_blocks, BLOCK_SIZE, kv_heads, head_dim]."""
    return serving_ops.new_kv_cache(
        config.num_blocks if num_blocks is None else num_blocks, dtype, device,
        layers=config.layers, kv_heads=config.kv_heads, head_dim=config.head_dim,
    )


def build(config: Config, dtype=torch.float32, seed: int = 0) -> Decoder:
    """Random weights, written once: the layers are made on the meta device (so nn.Linear's
    own initialization, which these weights replace anyway, costs nothing), then given memory."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        decoder = Decoder(config).to(dtype)
    decoder = decoder.to_empty(device="cpu")
    head_dim = config.hidden // config.heads
    with torch.no_grad():
        decoder.inv_freq.copy_(1.0 / (config.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)))
        for parameter in decoder.parameters():
            # Small weights keep bf16 activations in range at any depth.
            nn.init.normal_(parameter, std=0.02) if parameter.dim() > 1 else nn.init.ones_(parameter)
    return decoder.eval()


# Llama-3-8B's shape (8.0B parameters), for transpile-cost measurements (--weights none);
# defined last so that the line numbers the packages cite stay those of the layers above.
CONFIGS["8b"] = Config(
    vocab=128256, hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336,
    max_tokens=2048, max_seqs=256, max_blocks_per_seq=256, num_blocks=1024,
)
