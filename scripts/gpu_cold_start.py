#!/usr/bin/env python3
"""Cold start of the 1.1B-parameter bf16 serving decoder on the GPU: seconds from just
after `import torch` to the first output, each path in several fresh processes.

    bash scripts/gpu-run.sh scripts/gpu_cold_start.py [--runs 3] [--jobs N]

Paths: eager (build the model on the GPU from its config, load the state dict from a
safetensors file, call), torch.compile with a warm cache, and the emitted package
(import, load(), first call), with load()'s own stage times (debug log). Also the
transpile time of the package. Prints a markdown table; medians with min-max.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import (
    REPO,
    SERVING_1B_ENV,
    SERVING_EXAMPLE,
    format_summary,
    serving_cuda_command,
)

ROOT = REPO
EXAMPLE = SERVING_EXAMPLE

PROLOGUE = """
import json, logging, sys, time
start = time.perf_counter()
import torch
after_torch = time.perf_counter()
sys.path.insert(0, {example!r})
"""
EPILOGUE = """
torch.cuda.synchronize()
done = time.perf_counter()
bad = sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor", "triton")))
print("RESULT " + json.dumps({"after_torch": done - after_torch, "whole": done - start, "compiler_modules": len(bad), **extra}))
"""
# The first call: one sequence's 8-token prompt in block 0 of a one-block paged cache
# (`width`: the block table's width, set before).
INPUTS = """
ids = torch.tensor([1, 5, 9, 13, 17, 21, 25, 29], device="cuda")
positions = torch.arange(8, device="cuda")
metadata = (
    positions.clone(),
    torch.tensor([[0] + [-1] * (width - 1)], device="cuda"),
    torch.tensor([8], device="cuda"),
    torch.tensor([0, 8], device="cuda"),
)
"""


def eager_body(compiled: bool) -> str:
    """Build the model on the GPU from its config, load the state dict, call (compiled or not)."""
    call = "torch.compile(decoder, dynamic=True)" if compiled else "decoder"
    return (
        """
extra = {{}}
import llama as m
config, dtype = m.CONFIGS["1b"], torch.bfloat16
with torch.device("cuda"):
    decoder = m.Decoder(config).to(dtype).eval()
from safetensors.torch import load_file
decoder.load_state_dict(load_file({checkpoint!r}, device="cuda"), strict=False)
forward = """
        + call
        + """
cache = m.new_kv_cache(config, 1, dtype, "cuda")
width = config.max_blocks_per_seq
"""
        + INPUTS
        + """
with torch.no_grad():
    out = forward(ids, positions, cache, *metadata)
"""
    )


def package_body(load_arguments: str) -> str:
    """The package path: import, load(load_arguments), first call; load()'s stage log kept."""
    return (
        """
stages = []
class Stages(logging.Handler):
    def emit(self, record):
        stages.append(record.getMessage())
logging.getLogger("serving_llama_1b").addHandler(Stages())
logging.getLogger("serving_llama_1b").setLevel(logging.DEBUG)
import serving_llama_1b
imported = time.perf_counter()
model = serving_llama_1b.load("""
        + load_arguments
        + """)
loaded = time.perf_counter()
cache = serving_llama_1b.new_kv_cache(1, dtype=serving_llama_1b.INPUTS[2][1], device="cuda")
width = serving_llama_1b.INPUTS[4][2][1]
"""
        + INPUTS
        + """
out = model(ids, positions, cache, *metadata)
torch.cuda.synchronize()
called = time.perf_counter()
extra = {{"import": imported - after_torch, "load": loaded - imported, "first_call": called - loaded, "stages": stages}}
"""
    )


BODIES = {
    "eager": eager_body(compiled=False),
    "torch.compile (warm cache)": eager_body(compiled=True),
    "package": package_body(""),
    "package, load(weights=checkpoint)": package_body("weights={checkpoint!r}"),
}


def run_fresh(body: str, env: dict) -> dict | None:
    """One path in a fresh process: its RESULT, or None (the error printed)."""
    run = harness.run_fresh(PROLOGUE.format(example=str(EXAMPLE)) + body + EPILOGUE, env=env)
    if not run.ok:
        print(f"FAIL {run.stderr[-1500:]}", flush=True)
        return None
    return run.result


def summary(values: list[float]) -> str:
    return format_summary(values, digits=2)


