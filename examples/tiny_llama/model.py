"""A tiny Llama-style decoder written with plain torch.nn.

forward(input_ids, positions) -> logits

Architecture: token embedding, N decoder layers (RMSNorm -> q/k/v/o projections
with rotary position embedding -> causal SDPA -> residual; RMSNorm -> SwiGLU MLP
-> residual), final RMSNorm and lm_head.

The module-level `model` has TINY_LLAMA_LAYERS layers (default 2), so benchmarks
can transpile deeper variants of this same file; `build(num_layers)` builds any
depth directly.
"""

import os

import torch
import torch.nn.functional as F
from torch import nn

VOCAB_SIZE = 128
HIDDEN_SIZE = 64
NUM_HEADS = 4
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS  # 16
INTERMEDIATE_SIZE = 128
ROPE_THETA = 10000.0
RMS_EPS = 1e-6


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = RMS_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(variance + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Computes cos/sin tables for the given integer positions."""

    def __init__(self, head_dim: int, theta: float = ROPE_THETA):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor):
        # positions: [batch, seq] int64 -> freqs: [batch, seq, head_dim / 2]
        freqs = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)  # [batch, seq, head_dim]
        # Add a head axis so they broadcast against [batch, heads, seq, head_dim].
        return emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(HIDDEN_SIZE, NUM_HEADS * HEAD_DIM, bias=False)
        self.k_proj = nn.Linear(HIDDEN_SIZE, NUM_HEADS * HEAD_DIM, bias=False)
        self.v_proj = nn.Linear(HIDDEN_SIZE, NUM_HEADS * HEAD_DIM, bias=False)
        self.o_proj = nn.Linear(NUM_HEADS * HEAD_DIM, HIDDEN_SIZE, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        # [batch, seq, hidden] -> [batch, heads, seq, head_dim]
        q = self.q_proj(x).view(batch, seq, NUM_HEADS, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, NUM_HEADS, HEAD_DIM).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, NUM_HEADS, HEAD_DIM).transpose(1, 2)
        # Rotary position embedding on queries and keys.
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = out.transpose(1, 2).reshape(batch, seq, NUM_HEADS * HEAD_DIM)
        return self.o_proj(out)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self):
        super().__init__()
        self.gate_proj = nn.Linear(HIDDEN_SIZE, INTERMEDIATE_SIZE, bias=False)
        self.up_proj = nn.Linear(HIDDEN_SIZE, INTERMEDIATE_SIZE, bias=False)
        self.down_proj = nn.Linear(INTERMEDIATE_SIZE, HIDDEN_SIZE, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm = RMSNorm(HIDDEN_SIZE)
        self.self_attn = Attention()
        self.post_attention_layernorm = RMSNorm(HIDDEN_SIZE)
        self.mlp = MLP()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class TinyLlama(nn.Module):
    def __init__(self, num_layers: int = 2):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB_SIZE, HIDDEN_SIZE)
        self.rotary = RotaryEmbedding(HEAD_DIM)
        self.layers = nn.ModuleList(DecoderLayer() for _ in range(num_layers))
        self.norm = RMSNorm(HIDDEN_SIZE)
        self.lm_head = nn.Linear(HIDDEN_SIZE, VOCAB_SIZE, bias=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(positions)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def build(num_layers: int) -> TinyLlama:
    """Build a deterministic (seed 0) eval-mode model with `num_layers` layers."""
    torch.manual_seed(0)
    return TinyLlama(num_layers).eval()


model = build(int(os.environ.get("TINY_LLAMA_LAYERS", "2")))

# input_ids and positions: int64 [1, 8]; positions are 0..7.
example_inputs = (
    torch.randint(0, VOCAB_SIZE, (1, 8), generator=torch.Generator().manual_seed(0)),
    torch.arange(8, dtype=torch.int64).unsqueeze(0),
)

# The token dimension (dim 1) is dynamic and shared by both inputs.
tokens = torch.export.Dim("tokens", min=1, max=256)
dynamic_shapes = (
    {1: tokens},
    {1: tokens},
)
