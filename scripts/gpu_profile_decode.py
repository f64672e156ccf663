#!/usr/bin/env python3
"""Where a decode step's GPU time goes: the 1.1B bf16 serving package, plain forward,
one token after a 32-token prompt, under the torch profiler.

    bash scripts/gpu-run.sh scripts/gpu_profile_decode.py [TOKENS ...]

Prints the kernels by total GPU time, GPU busy time against wall time per step (the
gap is launch overhead, which CUDA graphs remove), and the weights-read floor.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from harness import REPO, SERVING_1B_ENV, SERVING_EXAMPLE, import_package, transpile_command

ROOT = REPO
EXAMPLE = SERVING_EXAMPLE
NAME = "serving_llama_1b"


def main() -> int:
    scratch = Path(sys.argv[1])
    token_counts = [int(t) for t in sys.argv[2:]] or [1]
    out = scratch / "gen"
    os.environ.update(SERVING_1B_ENV)
    import torch
    from torch.profiler import ProfilerActivity, profile

    if not (out / NAME).is_dir():
        started = time.perf_counter()
        command = transpile_command(
            EXAMPLE / "model.py", out, "--name", NAME, "--import", "serving_ops", "--device", "cuda",
            "--ranges", "1-64,65-2048", "--sizes", "1", "-q",
        )
        subprocess.run(command, cwd=ROOT, check=True)
        print(f"transpile {time.perf_counter() - started:.1f} s", flush=True)
    package = import_package(out, NAME, [EXAMPLE])
    model = package.load()
    _, cache_dtype, cache_shape = package.INPUTS[2]
    cache = torch.zeros(cache_shape, dtype=cache_dtype, device="cuda")
    prompt = torch.arange(32, device="cuda").unsqueeze(0)
    model(prompt, prompt, cache, prompt[0])

    for tokens in token_counts:

        def step(index, tokens=tokens):
            at = torch.arange(32 + tokens * index, 32 + tokens * (index + 1), device="cuda").unsqueeze(0)
            return model(torch.zeros_like(at), at, cache, at[0])

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
        print(f"{torch.cuda.get_device_name()}: {tokens} tokens per step: wall {wall * 1e6:.0f} us, GPU busy {gpu_total:.0f} us")
        print(events.table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=80))
    return 0


if __name__ == "__main__":
    sys.exit(main())
