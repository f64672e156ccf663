"""The serving ops, registered the production way (torch.library define + impl, as vLLM's
direct_register_custom_op does), so calling them imports nothing beyond torch: an op made
with torch.library.custom_op would import torch._dynamo on its first call.

`serving::paged_attention` (the serving example's): a flattened batch of sequences over a
paged KV cache, vLLM's layout (below). An exact reference implementation for every device
(CompositeExplicitAutograd), which checks the metadata before writing anything; on CUDA
the Triton kernels of paged_triton.py, which skip the host-side checks unless
SERVING_OPS_CHECK=1 (the checks read the metadata back, which CUDA graphs cannot).

`serving::attention` (the tensor-parallel example's, examples/llama_tp): attention over a
cache that holds one sequence: slot i keeps the keys and values of the token at position
i, and the last slot is scratch. The model computes, once per forward, the slots to write
(padding, slot -1, mapped to the scratch slot, which no token reads) and the mask of cache
slots each token may attend to; each layer's call only writes and attends.
"""

import os

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


# ---------------------------------------------------------------------------------------
# serving::paged_attention: a flattened batch of sequences over a paged cache (vLLM's layout)
# ---------------------------------------------------------------------------------------
#
# kv_cache: [layers, 2 (keys, values), num_blocks, BLOCK_SIZE, kv_heads, head_dim]. Token t
# of the flattened batch writes its keys and values at flat slot slot_mapping[t] (block
# slot // BLOCK_SIZE, offset slot % BLOCK_SIZE) of its layer; slot -1 marks a padded token,
# which writes nothing (no scratch slot). Sequence s owns the tokens
# query_start_loc[s]:query_start_loc[s + 1]; after the write it holds seq_lens[s] tokens, in
# the blocks block_table[s, :ceil(seq_lens[s] / BLOCK_SIZE)], and its query i of q_len sits
# at position seq_lens[s] - q_len + i (causal within the chunk). Tokens past
# query_start_loc[S] are padding: their output is zero. A padded sequence has seq_len 0 and
# q_len 0.

BLOCK_SIZE = 16

_LIB.define(
    "paged_attention(Tensor q, Tensor k, Tensor v, Tensor(a!) kv_cache, Tensor slot_mapping, Tensor block_table, "
    "Tensor seq_lens, Tensor query_start_loc, int layer, float scale, int sliding_window=-1, float softcap=0.0) -> Tensor"
)


def new_kv_cache(num_blocks, dtype=torch.float32, device="cpu", *, layers, kv_heads, head_dim, block_size=BLOCK_SIZE):
    """An empty paged cache: [layers, 2, num_blocks, block_size, kv_heads, head_dim]."""
    return torch.zeros(layers, 2, num_blocks, block_size, kv_heads, head_dim, dtype=dtype, device=device)


class PagedMetadataError(ValueError):
    """Bad serving metadata: raised before anything is written to the cache."""


