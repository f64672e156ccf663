"""A one-layer attention block that calls the custom op torch.ops.mylib.attn.

`split_ops` tells the transpiler to treat mylib::attn as a split point.
"""

import os
import sys

import torch
from torch import nn

# Make sure attention_ops (next to this file) is importable however we are loaded.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attention_ops  # noqa: E402,F401  (registers mylib::attn)

HIDDEN = 32
NUM_HEADS = 2
HEAD_DIM = HIDDEN // NUM_HEADS  # 16


class AttentionBlock(nn.Module):
    """Pre-norm attention with a residual, then a small MLP with a residual."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(HIDDEN)
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.out = nn.Linear(HIDDEN, HIDDEN)
        self.mlp_norm = nn.LayerNorm(HIDDEN)
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, 4 * HIDDEN), nn.GELU(), nn.Linear(4 * HIDDEN, HIDDEN))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, seq, 3, NUM_HEADS, HEAD_DIM)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, seq, head_dim]
        attn = torch.ops.mylib.attn(q, k, v)
        attn = attn.transpose(1, 2).reshape(batch, seq, HIDDEN)
        x = x + self.out(attn)
        return x + self.mlp(self.mlp_norm(x))


torch.manual_seed(0)
model = AttentionBlock().eval()

# x: float32 [batch=1, seq=8, hidden=32]
example_inputs = (torch.randn(1, 8, HIDDEN, generator=torch.Generator().manual_seed(0)),)

# The sequence dimension (dim 1) is dynamic.
dynamic_shapes = ({1: torch.export.Dim("seq", min=1, max=64)},)

split_ops = ["mylib::attn"]
