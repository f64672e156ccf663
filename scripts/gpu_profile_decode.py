#!/usr/bin/env python3
"""Where a decode step's GPU time goes: the 1.1B bf16 serving package, plain forward (or
replays of its CUDA graphs), a step after a 32-token prompt over a paged cache, under the
torch profiler.

    bash scripts/gpu-run.sh scripts/gpu_profile_decode.py [STEP ...] [--graphs=piecewise|full]
    python scripts/gpu_profile_decode.py SCRATCH --dry-run [STEP ...]   # CPU: the steps' inputs

A STEP is N (one sequence adding N tokens; default 1) or Nx1 (N sequences adding one each).

Prints the kernels by total GPU time, GPU busy time against wall time per step (for the
plain forward the gap is launch overhead, which CUDA graphs remove; for full graphs it is
what the GPU spends between the graph's kernels).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import serving_batches
from harness import (
    REPO,
    SERVING_1B_ENV,
    SERVING_1B_VARIANTS,
    SERVING_EXAMPLE,
    import_package,
    serving_cuda_command,
)

ROOT = REPO
EXAMPLE = SERVING_EXAMPLE
NAME = "serving_llama_1b"
PROMPT = 32


def parse_step(text: str) -> serving_batches.Case:
    """'8': one sequence adding 8 tokens; '8x1': 8 sequences adding one each (after PROMPT)."""
    count, batched, rest = text.partition("x")
    if not count.isdigit() or (batched and rest != "1") or int(count) < 1:
        raise SystemExit(f"step {text!r}: write N (one sequence, N new tokens) or Nx1 (N sequences, one token each)")
    if batched:
        return serving_batches.Case(f"decode {count}x1", int(count), 1, PROMPT)
    return serving_batches.Case(f"decode {count}", 1, int(count), PROMPT)


def parse_graphs(options: list[str]) -> str | None:
    """--graphs=piecewise|full: profile replays of CUDA graphs of that mode (default: none,
    the plain forward)."""
    if not options:
        return None
    mode = options[-1].partition("=")[2]
    if mode not in ("piecewise", "full"):
        raise SystemExit(f"{options[-1]}: write --graphs=piecewise or --graphs=full")
    return mode


def main() -> int:
    scratch = Path(sys.argv[1])
    arguments = [a for a in sys.argv[2:] if a != "--dry-run"]
    graphs = parse_graphs([a for a in arguments if a.startswith("--graphs")])
    steps = [parse_step(a) for a in arguments if not a.startswith("--graphs")] or [parse_step("1")]
    if "--dry-run" in sys.argv[2:]:
        import torch

        sys.path.insert(0, str(EXAMPLE))
        import llama

        config = llama.CONFIGS["tiny"]
        model, cache = llama.build(config), llama.new_kv_cache(config, max(c.blocks() for c in steps))
        for case in steps:
            with torch.no_grad():
                logits = model(*serving_batches.forward_args(serving_batches.batch(case, config), cache))
            print(f"{case.label}: logits {tuple(logits.shape)}")
        return 0
    out = scratch / "gen"
    os.environ.update(SERVING_1B_ENV)
    import torch
    from torch.profiler import ProfilerActivity, profile

    if not (out / NAME).is_dir():
        started = time.perf_counter()
        command = serving_cuda_command(out, NAME, *SERVING_1B_VARIANTS, "-q")
        subprocess.run(command, cwd=ROOT, check=True)
        print(f"transpile {time.perf_counter() - started:.1f} s", flush=True)
    package = import_package(out, NAME, [EXAMPLE])
    model = package.load()
    sys.path.insert(0, str(EXAMPLE))
    import llama

    config = llama.CONFIGS["1b"]
    cache = package.new_kv_cache(max(c.blocks() for c in steps), dtype=package.INPUTS[2][1], device="cuda")
    if graphs:
        model.capture(mode=graphs, capture_sizes=(1, 2, 4, 8, 16, 32, 64), kv_cache=cache)

    for case in steps:
        prefill = serving_batches.Case("prefill", case.sequences, PROMPT, 0)  # the sequences' prompts
        blocks = case.blocks() // case.sequences
        model(
            *serving_batches.forward_args(
                serving_batches.batch(prefill, config, "cuda", blocks_per_sequence=blocks), cache
            )
        )
        inputs = serving_batches.forward_args(serving_batches.batch(case, config, "cuda"), cache)

        def step(index, inputs=inputs):
            return model(*inputs)  # the same step, repeated

        for index in range(20):
            step(index % 8)
        torch.cuda.synchronize()
        steps = 20
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            started = time.perf_counter()
            for index in range(steps):
                step(index % 8)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - started) / steps
        events = prof.key_averages()
        gpu_total = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA") / steps
        print(
            f"{torch.cuda.get_device_name()}: {case.label} ({case.tokens} tokens, {case.sequences} sequences), "
            f"{graphs + ' graphs' if graphs else 'plain forward'} "
            f"after {PROMPT}: wall {wall * 1e6:.0f} us, GPU busy {gpu_total:.0f} us"
        )
        print(events.table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=80))
    return 0


if __name__ == "__main__":
    sys.exit(main())
