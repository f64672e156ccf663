#!/usr/bin/env python3
"""GPU benchmark on a 1B-class bf16 decoder with a KV cache: the package (plain, piecewise
and full CUDA graphs) beside eager and torch.compile (default, reduce-overhead,
max-autotune), each variant in its own process, variants in turn (--rounds N repeats
the turn: the rounds interleave the variants).

    bash scripts/gpu-run.sh scripts/gpu_bench.py [--rounds N] [--jobs 16] [--variants a,b] [--autotune]

The model is examples/serving_llama at its "1b" configuration (Llama architecture, 1.1B
parameters: hidden 2048, 16 layers, 32/8 heads, FFN 8192, vocab 32000; random weights).
Decode sizes (1, 2, 8, 32, 64 new tokens) run after a 128-token cache; prefill sizes
(128, 512, 2048) from an empty one. Each figure is the median of the samples (CUDA events)
with their min-max over all rounds; decode sizes also show the ratio to the weights-read
floor (weight bytes / device copy bandwidth, measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import (
    REPO,
    RESULT_MARKER,
    SERVING_1B_ENV,
    SERVING_EXAMPLE,
    copy_bandwidth,
    cuda_timings,
    format_summary,
    import_package,
    run_fresh,
    summarize,
    transpile_command,
)

ROOT = REPO
EXAMPLE = SERVING_EXAMPLE
NAME = "serving_llama_1b"
DECODE_SIZES = (1, 2, 8, 32, 64)
PREFILL_SIZES = (128, 512, 2048)
DECODE_START = 128
VARIANTS = (
    "eager",
    "torch.compile",
    "reduce-overhead",
    "max-autotune",
    "package",
    "package + piecewise graphs",
    "package + full graphs",
)
# With --autotune: a second package, transpiled with --autotune (tuning.json), beside the first.
TUNED_VARIANTS = ("tuned package", "tuned package + full graphs")
CAPTURE_SIZES = (1, 2, 4, 8, 16, 32, 64)


# --- figures (unit-tested on the CPU: tests/unit/test_bench_figures.py) --------------


def merge_rounds(rounds: list[dict]) -> dict:
    """{variant: {size: [samples]}} per round -> {variant: {size: summary}} over all rounds."""
    merged: dict = {}
    for result in rounds:
        for variant, sizes in result.items():
            for size, samples in sizes.items():
                merged.setdefault(variant, {}).setdefault(int(size), []).extend(samples)
    return {variant: {size: summarize(s) for size, s in sizes.items()} for variant, sizes in merged.items()}


def best(summaries: dict, size: int, variants) -> tuple[str | None, float]:
    """The variant with the lowest median at `size` among `variants`, and that median."""
    candidates = [(summaries[v][size]["median"], v) for v in variants if v in summaries and size in summaries[v]]
    if not candidates:
        return None, float("nan")
    median, variant = min(candidates)
    return variant, median


def table(summaries: dict, floor_us: float) -> list[str]:
    """Markdown: one row per size, each variant's median (min-max), best package vs best
    torch.compile, and for decode sizes the best package mode over the floor."""
    variants = [v for v in (*VARIANTS, *TUNED_VARIANTS) if v in summaries]
    packages = [v for v in variants if v.startswith(("package", "tuned package"))]
    compiled = [v for v in variants if v in ("torch.compile", "reduce-overhead", "max-autotune")]
    lines = [
        "| tokens | " + " | ".join(variants) + " | best package / best compile | best package / floor |",
        "|" + " --- |" * (len(variants) + 3),
    ]
    for size in sorted({s for v in variants for s in summaries[v]}):
        cells = []
        for variant in variants:
            figure = summaries[variant].get(size)
            cells.append("-" if figure is None else format_summary(figure, digits=0))
        package_name, package_median = best(summaries, size, packages)
        compile_name, compile_median = best(summaries, size, compiled)
        ratio = f"{package_median / compile_median:.2f}x ({package_name} / {compile_name})" if package_name and compile_name else "-"
        floor = f"{package_median / floor_us:.2f}x" if size in DECODE_SIZES and package_name else "-"
        lines.append(f"| {size} | " + " | ".join(cells) + f" | {ratio} | {floor} |")
    return lines


# --- one variant, in its own process ---------------------------------------------------


def worker(variant: str, out: Path, repeats: int) -> dict:
    import torch

    sys.path.insert(0, str(EXAMPLE))
    import llama

    config, dtype = llama.CONFIGS["1b"], torch.bfloat16
    cache = llama.new_kv_cache(config, dtype, "cuda")
    if variant.startswith(("package", "tuned package")):
        package = import_package(out, NAME, [EXAMPLE])
        model = package.load()
        if variant not in ("package", "tuned package"):
            mode = "piecewise" if "piecewise" in variant else "full"
            model.capture(mode=mode, capture_sizes=CAPTURE_SIZES, kv_cache=cache)
        run = model
    else:
        torch.manual_seed(0)
        with torch.device("cuda"):
            decoder = llama.Decoder(config).to(dtype).eval()
        for parameter in decoder.parameters():
            torch.nn.init.normal_(parameter, std=0.02)
        modes = {"torch.compile": None, "reduce-overhead": "reduce-overhead", "max-autotune": "max-autotune"}
        run = decoder if variant == "eager" else torch.compile(decoder, mode=modes[variant])
    results = {}
    with torch.no_grad():
        for size in (*DECODE_SIZES, *PREFILL_SIZES):
            start = DECODE_START if size in DECODE_SIZES else 0

            def make_inputs(size=size, start=start):
                positions = torch.arange(start, start + size, device="cuda").unsqueeze(0)
                ids = torch.randint(0, config.vocab, (1, size), device="cuda")
                return ids, positions, cache, positions[0].clone()

            results[size] = cuda_timings(run, lambda _index, make_inputs=make_inputs: make_inputs(), repeats)
            print(f"  {variant} {size}: {statistics.median(results[size]):.0f} us", file=sys.stderr, flush=True)
    return results


# --- the run ----------------------------------------------------------------------------


def main() -> int:
    if sys.argv[1:2] == ["worker"]:
        print(RESULT_MARKER + json.dumps(worker(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--variant-timeout", type=int, default=240)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--autotune", action="store_true",
                        help=f"also transpile with --autotune and measure {' and '.join(TUNED_VARIANTS)}")
    options = parser.parse_args()
    out = options.scratch / "gen"
    env = {**os.environ, **SERVING_1B_ENV}
    import torch

    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, torch {torch.__version__}", flush=True)
    command = transpile_command(
        EXAMPLE / "model.py", out, "--name", NAME, "--import", "serving_ops", "--device", "cuda",
        "--ranges", "1-64,65-2048", "--sizes", "1", "--capture-sizes", ",".join(map(str, CAPTURE_SIZES)), "-q",
    )
    if options.jobs:
        command += ["-j", str(options.jobs)]
    if not (out / NAME).is_dir():
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        print(f"transpile: {time.perf_counter() - started:.1f} s", flush=True)
    variants = options.variants.split(",")
    outs = {variant: out for variant in variants}
    if options.autotune:
        tuned_out = options.scratch / "gen-tuned"
        started = time.perf_counter()
        tuned = [*command[: command.index("-o")], "-o", str(tuned_out), *command[command.index("-o") + 2:], "--autotune"]
        done = subprocess.run(tuned, cwd=ROOT, env=env)
        print(f"transpile --autotune: {time.perf_counter() - started:.1f} s, exit {done.returncode}", flush=True)
        if done.returncode == 0:
            variants += list(TUNED_VARIANTS)
            outs.update({variant: tuned_out for variant in TUNED_VARIANTS})
            print((tuned_out / NAME / "tuning.json").read_text()[:6000], flush=True)
    tensors = json.loads((out / NAME / "manifest.json").read_text())["weights"]["tensors"].values()
    weight_bytes = sum(math.prod(t["shape"]) * getattr(torch, t["dtype"].removeprefix("torch.")).itemsize for t in tensors)
    floor_us = weight_bytes / copy_bandwidth() * 1e6
    print(f"weights {weight_bytes / 1e9:.2f} GB, floor {floor_us:.0f} us", flush=True)
    rounds = []
    for round_number in range(options.rounds):
        result = {}
        for variant in variants:
            started = time.perf_counter()
            try:
                done = run_fresh(
                    [sys.executable, __file__, "worker", variant, str(outs[variant]), str(options.repeats)],
                    env=env, timeout=options.variant_timeout,
                )
            except subprocess.TimeoutExpired:
                print(f"round {round_number} {variant}: did not finish in {options.variant_timeout} s", flush=True)
                continue
            if not done.ok:
                print(f"round {round_number} {variant}: failed: {done.stderr[-1500:]}", flush=True)
                continue
            result[variant] = done.result
            print(f"round {round_number} {variant}: {time.perf_counter() - started:.0f} s", flush=True)
            # The table so far, in case the call runs out of time before the end.
            print("\n".join(table(merge_rounds([*rounds, result]), floor_us)), flush=True)
        rounds.append(result)
    summaries = merge_rounds(rounds)
    print(f"\nMedian us per call (min-max over {options.rounds} rounds x {options.repeats} calls), {gpu}; "
          f"decode sizes after a {DECODE_START}-token cache; weights-read floor {floor_us:.0f} us")
    print("\n".join(table(summaries, floor_us)))
    print("JSON " + json.dumps(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
