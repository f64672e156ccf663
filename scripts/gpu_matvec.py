#!/usr/bin/env python3
"""One-row matrix products of the 1.1B decoder on the GPU: cuBLAS against the CUDA target's
`--matvec reduction` (transpiler/targets/matvec.py: the product as a reduction Inductor
generates and fuses), compiled with the target's own Inductor settings, beside the
copy-bandwidth floor of the bytes each reads.

    bash scripts/gpu-run.sh scripts/gpu_matvec.py
    python scripts/gpu_matvec.py SCRATCH --dry-run   # CPU: the cases, run eagerly, tiny shapes

Cases: each weight shape of the decoder (q/o, k/v, gate/up, down, lm_head) at one row;
the MLP block at one row (norm, gate, up, SiLU-times-up, down, residual) as one compiled
function; cuBLAS alone at 2-64 rows (for the range variants, which keep it). Each time is
per call, from a CUDA graph replaying the call over enough weight copies that they do not
fit in L2 (so weights come from HBM as in a real step); medians with min-max over replays.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from harness import copy_bandwidth, format_ratio, markdown_table

# (name, N, K) for y[1, N] = x[1, K] @ w[N, K].T
SHAPES = (
    ("q/o", 2048, 2048),
    ("k/v", 512, 2048),
    ("gate/up", 8192, 2048),
    ("down", 2048, 8192),
    ("lm_head", 32000, 2048),
)
TINY_SHAPES = (("q/o", 64, 64), ("gate/up", 256, 64), ("down", 64, 256))
ROWS = (1, 2, 4, 8, 16, 32, 64)
HIDDEN, FFN = 2048, 8192
L2_DEFEAT_BYTES = 512 << 20  # weight copies cycled per replay: more than any GPU's L2


def floor_us(nbytes: int, bandwidth: float) -> float:
    """Microseconds to read `nbytes` at `bandwidth` bytes/s (the copy bandwidth counts bytes read + written)."""
    return nbytes / bandwidth * 1e6


def copies_for(nbytes: int) -> int:
    """How many copies of `nbytes` of weights to cycle so that they do not stay in L2."""
    return max(2, -(-L2_DEFEAT_BYTES // max(nbytes, 1)))


def relative_error(out, ref) -> float:
    """max |out - ref| over max |ref| (bf16 outputs are compared at their own scale)."""
    scale = ref.float().abs().max().item() or 1.0
    return (out.float() - ref.float()).abs().max().item() / scale


def mlp_block(x, norm_weight, gate, up, down):
    """The decoder's MLP half: RMSNorm, gate and up, SiLU(gate) * up, down, residual."""
    import torch

    h = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * norm_weight
    act = torch.nn.functional.silu(torch.nn.functional.linear(h, gate)) * torch.nn.functional.linear(h, up)
    return x + torch.nn.functional.linear(act, down)


def linear(x, w):
    import torch

    return torch.nn.functional.linear(x, w)


def compiled(fn, matvec: str, wide: bool = False, max_rows: int = 1):
    """`fn` under torch.compile with the CUDA target's settings for `--matvec matvec`
    (`wide`: the pass rewrites products of any width, which it leaves to cuBLAS otherwise)."""
    import torch
    import torch._inductor.config as config

    from transpiler.options import Options
    from transpiler.targets.cuda import CudaTarget
    from transpiler.targets.matvec import MatvecPass

    patches = CudaTarget().inductor_patches(Options(model_path=Path("model.py"), matvec=matvec), tuned=False)
    if wide or max_rows != 1:
        patches = {**patches, "post_grad_custom_pre_pass": MatvecPass(max_rows=max_rows, wide=wide)}
    compiled_fn = torch.compile(fn, dynamic=False, fullgraph=True)

    def run(*args):
        with config.patch(patches):
            return compiled_fn(*args)

    return run


