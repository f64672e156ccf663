"""`serving::attention`: attention over a KV cache that it writes in place.

Registered the production way (torch.library define + impl, as vLLM's
direct_register_custom_op does), so calling it imports nothing beyond torch: an op
made with torch.library.custom_op would import torch._dynamo on its first call.

The cache holds one sequence: slot i keeps the keys and values of the token at
position i, and the last slot is scratch. The model computes, once per forward, the
slots to write (padding, slot -1, mapped to the scratch slot, which no token reads) and
the mask of cache slots each token may attend to; each layer's call only writes and
attends. Everything has fixed shapes and nothing syncs with the host, so the op can be
captured in a CUDA graph.
"""

import torch
import torch.nn.functional as F

_LIB = torch.library.Library("serving", "DEF")  # noqa: TOR901 (define + impl on purpose)
_LIB.define(
    "attention(Tensor q, Tensor k, Tensor v, Tensor(a!) kv_cache, Tensor slots, Tensor visible, int layer) -> Tensor"
)


def cache_slots_and_mask(slot_mapping, positions, num_slots):
    """Once per forward: where each token writes (slot -1 -> the scratch slot, the last) and
    which cache slots each token attends to ([T, slots] bool: its position and earlier)."""
    scratch = num_slots - 1
    slots = torch.where(slot_mapping < 0, scratch, slot_mapping)
    slot_index = torch.arange(num_slots, device=positions.device)
    visible = (slot_index[None, :] <= positions[:, None]) & (slot_index[None, :] != scratch)
    return slots, visible


def attention(q, k, v, kv_cache, slots, visible, layer):
    """q: [T, heads, dim]; k, v: [T, kv_heads, dim]; kv_cache: [layers, 2, slots, kv_heads, dim];
    slots: [T] cache slot of each token; visible: [T, slots]. Writes k, v, then attends."""
    kv_cache[layer, 0].index_copy_(0, slots, k)
    kv_cache[layer, 1].index_copy_(0, slots, v)
    keys = kv_cache[layer, 0].transpose(0, 1).unsqueeze(0)  # [1, kv_heads, slots, dim]
    values = kv_cache[layer, 1].transpose(0, 1).unsqueeze(0)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), keys, values, attn_mask=visible, enable_gqa=True
    )
    return out.squeeze(0).transpose(0, 1).contiguous()


def _attention_fake(q, k, v, kv_cache, slots, visible, layer):
    return torch.empty_like(q)


_LIB.impl("attention", attention, "CompositeExplicitAutograd")
_LIB._register_fake("attention", _attention_fake)