def check_paged_inputs(q, k, v, kv_cache, slot_mapping, block_table, seq_lens, query_start_loc, layer):
    """Every rule the kernels rely on, checked on the host (this syncs with the device).
    Raises PagedMetadataError, one line naming what is wrong, before any write."""

    def fail(message):
        raise PagedMetadataError(f"serving::paged_attention: {message}")

    if kv_cache.dim() != 6 or kv_cache.shape[1] != 2:
        fail(f"kv_cache has shape {tuple(kv_cache.shape)}; expected [layers, 2, blocks, block_size, kv_heads, head_dim]")
    layers, _, num_blocks, block_size, kv_heads, head_dim = kv_cache.shape
    tokens = q.shape[0]
    if q.dim() != 3 or q.shape[2] != head_dim or q.shape[1] % kv_heads:
        fail(f"q has shape {tuple(q.shape)}; expected [tokens, a multiple of {kv_heads} heads, {head_dim}]")
    for name, tensor in (("k", k), ("v", v)):
        if tuple(tensor.shape) != (tokens, kv_heads, head_dim):
            fail(f"{name} has shape {tuple(tensor.shape)}; expected [{tokens}, {kv_heads}, {head_dim}] (the cache's kv_heads, head_dim)")
    if not 0 <= layer < layers:
        fail(f"layer {layer} is outside the cache's {layers} layers")
    if slot_mapping.shape != (tokens,):
        fail(f"slot_mapping has shape {tuple(slot_mapping.shape)} for {tokens} tokens; pass one slot per token")
    if block_table.dim() != 2:
        fail(f"block_table has shape {tuple(block_table.shape)}; expected [sequences, max_blocks]")
    sequences, max_blocks = block_table.shape
    if seq_lens.shape != (sequences,):
        fail(f"seq_lens has shape {tuple(seq_lens.shape)} for {sequences} block-table rows; pass one length per sequence")
    if query_start_loc.shape != (sequences + 1,):
        fail(f"query_start_loc has shape {tuple(query_start_loc.shape)} for {sequences} sequences; pass sequences + 1 offsets")
    if _metadata_consistent(slot_mapping, block_table, seq_lens, query_start_loc, num_blocks, block_size):
        return  # the common case: one host sync; the loop below only finds what is wrong, to say it
    starts, lens, table, slots = (t.tolist() for t in (query_start_loc, seq_lens, block_table, slot_mapping))
    if starts[0] != 0 or any(b < a for a, b in zip(starts, starts[1:])) or starts[-1] > tokens:
        fail(f"query_start_loc {starts} must start at 0, never decrease, and end at most at {tokens} tokens")
    for s in range(sequences):
        q_len, seq_len = starts[s + 1] - starts[s], lens[s]
        if seq_len < q_len:
            fail(f"sequence {s} has {q_len} new tokens but seq_len {seq_len}; seq_len counts them too")
        if seq_len > max_blocks * block_size:
            fail(f"sequence {s} has length {seq_len}, longer than its {max_blocks} blocks of {block_size}; give it more blocks")
        used = table[s][: -(-seq_len // block_size)]
        past = [b for b in used if not 0 <= b < num_blocks]
        if past:
            fail(f"block_table row {s} points to block {past[0]}, outside the cache's {num_blocks} blocks")
        for i in range(q_len):
            position = seq_len - q_len + i
            expected = used[position // block_size] * block_size + position % block_size
            if slots[starts[s] + i] != expected:
                fail(
                    f"slot_mapping[{starts[s] + i}] is {slots[starts[s] + i]}, but sequence {s}'s block table puts "
                    f"position {position} at slot {expected}"
                )
    written = [slot for slot in slots[: starts[-1]]]
    if len(set(written)) != len(written):
        twice = next(slot for slot in written if written.count(slot) > 1)
        fail(f"slot {twice} is written by two tokens; each token needs its own slot (do two block-table rows share a block?)")
    padded = [t for t in range(starts[-1], tokens) if slots[t] != -1]
    if padded:
        fail(f"token {padded[0]} is padding (past query_start_loc[-1] = {starts[-1]}) but its slot is {slots[padded[0]]}, not -1")
    fail("the metadata disagree with each other in a way no rule above names; rebuild them with one block table")


def _metadata_consistent(slot_mapping, block_table, seq_lens, query_start_loc, num_blocks, block_size) -> bool:
    """Every rule of check_paged_inputs on the metadata, as tensor ops and one sync."""
    tokens = slot_mapping.shape[0]
    sequences, max_blocks = block_table.shape
    q_lens = query_start_loc[1:] - query_start_loc[:-1]
    total = query_start_loc[-1]
    ok = (query_start_loc[0] == 0) & (q_lens >= 0).all() & (total <= tokens)
    ok &= (seq_lens >= q_lens).all() & (seq_lens <= max_blocks * block_size).all()
    used = torch.arange(max_blocks, device=block_table.device)[None, :] < (seq_lens[:, None] + block_size - 1) // block_size
    ok &= ((block_table >= 0) & (block_table < num_blocks) | ~used).all()
    token = torch.arange(tokens, device=slot_mapping.device)
    real = token < total
    sequence = torch.searchsorted(query_start_loc[1:].contiguous(), token, right=True).clamp(max=sequences - 1)
    position = (seq_lens[sequence] - q_lens[sequence] + token - query_start_loc[sequence]).clamp(0, max_blocks * block_size - 1)
    block = block_table[sequence, position // block_size]
    expected = torch.where(real, block * block_size + position % block_size, -1)
    ok &= (slot_mapping == expected).all()
    written = torch.where(real, slot_mapping, -2 - token).sort().values  # padding: distinct negatives
    ok &= (written[1:] != written[:-1]).all()
    return bool(ok)


def write_kv(k, v, kv_cache, slot_mapping, layer):
    """Each token's keys and values at its slot; slot -1 (padding) writes nothing."""
    layers, _, num_blocks, block_size, kv_heads, head_dim = kv_cache.shape
    flat = kv_cache[layer].view(2, num_blocks * block_size, kv_heads, head_dim)
    written = slot_mapping >= 0
    slots = slot_mapping[written]
    flat[0].index_copy_(0, slots, k[written])
    flat[1].index_copy_(0, slots, v[written])


def paged_attention_reference(q, k, v, kv_cache, slot_mapping, block_table, seq_lens, query_start_loc, layer, scale,
                              sliding_window=-1, softcap=0.0):
    """The exact reference: checks the inputs, writes k and v, then attends for each token
    over its sequence's keys at positions up to its own (and within the sliding window),
    in fp32, gathering each sequence's blocks through its block-table row."""
    check_paged_inputs(q, k, v, kv_cache, slot_mapping, block_table, seq_lens, query_start_loc, layer)
    write_kv(k, v, kv_cache, slot_mapping, layer)
    return _attend(q, kv_cache, block_table, seq_lens, query_start_loc, layer, scale, sliding_window, softcap)


def _attend(q, kv_cache, block_table, seq_lens, query_start_loc, layer, scale, sliding_window, softcap):
    _, _, num_blocks, block_size, kv_heads, head_dim = kv_cache.shape
    tokens, heads, _ = q.shape
    sequences, max_blocks = block_table.shape
    token = torch.arange(tokens, device=q.device)
    # The sequence each token belongs to; tokens past query_start_loc[-1] are padding.
    sequence = torch.searchsorted(query_start_loc[1:].contiguous(), token, right=True)
    real = sequence < sequences
    sequence = sequence.clamp(max=sequences - 1)
    q_len = (query_start_loc[1:] - query_start_loc[:-1])[sequence]
    position = seq_lens[sequence] - q_len + (token - query_start_loc[sequence])
    # [S, max_blocks * block_size, kv_heads, head_dim]: each sequence's cache in position order
    # (rows past its blocks are masked below; the clamp only keeps the gather in bounds).
    blocks = block_table.clamp(0, num_blocks - 1)
    keys = kv_cache[layer, 0][blocks].flatten(1, 2)[sequence].float()  # [T, L, kv_heads, dim]
    values = kv_cache[layer, 1][blocks].flatten(1, 2)[sequence].float()
    group = heads // kv_heads
    queries = q.float().view(tokens, kv_heads, group, head_dim)
    scores = torch.einsum("tkgd,tlkd->tkgl", queries, keys) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    key_position = torch.arange(max_blocks * block_size, device=q.device)
    visible = key_position[None, :] <= position[:, None]
    if sliding_window > 0:
        visible = visible & (key_position[None, :] > position[:, None] - sliding_window)
    visible = visible & real[:, None]
    visible = visible | ~real[:, None]  # padding rows attend to anything (finite), then are zeroed
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    out = torch.einsum("tkgl,tlkd->tkgd", scores.softmax(-1), values)
    out = torch.where(real[:, None, None, None], out, 0.0)
    return out.reshape(tokens, heads, head_dim).to(q.dtype)


def _paged_attention_fake(q, k, v, kv_cache, slot_mapping, block_table, seq_lens, query_start_loc, layer, scale,
                          sliding_window=-1, softcap=0.0):
    return torch.empty_like(q)


_LIB.impl("paged_attention", paged_attention_reference, "CompositeExplicitAutograd")
_LIB._register_fake("paged_attention", _paged_attention_fake)
# On CUDA: the Triton kernels (paged_triton.py), imported on the first call so that
# importing this module needs no Triton. Their host checks are off unless SERVING_OPS_CHECK=1.
CHECK_ON_CUDA = os.environ.get("SERVING_OPS_CHECK") == "1"


def _paged_attention_cuda(q, k, v, kv_cache, slot_mapping, block_table, seq_lens, query_start_loc, layer, scale,
                          sliding_window=-1, softcap=0.0):
    import paged_triton

    if CHECK_ON_CUDA:
        check_paged_inputs(q, k, v, kv_cache, slot_mapping, block_table, seq_lens, query_start_loc, layer)
    return paged_triton.paged_attention(
        q, k, v, kv_cache, slot_mapping, block_table, seq_lens, query_start_loc, layer, scale, sliding_window, softcap
    )


_LIB.impl("paged_attention", _paged_attention_cuda, "CUDA")
