"""Defines the custom op `mylib::attn`: causal scaled-dot-product attention.

Registered the production way, torch.library define + impl (as vLLM's
direct_register_custom_op does): calling it imports nothing beyond torch, where an op
made with torch.library.custom_op imports torch._dynamo on its first call. The fake
implementation only describes the output's shape and dtype, which is all torch.export
needs.
"""

import math

import torch

_LIB = torch.library.Library("mylib", "DEF")  # noqa: TOR901 (define + impl on purpose)
_LIB.define("attn(Tensor q, Tensor k, Tensor v) -> Tensor")


def attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention. q, k, v: [batch, heads, seq, head_dim] -> same shape as q."""
    seq_q, seq_k = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    # Mask out future positions (upper triangle, aligned to the last query).
    mask = torch.ones(seq_q, seq_k, dtype=torch.bool, device=q.device).tril(diagonal=seq_k - seq_q)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _attn_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Output has q's leading dims and v's last dim.
    return q.new_empty(q.shape[:-1] + v.shape[-1:])


_LIB.impl("attn", attn, "CompositeExplicitAutograd")
_LIB._register_fake("attn", _attn_fake)