def dry_run() -> int:
    """On the CPU: every path's program compiles, and the first call's inputs build and
    run through the tiny eager model (device cpu in place of cuda)."""
    import torch

    for label, body in BODIES.items():
        compile(
            PROLOGUE.format(example=str(EXAMPLE)) + body.format(checkpoint="weights.safetensors") + EPILOGUE,
            label,
            "exec",
        )
    sys.path.insert(0, str(EXAMPLE))
    import llama

    config = llama.CONFIGS["tiny"]
    scope = {"torch": torch, "width": config.max_blocks_per_seq}
    exec(INPUTS.replace('"cuda"', '"cpu"'), scope)
    with torch.no_grad():
        logits = llama.build(config)(
            scope["ids"], scope["positions"], llama.new_kv_cache(config, 1), *scope["metadata"]
        )
    print(f"{len(BODIES)} paths compile; first call: logits {tuple(logits.shape)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=None, help="transpile -j (default: the transpiler's, the cores)")
    parser.add_argument("--serial-check", action="store_true", help="transpile again with -j 1 and compare the trees")
    parser.add_argument("--dry-run", action="store_true", help="CPU only: the paths compile, the inputs build")
    options = parser.parse_args()
    if options.dry_run:
        return dry_run()
    out = options.scratch / "gen"
    env = {**os.environ, **SERVING_1B_ENV, "PYTHONPATH": f"{out}:{os.environ.get('PYTHONPATH', '')}"}
    import torch

    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    command = serving_cuda_command(out, "serving_llama_1b", "--ranges", "1-64,65-2048", "--sizes", "1,8")
    if options.jobs:
        command += ["-j", str(options.jobs)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    transpile_seconds = time.perf_counter() - started
    print(
        f"transpile: rc {result.returncode}, {transpile_seconds:.1f} s; {result.stdout.strip()[-500:]} {result.stderr[-1500:]}",
        flush=True,
    )
    if result.returncode != 0:
        return 1
    if options.serial_check:
        sys.path.insert(0, str(ROOT))
        from transpiler.treediff import diff_trees

        serial_out = options.scratch / "gen-j1"
        serial = [
            *command[: command.index("-o")],
            "-o",
            str(serial_out),
            *command[command.index("-o") + 2 :],
            "-j",
            "1",
        ]
        started = time.perf_counter()
        result = subprocess.run(serial, cwd=ROOT, env=env, capture_output=True, text=True)
        print(
            f"transpile -j 1: rc {result.returncode}, {time.perf_counter() - started:.1f} s; "
            f"{result.stdout.strip()[-500:]} {result.stderr[-1500:]}",
            flush=True,
        )
        if result.returncode == 0:
            differences = diff_trees(out / "serving_llama_1b", serial_out / "serving_llama_1b")
            print(
                f"{'PASS' if not differences else 'FAIL'} -j default and -j 1 give the same sources: {differences[:5]}"
            )
    # The full checkpoint the eager paths load: the package's own weights file.
    checkpoint = out / "serving_llama_1b" / "weights.safetensors"
    rows = {}
    for label, body in BODIES.items() if options.runs else ():  # --runs 0: the transpile alone
        code = body.format(checkpoint=str(checkpoint))
        if "compile" in label:
            run_fresh(code, {**env, "TORCHINDUCTOR_CACHE_DIR": str(options.scratch / "compile-cache")})  # warm it
        runs = []
        for _ in range(options.runs):
            sample = run_fresh(code, {**env, "TORCHINDUCTOR_CACHE_DIR": str(options.scratch / "compile-cache")})
            if sample:
                runs.append(sample)
                print(label, json.dumps(sample)[:600], flush=True)
        rows[label] = runs
    print()
    print(
        f"Time to first output, 1.1B bf16 serving decoder (8-token prefill), {torch.cuda.get_device_name()}, "
        f"torch {torch.__version__}; seconds after `import torch`, median (min-max) of {options.runs} fresh processes"
    )
    print("| path | first output | whole process | compiler modules loaded |")
    print("| --- | --- | --- | --- |")
    for label, runs in rows.items():
        if runs:
            print(
                f"| {label} | {summary([r['after_torch'] for r in runs])} | {summary([r['whole'] for r in runs])} | "
                f"{max(r['compiler_modules'] for r in runs)} |"
            )
    for label in ("package", "package, load(weights=checkpoint)"):
        package = rows.get(label) or []
        if not package:
            continue
        print(
            f"{label} stages: import {summary([r['import'] for r in package])}, load() {summary([r['load'] for r in package])}, "
            f"first call {summary([r['first_call'] for r in package])}"
        )
        print(f"{label} load() stages (debug log, first run):", package[0].get("stages"))
    print(f"transpile of the package: {transpile_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
