#!/usr/bin/env python3
"""How fast load() reads a package's weights onto the GPU, against the floor.

    bash scripts/gpu-run.sh scripts/gpu_cold_start.py --runs 3 --then scripts/gpu_weights_read.py [--runs 5]

Reads SCRATCH/gen/serving_llama_1b/weights.safetensors (the 1.1B bf16 package that
gpu_cold_start.py writes) in fresh processes, page cache warm, each way in turn:
the package's reader (the file mapped, copied in file order into two pinned buffers that
take turns with the GPU copies), the file mapped then `.to("cuda")` tensor by tensor, and
safetensors' own `load_file`. The floor is the slower of copying the mapped file into
pinned memory and one pinned-to-GPU copy of its size (the package's reader overlaps the two). Prints a markdown table: medians
(min-max) in ms and GB/s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import harness
from harness import format_ratio, format_summary, summarize

NAME = "serving_llama_1b"

PROLOGUE = """
import json, sys, time
from pathlib import Path
import torch
sys.path.insert(0, {gen!r})
torch.cuda.init()
torch.empty(1, device="cuda")
path = Path({path!r})
"""
WAYS = {
    "package (mapped file, two pinned buffers, one pass)": """
from {name} import runtime
entries = list(runtime.read_header(path).values())
start = time.perf_counter()
tensors = runtime.read_entries(path, entries, "cuda")
torch.cuda.synchronize()
""",
    "mapped, then .to(cuda) per tensor": """
from {name} import runtime
header = runtime.read_header(path)
start = time.perf_counter()
tensors = {{name: t.to("cuda") for name, t in runtime.map_file(path, list(header.values())).items()}}
torch.cuda.synchronize()
""",
    "safetensors.torch.load_file(device=cuda)": """
from safetensors.torch import load_file
start = time.perf_counter()
tensors = load_file(str(path), device="cuda")
torch.cuda.synchronize()
""",
    "floor: mapped file into pinned memory": """
import mmap
size = path.stat().st_size
with open(path, "rb") as file:
    data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
mapped = torch.frombuffer(data, dtype=torch.uint8)
chunk = 64 << 20
buffer = torch.empty(chunk, dtype=torch.uint8, pin_memory=True)
start = time.perf_counter()
for offset in range(0, size, chunk):
    piece = mapped[offset : offset + chunk]
    buffer[: piece.numel()].copy_(piece)
""",
    "floor: one pinned-to-GPU copy": """
size = path.stat().st_size
host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
device = torch.empty(size, dtype=torch.uint8, device="cuda")
device.copy_(host, non_blocking=True)
torch.cuda.synchronize()
start = time.perf_counter()
device.copy_(host, non_blocking=True)
torch.cuda.synchronize()
""",
}
EPILOGUE = """
print("RESULT " + json.dumps({"seconds": time.perf_counter() - start}))
"""


def run_fresh(code: str) -> float | None:
    run = harness.run_fresh(code)
    if not run.ok:
        print(f"FAIL {run.stderr[-1500:]}", flush=True)
        return None
    return run.result["seconds"]


def table(samples: dict[str, list[float]], size_bytes: int) -> list[str]:
    """Markdown rows: median (min-max) ms, GB/s at the median, and x the floor (the slower
    floor row's median)."""
    floors = [summarize(v)["median"] for k, v in samples.items() if k.startswith("floor") and v]
    floor = max(floors) if floors else None
    lines = ["| way | ms | GB/s | x floor |", "| --- | --- | --- | --- |"]
    for label, values in samples.items():
        if not values:
            lines.append(f"| {label} | failed | | |")
            continue
        median = summarize(values)["median"]
        ratio = format_ratio(median / floor) if floor and not label.startswith("floor") else ""
        lines.append(
            f"| {label} | {format_summary(values, 1e3, digits=0)} | {size_bytes / median / 1e9:.1f} | {ratio} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    gen = options.scratch / "gen"
    path = gen / NAME / "weights.safetensors"
    if not path.is_file():
        print(f"{path} is missing: run scripts/gpu_cold_start.py first in the same call (--then)")
        return 1
    path.read_bytes()  # page cache warm: every way reads from memory
    samples: dict[str, list[float]] = {label: [] for label in WAYS}
    for _ in range(options.runs):
        for label, body in WAYS.items():  # interleaved, a fresh process each
            seconds = run_fresh(PROLOGUE.format(gen=str(gen), path=str(path)) + body.format(name=NAME) + EPILOGUE)
            if seconds is not None:
                samples[label].append(seconds)
    import torch

    size = path.stat().st_size
    print(
        f"Reading {size / 1e9:.2f} GB of weights onto {torch.cuda.get_device_name()} (torch {torch.__version__}), "
        f"page cache warm, median (min-max) of {options.runs} fresh processes"
    )
    print("\n".join(table(samples, size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
