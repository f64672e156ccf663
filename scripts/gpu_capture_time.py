#!/usr/bin/env python3
"""Issue 18's capture target: how long `capture()` takes after `load()` for every default
capture size of the 1.1B bf16 serving decoder, piecewise and full, each mode in a fresh
process (the package transpiled once, without --capture-sizes, so its defaults apply).
With lazy capture (`capture(lazy=True)`), the first call of a size pays for its capture:
for those modes, the time of capture() itself and of the first and second calls of a
one-sequence step of 1, 8 and 64 tokens.

    bash scripts/gpu-run.sh scripts/gpu_capture_time.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
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
    format_summary,
    import_package,
    serving_cuda_command,
)

ROOT = REPO
EXAMPLE = SERVING_EXAMPLE
NAME = "serving_llama_1b_capture"
MODES = ("piecewise", "full", "piecewise lazy", "full lazy")
FIRST_CALL_TOKENS = (1, 8, 64)


def measure(out: Path, mode: str) -> None:
    """In this process: load, then time capture() of every default size."""
    import torch

    sys.path.insert(0, str(EXAMPLE))
    import llama

    package = import_package(out, NAME, [EXAMPLE])
    model = package.load()
    cache = llama.new_kv_cache(llama.CONFIGS["1b"], 64, torch.bfloat16, "cuda")
    torch.cuda.synchronize()
    started = time.perf_counter()
    model.capture(mode=mode.split()[0], kv_cache=cache, lazy=mode.endswith("lazy"))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    calls = {}
    if mode.endswith("lazy"):
        for tokens in FIRST_CALL_TOKENS:
            case = serving_batches.Case(f"decode {tokens}", 1, tokens, 32)
            args = serving_batches.forward_args(serving_batches.batch(case, llama.CONFIGS["1b"], "cuda"), cache)
            timings = []
            for _ in range(2):  # the first call captures its size, the second replays
                begun = time.perf_counter()
                with torch.no_grad():
                    model(*args)
                torch.cuda.synchronize()
                timings.append(time.perf_counter() - begun)
            calls[tokens] = timings
    print(f"RESULT {mode.replace(' ', '_')} {seconds:.3f} {len(package.cudagraphs.CAPTURE_SIZES)} {json.dumps(calls)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--measure", nargs=2, metavar=("OUT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(Path(args.measure[0]), args.measure[1])
        return 0
    out = args.scratch / "gen"
    env = {**os.environ, **SERVING_1B_ENV}
    command = serving_cuda_command(out, NAME, *SERVING_1B_VARIANTS, "-q")
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    print(f"transpile: {time.perf_counter() - started:.1f} s", flush=True)
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    calls: dict[str, list[dict]] = {mode: [] for mode in MODES}
    sizes = 0
    for _ in range(args.runs):
        for mode in seconds:
            done = subprocess.run(
                [sys.executable, __file__, str(args.scratch), "--measure", str(out), mode],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            line = next((text for text in done.stdout.splitlines() if text.startswith("RESULT ")), None)
            if line is None:
                print(done.stdout[-2000:], done.stderr[-4000:], sep="\n")
                return 1
            _, _, value, count, first_calls = line.split(maxsplit=4)
            seconds[mode].append(float(value))
            calls[mode].append(json.loads(first_calls))
            sizes = int(count)
    for mode, samples in seconds.items():
        print(f"capture {mode}, {sizes} default sizes, after load(): {format_summary(samples, unit=' s')}", flush=True)
        for tokens in FIRST_CALL_TOKENS if mode.endswith("lazy") else ():
            first = [1000 * run[str(tokens)][0] for run in calls[mode]]
            second = [1000 * run[str(tokens)][1] for run in calls[mode]]
            print(
                f"  {mode}, {tokens} tokens: first call {format_summary(first, unit=' ms')}, "
                f"second {format_summary(second, unit=' ms')}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
