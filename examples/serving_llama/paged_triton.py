"""serving::paged_attention on CUDA: Triton kernels over the paged cache.

Two steps, both with launch grids fixed by the inputs' shapes (so a CUDA graph can
capture them) and nothing read back to the host:

1. `_write_kv`: each token's keys and values at its slot (slot -1, padding: nothing).
2. `_attend` (+ `_combine` when the keys are split): for one sequence, one KV head and a
   block of up to BLOCK_Q of its queries (all the query heads of that KV head, BLOCK_M =
   BLOCK_Q x the group size, padded, rows of one tile), walk the sequence's blocks through
   its block-table row up to the last position those queries see, with an online softmax
   in fp32. A decode-only batch has one query block per sequence and KV head, so each
   block of the sequence's cache is read once per KV head. With few programs for the
   GPU (a few long sequences), the key range of each sequence is split into NUM_SPLITS
   parts run in parallel (flash-decoding), each writing its partial maximum, sum and
   weighted values; `_combine` merges them. The query blocks: sequence s's start at
   query_start_loc[s] // BLOCK_Q + s (vLLM's numbering), so T // BLOCK_Q + S programs
   cover any mix; a program past its sequence's queries returns at once.

Same semantics as serving_ops.paged_attention_reference (causal within the chunk,
sliding window, logit soft-capping, zero output for padded tokens), within bf16
rounding: scripts/gpu_paged_attention_check.py compares them.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv(
    k_ptr, v_ptr, key_cache_ptr, value_cache_ptr, slot_mapping_ptr,
    stride_k_token, stride_k_head, stride_v_token, stride_v_head,
    stride_cache_slot, stride_cache_head,
    HEAD_DIM: tl.constexpr, HEAD_DIM_P2: tl.constexpr,
):
    token = tl.program_id(0)
    head = tl.program_id(1)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:  # padding
        return
    dim = tl.arange(0, HEAD_DIM_P2)
    in_dim = dim < HEAD_DIM
    key = tl.load(k_ptr + token * stride_k_token + head * stride_k_head + dim, mask=in_dim)
    value = tl.load(v_ptr + token * stride_v_token + head * stride_v_head + dim, mask=in_dim)
    target = slot * stride_cache_slot + head * stride_cache_head + dim
    tl.store(key_cache_ptr + target, key.to(key_cache_ptr.dtype.element_ty), mask=in_dim)
    tl.store(value_cache_ptr + target, value.to(value_cache_ptr.dtype.element_ty), mask=in_dim)


@triton.jit
def _find_sequence(query_start_loc_ptr, q_block, num_sequences, BLOCK_Q: tl.constexpr):
    """The last sequence s whose first query block (query_start_loc[s] // BLOCK_Q + s) is
    at most q_block: a binary search over the first S offsets (vLLM's find_seq_idx)."""
    left: tl.int32 = 0
    right = num_sequences
    while left < right:
        middle = (left + right) // 2
        first_block = tl.load(query_start_loc_ptr + middle) // BLOCK_Q + middle
        if first_block <= q_block:
            left = middle + 1
        else:
            right = middle
    return left - 1


@triton.jit
def _attend(
    q_ptr, key_cache_ptr, value_cache_ptr, block_table_ptr, seq_lens_ptr, query_start_loc_ptr,
    out_ptr, partial_max_ptr, partial_sum_ptr, partial_out_ptr,
    num_sequences, num_tokens, scale, softcap, sliding_window,
    stride_q_token, stride_q_head, stride_out_token, stride_out_head,
    stride_cache_block, stride_cache_offset, stride_cache_head, stride_table_row,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_P2: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_P2: tl.constexpr, NUM_SPLITS: tl.constexpr,
    USE_SOFTCAP: tl.constexpr, USE_WINDOW: tl.constexpr, IEEE: tl.constexpr,
):
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    sequence = _find_sequence(query_start_loc_ptr, q_block, num_sequences, BLOCK_Q)
    query_start = tl.load(query_start_loc_ptr + sequence)
    q_len = tl.load(query_start_loc_ptr + sequence + 1) - query_start
    local_block = q_block - (query_start // BLOCK_Q + sequence)
    if local_block * BLOCK_Q >= q_len:  # past this sequence's queries
        return
    seq_len = tl.load(seq_lens_ptr + sequence)
    context = seq_len - q_len  # tokens cached before this chunk

    rows = tl.arange(0, BLOCK_M)
    query = local_block * BLOCK_Q + rows // GROUP_P2  # index within the chunk
    head = kv_head * GROUP + rows % GROUP_P2
    row_valid = (query < q_len) & (rows % GROUP_P2 < GROUP)
    position = context + query  # each row's position in its sequence
    dim = tl.arange(0, HEAD_DIM_P2)
    in_dim = dim < HEAD_DIM
    token = (query_start + query).to(tl.int64)
    q = tl.load(
        q_ptr + token[:, None] * stride_q_token + head[:, None] * stride_q_head + dim[None, :],
        mask=row_valid[:, None] & in_dim[None, :], other=0.0,
    )

    # Keys this block of queries may see: positions [first_key, last_key].
    last_key = context + tl.minimum(local_block * BLOCK_Q + BLOCK_Q, q_len) - 1
    first_key = 0
    if USE_WINDOW:
        first_key = tl.maximum(context + local_block * BLOCK_Q - sliding_window + 1, 0)
    first_tile = first_key // BLOCK_SIZE
    end_tile = last_key // BLOCK_SIZE + 1
    tiles_per_split = tl.cdiv(end_tile - first_tile, NUM_SPLITS)
    split_start = first_tile + split * tiles_per_split
    split_end = tl.minimum(split_start + tiles_per_split, end_tile)

    running_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_P2], dtype=tl.float32)
    offsets = tl.arange(0, BLOCK_SIZE)
    for tile in range(split_start, split_end):
        block = tl.load(block_table_ptr + sequence.to(tl.int64) * stride_table_row + tile).to(tl.int64)
        cache_offset = (
            block * stride_cache_block + offsets[:, None] * stride_cache_offset
            + kv_head * stride_cache_head + dim[None, :]
        )
        keys = tl.load(key_cache_ptr + cache_offset, mask=in_dim[None, :], other=0.0)
        values = tl.load(value_cache_ptr + cache_offset, mask=in_dim[None, :], other=0.0)
        if IEEE:
            scores = tl.dot(q, tl.trans(keys), input_precision="ieee") * scale
        else:
            scores = tl.dot(q, tl.trans(keys)) * scale
        if USE_SOFTCAP:  # softcap * tanh(scores / softcap), tanh from exp
            scores = softcap * (1.0 - 2.0 / (tl.exp(2.0 * scores / softcap) + 1.0))
        key_position = tile * BLOCK_SIZE + offsets
        visible = row_valid[:, None] & (key_position[None, :] <= position[:, None])
        if USE_WINDOW:
            visible = visible & (key_position[None, :] > position[:, None] - sliding_window)
        scores = tl.where(visible, scores, float("-inf"))
        tile_max = tl.maximum(running_max, tl.max(scores, axis=1))
        tile_max = tl.where(tile_max > float("-inf"), tile_max, 0.0)  # rows that see nothing yet
        weights = tl.exp(scores - tile_max[:, None])
        correction = tl.exp(running_max - tile_max)
        running_sum = running_sum * correction + tl.sum(weights, axis=1)
        if IEEE:
            acc = acc * correction[:, None] + tl.dot(weights, values.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * correction[:, None] + tl.dot(weights.to(values.dtype), values)
        running_max = tile_max

    store_mask = row_valid[:, None] & in_dim[None, :]
    if NUM_SPLITS == 1:
        out = acc / tl.where(running_sum > 0, running_sum, 1.0)[:, None]
        tl.store(
            out_ptr + token[:, None] * stride_out_token + head[:, None] * stride_out_head + dim[None, :],
            out.to(out_ptr.dtype.element_ty), mask=store_mask,
        )
    else:
        # Partials: [NUM_SPLITS, T, heads] (max, sum) and [NUM_SPLITS, T, heads, HEAD_DIM_P2].
        row = (split * num_tokens + token) * NUM_HEADS + head
        # A row that saw no key here keeps -inf, so _combine gives this split no weight.
        tl.store(partial_max_ptr + row, tl.where(running_sum > 0, running_max, float("-inf")), mask=row_valid)
        tl.store(partial_sum_ptr + row, running_sum, mask=row_valid)
        tl.store(partial_out_ptr + row[:, None] * HEAD_DIM_P2 + dim[None, :], acc, mask=row_valid[:, None])


@triton.jit
def _combine(
    partial_max_ptr, partial_sum_ptr, partial_out_ptr, out_ptr, query_start_loc_ptr,
    num_sequences, num_tokens, stride_out_token, stride_out_head,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_P2: tl.constexpr, NUM_SPLITS: tl.constexpr,
):
    token = tl.program_id(0)
    head = tl.program_id(1)
    dim = tl.arange(0, HEAD_DIM_P2)
    in_dim = dim < HEAD_DIM
    target = out_ptr + token.to(tl.int64) * stride_out_token + head * stride_out_head + dim
    if token >= tl.load(query_start_loc_ptr + num_sequences):  # padding: zero, as the reference
        tl.store(target, tl.zeros([HEAD_DIM_P2], dtype=tl.float32).to(out_ptr.dtype.element_ty), mask=in_dim)
        return
    splits = tl.arange(0, NUM_SPLITS)
    row = (splits * num_tokens + token) * NUM_HEADS + head
    maxima = tl.load(partial_max_ptr + row)
    sums = tl.load(partial_sum_ptr + row)
    overall = tl.max(maxima, axis=0)
    weights = tl.exp(maxima - overall)  # a split that saw nothing: max -inf, weight 0
    total = tl.sum(sums * weights, axis=0)
    outs = tl.load(partial_out_ptr + row[:, None] * HEAD_DIM_P2 + dim[None, :])
    out = tl.sum(outs * weights[:, None], axis=0) / total
    tl.store(target, out.to(out_ptr.dtype.element_ty), mask=in_dim)


_SM_COUNT = {}


def _sm_count(device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def launch_shape(tokens, sequences, heads, kv_heads, max_keys, block_size, sm_count):
    """(BLOCK_Q, BLOCK_M, GROUP_P2, number of query blocks, NUM_SPLITS), from shapes only."""
    group = heads // kv_heads
    group_p2 = triton.next_power_of_2(group)
    block_m = max(16, group_p2)
    block_q = block_m // group_p2
    q_blocks = tokens // block_q + sequences
    programs = q_blocks * kv_heads
    # Split the keys when the programs would leave most of the GPU idle and there are keys
    # enough to share (at least 4 blocks a split); a power of two for _combine's arange.
    splits = 1
    while splits < 16 and programs * splits * 2 <= 2 * sm_count and max_keys // (splits * 2) >= 4 * block_size:
        splits *= 2
    return block_q, block_m, group_p2, q_blocks, splits


def paged_attention(q, k, v, kv_cache, slot_mapping, block_table, seq_lens, query_start_loc, layer, scale,
                    sliding_window=-1, softcap=0.0):
    _, _, num_blocks, block_size, kv_heads, head_dim = kv_cache.shape
    tokens, heads, _ = q.shape
    sequences, max_blocks = block_table.shape
    key_cache, value_cache = kv_cache[layer, 0], kv_cache[layer, 1]  # [blocks, block_size, kv_heads, dim]
    head_dim_p2 = max(16, triton.next_power_of_2(head_dim))  # tl.dot needs 16 or more
    k = k if k.stride(2) == 1 else k.contiguous()
    v = v if v.stride(2) == 1 else v.contiguous()
    if tokens:
        _write_kv[(tokens, kv_heads)](
            k, v, key_cache, value_cache, slot_mapping,
            k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            key_cache.stride(1), key_cache.stride(2),
            HEAD_DIM=head_dim, HEAD_DIM_P2=head_dim_p2,
        )
    out = torch.empty_like(q)
    if tokens == 0:
        return out
    q = q.contiguous() if q.stride(2) != 1 else q
    block_q, block_m, group_p2, q_blocks, splits = launch_shape(
        tokens, sequences, heads, kv_heads, max_blocks * block_size, block_size, _sm_count(q.device)
    )
    if splits == 1:
        out.zero_()  # padded tokens get no program; the reference gives them zeros
        partial_max = partial_sum = partial_out = out  # unused
    else:
        partial_max = torch.empty(splits, tokens, heads, dtype=torch.float32, device=q.device)
        partial_sum = torch.empty_like(partial_max)
        partial_out = torch.empty(splits, tokens, heads, head_dim_p2, dtype=torch.float32, device=q.device)
    _attend[(q_blocks, kv_heads, splits)](
        q, key_cache, value_cache, block_table, seq_lens, query_start_loc,
        out, partial_max, partial_sum, partial_out,
        sequences, tokens, float(scale), float(softcap), int(sliding_window),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2), block_table.stride(0),
        NUM_HEADS=heads, GROUP=heads // kv_heads, GROUP_P2=group_p2,
        BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_SIZE=block_size,
        HEAD_DIM=head_dim, HEAD_DIM_P2=head_dim_p2, NUM_SPLITS=splits,
        USE_SOFTCAP=softcap > 0, USE_WINDOW=sliding_window > 0, IEEE=q.dtype == torch.float32,
    )
    if splits > 1:
        _combine[(tokens, heads)](
            partial_max, partial_sum, partial_out, out, query_start_loc,
            sequences, tokens, out.stride(0), out.stride(1),
            NUM_HEADS=heads, HEAD_DIM=head_dim, HEAD_DIM_P2=head_dim_p2, NUM_SPLITS=splits,
        )
    return out