def time_per_call(fn, argument_sets, replays: int = 20) -> list[float]:
    """Microseconds per call: a CUDA graph of one call per argument set, replayed."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for args in argument_sets[:2]:
            fn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for args in argument_sets:
            fn(*args)
    graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000 / len(argument_sets))
    return samples


def summary(samples: list[float]) -> str:
    return f"{statistics.median(samples):.1f} ({min(samples):.1f}-{max(samples):.1f})"


def main() -> int:
    dry = "--dry-run" in sys.argv[2:]
    import torch

    torch.manual_seed(0)
    if dry:
        for name, n, k in TINY_SHAPES:
            x, w = torch.randn(1, k), torch.randn(n, k)
            print(f"{name}: y {tuple(linear(x, w).shape)}, copies for 2 GB {copies_for(2 << 30)}")
        return 0
    device, dtype = "cuda", torch.bfloat16
    # Every case compiles `linear` or `mlp_block` again (other shapes, other settings).
    torch._dynamo.config.recompile_limit = torch._dynamo.config.accumulated_recompile_limit = 1024
    bandwidth = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    rows = []
    for name, n, k in SHAPES:
        nbytes = n * k * dtype.itemsize
        weights = [torch.randn(n, k, device=device, dtype=dtype) * 0.02 for _ in range(copies_for(nbytes))]
        x = torch.randn(1, k, device=device, dtype=dtype)
        sets = [(x, w) for w in weights]
        reference = linear(x, weights[0])
        figures = {"cuBLAS": time_per_call(linear, sets)}
        errors = {}
        for label, fn in (("reduction", compiled(linear, "reduction", wide=True)),):
            errors[label] = relative_error(fn(x, weights[0]), reference)
            figures[label] = time_per_call(fn, sets)
        floor = floor_us(nbytes, bandwidth)
        base = statistics.median(figures["cuBLAS"])
        rows.append(
            [f"{name} {n}x{k}", f"{floor:.1f}"]
            + [f"{summary(s)} = {format_ratio(statistics.median(s) / floor)} floor" for s in figures.values()]
            + [format_ratio(statistics.median(figures["reduction"]) / base), f"{errors['reduction']:.1e}"]
        )
        del weights, sets
        print(rows[-1], flush=True)
    header = [
        "1 row",
        "floor us",
        "cuBLAS us",
        "reduction us",
        "reduction / cuBLAS",
        "rel. err",
    ]
    print(markdown_table(header, rows))

    # The MLP half of a layer at one row: three products and what lies between them.
    block_bytes = 3 * HIDDEN * FFN * dtype.itemsize
    sets = []
    for _ in range(copies_for(block_bytes)):
        sets.append(
            (
                torch.randn(1, HIDDEN, device=device, dtype=dtype),
                torch.ones(HIDDEN, device=device, dtype=dtype),
                torch.randn(FFN, HIDDEN, device=device, dtype=dtype) * 0.02,
                torch.randn(FFN, HIDDEN, device=device, dtype=dtype) * 0.02,
                torch.randn(HIDDEN, FFN, device=device, dtype=dtype) * 0.02,
            )
        )
    reference = mlp_block(*sets[0])
    block_rows = []
    for label, fn in (
        ("eager", mlp_block),
        ("compiled, --matvec library", compiled(mlp_block, "library")),
        ("compiled, --matvec reduction", compiled(mlp_block, "reduction")),
        ("compiled, --matvec reduction, gate/up too", compiled(mlp_block, "reduction", wide=True)),
    ):
        error = relative_error(fn(*sets[0]), reference)
        samples = time_per_call(fn, sets)
        block_rows.append(
            [
                label,
                summary(samples),
                format_ratio(statistics.median(samples) / floor_us(block_bytes, bandwidth)),
                f"{error:.1e}",
            ]
        )
        print(block_rows[-1], flush=True)
    print(f"MLP block at 1 row, floor {floor_us(block_bytes, bandwidth):.1f} us")
    print(markdown_table(["MLP block", "us per call", "/ floor", "rel. err vs eager"], block_rows))
    del sets

    # cuBLAS at more rows (the range variants keep it): gate/up's shape.
    n, k = 8192, 2048
    weights = [torch.randn(n, k, device=device, dtype=dtype) * 0.02 for _ in range(copies_for(n * k * 2))]
    many = []
    for count in ROWS:
        x = torch.randn(count, k, device=device, dtype=dtype)
        samples = time_per_call(linear, [(x, w) for w in weights])
        many.append(
            [count, summary(samples), format_ratio(statistics.median(samples) / floor_us(n * k * 2, bandwidth))]
        )
    print(markdown_table([f"rows, cuBLAS {n}x{k}", "us per call", "/ floor"], many))
    del weights

    # A few rows (exact sizes 2-8) as the same reduction, against cuBLAS: q/o, k/v, down.
    few = []
    for name, n, k in (s for s in SHAPES if s[1] <= s[2]):
        weights = [torch.randn(n, k, device=device, dtype=dtype) * 0.02 for _ in range(copies_for(n * k * 2))]
        for count in (2, 4, 8):
            x = torch.randn(count, k, device=device, dtype=dtype)
            sets = [(x, w) for w in weights]
            reduction = compiled(linear, "reduction", max_rows=count)
            error = relative_error(reduction(x, weights[0]), linear(x, weights[0]))
            library, reduced = time_per_call(linear, sets), time_per_call(reduction, sets)
            floor = floor_us(n * k * 2, bandwidth)
            few.append(
                [f"{name} {n}x{k}", count, summary(library), summary(reduced)]
                + [
                    format_ratio(statistics.median(reduced) / statistics.median(library)),
                    f"{floor:.1f}",
                    f"{error:.1e}",
                ]
            )
            print(few[-1], flush=True)
        del weights
    print(
        markdown_table(
            ["shape", "rows", "cuBLAS us", "reduction us", "reduction / cuBLAS", "floor us", "rel. err"], few
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
