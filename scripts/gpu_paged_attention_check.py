"""serving::paged_attention's Triton kernels against the exact reference, on a GPU.

    python scripts/gpu_paged_attention_check.py            # checks, then timings
    python scripts/gpu_paged_attention_check.py --no-time  # checks only
    python scripts/gpu_paged_attention_check.py --dry-run  # CPU: small batches through the reference op

Checks (exit 1 on the first mismatch, naming the case): mixed batches of prefill chunks,
decodes, padded tokens (slot -1) and padded sequences (seq_len 0), at bf16 and fp32,
GQA groups 1, 4 and 8, head dims 64 and 128, sliding windows and soft-capping, few long
sequences (the split-KV path) and many short ones; the cache after the write must equal
the reference's exactly, and the output must be within bf16 rounding of the reference
computed in fp32 from the same inputs. Then a CUDA graph captured on one padded batch
is replayed on other metadata. Timings: decode steps of the 1.1B serving decoder's
attention (32 heads, 8 KV heads, dim 128, 16 layers' worth of one layer's call) at 1, 8,
32 and 128 sequences over 512 and 2048 cached tokens: microseconds per call, median
(min-max) of 50, and the bandwidth the cache read reaches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples", "serving_llama"))
import serving_ops  # noqa: E402

BLOCK = serving_ops.BLOCK_SIZE
# "cpu" with --dry-run: the batches are built and checked by the reference op (no Triton).
DEVICE = "cuda"


def make_batch(chunks, heads, kv_heads, head_dim, dtype, num_blocks, max_blocks, pad_tokens=0, pad_seqs=0, seed=0):
    """chunks: (cached tokens before, new tokens) per sequence. Random blocks, distinct per sequence."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_blocks, generator=generator).tolist()
    table, slots, lens, starts = [], [], [], [0]
    for cached, new in chunks:
        length = cached + new
        blocks = [order.pop() for _ in range(-(-length // BLOCK))]
        table.append(blocks + [-1] * (max_blocks - len(blocks)))
        slots += [blocks[p // BLOCK] * BLOCK + p % BLOCK for p in range(cached, length)]
        lens.append(length)
        starts.append(starts[-1] + new)
    for _ in range(pad_seqs):  # padded sequences: nothing to read, nothing to write
        table.append([-1] * max_blocks)
        lens.append(0)
        starts.append(starts[-1])
    slots += [-1] * pad_tokens
    tokens = len(slots)
    device = DEVICE
    cache = torch.randn(2, 2, num_blocks, BLOCK, kv_heads, head_dim, generator=generator).to(device, dtype)
    q = torch.randn(tokens, heads, head_dim, generator=generator).to(device, dtype)
    k = torch.randn(tokens, kv_heads, head_dim, generator=generator).to(device, dtype)
    v = torch.randn(tokens, kv_heads, head_dim, generator=generator).to(device, dtype)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.int64, device=device)  # noqa: E731
    metadata = (as_tensor(slots), as_tensor(table), as_tensor(lens), as_tensor(starts))
    return q, k, v, cache, metadata


def check_case(name, chunks, heads, kv_heads, head_dim, dtype, window=-1, softcap=0.0, pad_tokens=0, pad_seqs=0):
    max_blocks = max(-(-(c + n) // BLOCK) for c, n in chunks) + 1
    num_blocks = sum(-(-(c + n) // BLOCK) for c, n in chunks) + 4
    q, k, v, cache, metadata = make_batch(
        chunks, heads, kv_heads, head_dim, dtype, num_blocks, max_blocks, pad_tokens, pad_seqs
    )
    scale = head_dim**-0.5
    layer = 1
    expected_cache = cache.clone()
    serving_ops.check_paged_inputs(q, k, v, expected_cache, *metadata, layer)
    serving_ops.write_kv(k, v, expected_cache, metadata[0], layer)
    # The reference in fp32 from the same (rounded) inputs.
    expected = serving_ops._attend(q.float(), expected_cache.float(), *metadata[1:], layer, scale, window, softcap)
    actual_cache = cache.clone()
    actual = torch.ops.serving.paged_attention(q, k, v, actual_cache, *metadata, layer, scale, window, softcap)
    if DEVICE == "cpu":
        print(f"ok   {name} (dry run: the reference op on the CPU)")
        return
    torch.cuda.synchronize()
    if not torch.equal(actual_cache, expected_cache):
        raise SystemExit(f"FAIL {name}: the cache after the write differs from the reference's")
    tolerance = 2e-2 if dtype == torch.bfloat16 else 2e-5
    error = (actual.float() - expected).abs().max().item()
    scale_of = expected.abs().max().item()
    if not error <= tolerance * max(1.0, scale_of):
        raise SystemExit(f"FAIL {name}: max error {error:.3g} (outputs up to {scale_of:.3g}), tolerance {tolerance}")
    import paged_triton

    splits = paged_triton.launch_shape(
        q.shape[0], len(chunks) + pad_seqs, heads, kv_heads, max_blocks * BLOCK, BLOCK, paged_triton._sm_count(q.device)
    )[-1]
    print(f"ok   {name}: max error {error:.2e}, {splits} split(s)")


def checks():
    bf16, fp32 = torch.bfloat16, torch.float32
    mixed = [(0, 37), (100, 1), (15, 1), (16, 1), (0, 1), (300, 24), (31, 2), (1000, 1)]
    for dtype in (bf16, fp32):
        tag = "bf16" if dtype == bf16 else "fp32"
        check_case(f"{tag} mixed prefill+decode, GQA 4, dim 128", mixed, 32, 8, 128, dtype)
        check_case(
            f"{tag} mixed + 5 padded tokens + 3 padded sequences", mixed, 32, 8, 128, dtype, pad_tokens=5, pad_seqs=3
        )
        check_case(f"{tag} decode only, 128 sequences", [(i * 7 % 300, 1) for i in range(128)], 32, 8, 128, dtype)
        check_case(f"{tag} decode, 2 long sequences (split-KV)", [(4000, 1), (2500, 1)], 32, 8, 128, dtype)
        check_case(f"{tag} one long prefill chunk after a cached prefix", [(700, 200)], 32, 8, 128, dtype)
        check_case(f"{tag} MHA (group 1), dim 64", mixed, 8, 8, 64, dtype)
        check_case(f"{tag} group 8, dim 64", mixed, 16, 2, 64, dtype)
        check_case(f"{tag} sliding window 64", mixed, 32, 8, 128, dtype, window=64)
        check_case(f"{tag} sliding window 64, split-KV", [(4000, 1), (3000, 3)], 32, 8, 128, dtype, window=64)
        check_case(f"{tag} soft-capping 50", mixed, 32, 8, 128, dtype, softcap=50.0)
        check_case(f"{tag} head dim 96 (padded to 128)", mixed, 8, 4, 96, dtype)
    graph_check()


def graph_check():
    """Capture one call on a padded batch; replay it on new metadata of the same shapes."""
    chunks_a = [(10, 1), (40, 1), (0, 3)]
    chunks_b = [(70, 1), (3, 1), (20, 3)]  # same T (5 + 3 padding), same S
    heads, kv_heads, dim, dtype = 32, 8, 128, torch.bfloat16
    q, k, v, cache, metadata = make_batch(chunks_a, heads, kv_heads, dim, dtype, 64, 8, pad_tokens=3, seed=1)
    static = [t.clone() for t in (q, k, v, *metadata)]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.ops.serving.paged_attention(*static[:3], cache, *static[3:], 0, dim**-0.5)  # warm-up (compiles)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.serving.paged_attention(*static[:3], cache, *static[3:], 0, dim**-0.5)
    q2, k2, v2, cache2, metadata2 = make_batch(chunks_b, heads, kv_heads, dim, dtype, 64, 8, pad_tokens=3, seed=2)
    cache.copy_(cache2)
    for target, source in zip(static, (q2, k2, v2, *metadata2)):
        target.copy_(source)
    expected_cache = cache2.clone()
    expected = serving_ops.paged_attention_reference(
        q2.float(), k2.float(), v2.float(), expected_cache.float(), *metadata2, 0, dim**-0.5
    )
    graph.replay()
    torch.cuda.synchronize()
    error = (out.float() - expected).abs().max().item()
    if not error <= 2e-2 * max(1.0, expected.abs().max().item()):
        raise SystemExit(f"FAIL CUDA graph replay on new metadata: max error {error:.3g}")
    print(f"ok   CUDA graph captured on one batch, replayed on another: max error {error:.2e}")


def timings():
    heads, kv_heads, dim, dtype = 32, 8, 128, torch.bfloat16
    print("\ndecode attention, one layer's call (H=32, KV=8, D=128, bf16): us per call, median (min-max) of 50")
    print("| sequences | cached tokens | us | KV read GB/s |")
    print("| --- | --- | --- | --- |")
    for context in (512, 2048):
        for sequences in (1, 8, 32, 128):
            chunks = [(context - 1, 1)] * sequences
            max_blocks = -(-context // BLOCK)
            q, k, v, cache, metadata = make_batch(
                chunks, heads, kv_heads, dim, dtype, sequences * max_blocks + 1, max_blocks
            )
            call = lambda: torch.ops.serving.paged_attention(q, k, v, cache, *metadata, 0, dim**-0.5)  # noqa: E731
            for _ in range(5):
                call()
            times = []
            for _ in range(50):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1000)
            median = statistics.median(times)
            read = sequences * context * kv_heads * dim * 2 * 2  # keys and values, 2 bytes
            print(
                f"| {sequences} | {context} | {median:.1f} ({min(times):.1f}-{max(times):.1f}) | {read / median / 1e3:.0f} |"
            )


def dry_run():
    """Small batches of every kind (padded tokens and sequences included) on the CPU."""
    global DEVICE
    DEVICE = "cpu"
    mixed = [(0, 37), (100, 1), (15, 1), (16, 1), (0, 1), (31, 2)]
    for dtype, tag in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        check_case(
            f"{tag} mixed + 5 padded tokens + 3 padded sequences", mixed, 32, 8, 128, dtype, pad_tokens=5, pad_seqs=3
        )
        check_case(f"{tag} sliding window 64, soft-capping 50", mixed, 16, 2, 64, dtype, window=64, softcap=50.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-time", action="store_true", help="checks only")
    parser.add_argument("--dry-run", action="store_true", help="CPU: small batches through the reference op")
    args = parser.parse_args()
    if args.dry_run:
        dry_run()
        return
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    checks()
    if not args.no_time:
        timings()


if __name__ == "__main__":
    main()
