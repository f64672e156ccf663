#!/usr/bin/env python3
"""GPU benchmark on a 1B-class bf16 decoder with a KV cache: the package (plain, piecewise
and full CUDA graphs) beside eager and torch.compile (default, reduce-overhead,
max-autotune), each variant in its own process, variants in turn (--rounds N repeats
the turn: the rounds interleave the variants).

    bash scripts/gpu-run.sh scripts/gpu_bench.py [--rounds N] [--jobs 16] [--variants a,b] [--autotune]
    python scripts/gpu_bench.py SCRATCH --dry-run   # CPU: builds every case's inputs (tiny config)

The model is examples/serving_llama at its "1b" configuration (Llama architecture, 1.1B
parameters: hidden 2048, 16 layers, 32/8 heads, FFN 8192, vocab 32000; random weights),
driven as a server drives it: a flattened batch of sequences over a paged cache
(scripts/serving_batches.py). Cases: `decode N`, one sequence adding N tokens (1, 2, 8,
32, 64) after 128 cached; `decode Nx1`, N sequences adding one token each after 128
cached (batched decode); `prefill N` (128, 512, 2048) on an empty cache. Each figure is the
median of the samples (CUDA events) with their min-max over all rounds; decode cases also
show the ratio to the floor: the weights plus the keys and values the step reads, over the
device copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import serving_batches
from harness import (
    REPO,
    RESULT_MARKER,
    SERVING_1B_ENV,
    SERVING_1B_VARIANTS,
    SERVING_EXAMPLE,
    copy_bandwidth,
    cuda_timings,
    format_summary,
    import_package,
    run_fresh,
    serving_cuda_command,
    summarize,
)

ROOT = REPO
EXAMPLE = SERVING_EXAMPLE
NAME = "serving_llama_1b"
DECODE_SIZES = (1, 2, 8, 32, 64)
PREFILL_SIZES = (128, 512, 2048)
DECODE_START = 128
CASES = serving_batches.cases(DECODE_SIZES, PREFILL_SIZES, DECODE_START)
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
# With --compare-matvec: a package transpiled with --matvec library (every product through
# cuBLAS, as before the reduction pass), measured beside the default one.
LIBRARY_VARIANTS = ("cuBLAS-matvec package + piecewise graphs", "cuBLAS-matvec package + full graphs")
CAPTURE_SIZES = (1, 2, 4, 8, 16, 32, 64)


# --- figures (unit-tested on the CPU: tests/unit/test_bench_figures.py) --------------


def merge_rounds(rounds: list[dict]) -> dict:
    """{variant: {case: [samples]}} per round -> {variant: {case: summary}} over all rounds."""
    merged: dict = {}
    for result in rounds:
        for variant, cases in result.items():
            for case, samples in cases.items():
                merged.setdefault(variant, {}).setdefault(case, []).extend(samples)
    return {variant: {case: summarize(s) for case, s in cases.items()} for variant, cases in merged.items()}


def best(summaries: dict, size: int, variants) -> tuple[str | None, float]:
    """The variant with the lowest median at `size` among `variants`, and that median."""
    candidates = [(summaries[v][size]["median"], v) for v in variants if v in summaries and size in summaries[v]]
    if not candidates:
        return None, float("nan")
    median, variant = min(candidates)
    return variant, median


def table(summaries: dict, floors_us: dict) -> list[str]:
    """Markdown: one row per case (in `CASES` order, others after), each variant's median
    (min-max), best package vs best torch.compile, and where `floors_us` has the case (decode
    cases) the floor and the best package mode over it."""
    variants = [v for v in (*VARIANTS, *TUNED_VARIANTS, *LIBRARY_VARIANTS) if v in summaries]
    packages = [v for v in variants if is_package(v)]
    compiled = [v for v in variants if v in ("torch.compile", "reduce-overhead", "max-autotune")]
    lines = [
        "| case | " + " | ".join(variants) + " | best package / best compile | floor | best package / floor |",
        "|" + " --- |" * (len(variants) + 4),
    ]
    order = [case.label for case in CASES]
    measured = {c for v in variants for c in summaries[v]}
    for case in [c for c in order if c in measured] + sorted(measured - set(order)):
        cells = []
        for variant in variants:
            figure = summaries[variant].get(case)
            cells.append("-" if figure is None else format_summary(figure, digits=0))
        package_name, package_median = best(summaries, case, packages)
        compile_name, compile_median = best(summaries, case, compiled)
        ratio = (
            f"{package_median / compile_median:.2f}x ({package_name} / {compile_name})"
            if package_name and compile_name
            else "-"
        )
        floor_us = floors_us.get(case)
        floor = f"{floor_us:.0f} us" if floor_us else "-"
        over = f"{package_median / floor_us:.2f}x" if floor_us and package_name else "-"
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {ratio} | {floor} | {over} |")
    return lines


def is_package(variant: str) -> bool:
    """Whether a variant runs an emitted package (else eager or a torch.compile mode)."""
    return variant.startswith(("package", "tuned package", "cuBLAS-matvec package"))


def floors(weight_bytes: int, bandwidth: float, config, itemsize: int) -> dict:
    """{decode case: floor in us}: the weights plus the keys and values the step reads,
    over the copy bandwidth (bytes/s)."""
    return {
        case.label: (weight_bytes + serving_batches.kv_bytes_read(case, config, itemsize)) / bandwidth * 1e6
        for case in CASES
        if case.decode
    }


# --- one variant, in its own process ---------------------------------------------------


def cache_blocks() -> int:
    """Blocks of the cache every case fits in (each case's sequences start at block 0)."""
    return max(case.blocks() for case in CASES)


def worker(variant: str, out: Path, repeats: int, cases=None) -> dict:
    import torch

    sys.path.insert(0, str(EXAMPLE))
    import llama

    config, dtype = llama.CONFIGS["1b"], torch.bfloat16
    cache = llama.new_kv_cache(config, cache_blocks(), dtype, "cuda")
    if is_package(variant):
        package = import_package(out, NAME, [EXAMPLE])
        model = package.load()
        if "graphs" in variant:
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
        for case in cases or CASES:
            # Each call rewrites the case's slots: the same step, repeated.
            inputs = serving_batches.forward_args(serving_batches.batch(case, config, "cuda"), cache)
            results[case.label] = cuda_timings(run, lambda _index, inputs=inputs: inputs, repeats)
            print(
                f"  {variant} {case.label}: {statistics.median(results[case.label]):.0f} us",
                file=sys.stderr,
                flush=True,
            )
    return results


def dry_run() -> int:
    """On the CPU: every case's inputs for the tiny config (wide enough for 2048 tokens);
    those of up to 64 tokens run through the eager model, whose reference op checks them."""
    import torch

    sys.path.insert(0, str(EXAMPLE))
    import llama

    config = llama.CONFIGS["tiny"]
    config = llama.Config(**{**config.__dict__, "max_blocks_per_seq": 160, "max_tokens": 2048, "max_seqs": 64})
    model = llama.build(config)
    cache = llama.new_kv_cache(config, cache_blocks())
    for case in CASES:
        inputs = serving_batches.forward_args(serving_batches.batch(case, config), cache)
        if case.tokens <= 64:
            with torch.no_grad():
                logits = model(*inputs)
            assert logits.shape == (case.tokens, config.vocab), case
        kv = serving_batches.kv_bytes_read(case, llama.CONFIGS["1b"], 2)
        print(f"{case.label}: {case.tokens} tokens in {case.sequences} sequences, 1b KV read {kv / 1e6:.1f} MB")
    return 0


# --- the run ----------------------------------------------------------------------------


def main() -> int:
    if sys.argv[1:2] == ["worker"]:
        labels = sys.argv[5].split(",") if len(sys.argv) > 5 and sys.argv[5] else None
        chosen = [case for case in CASES if labels is None or case.label in labels]
        print(RESULT_MARKER + json.dumps(worker(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), chosen)))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--variant-timeout", type=int, default=240)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--autotune",
        action="store_true",
        help=f"also transpile with --autotune and measure {' and '.join(TUNED_VARIANTS)}",
    )
    parser.add_argument(
        "--compare-matvec",
        action="store_true",
        help=f"also transpile with --matvec library and measure {' and '.join(LIBRARY_VARIANTS)}",
    )
    parser.add_argument("--cases", default="", help="case labels to run, comma-separated (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="CPU only: build every case's inputs (tiny config)")
    options = parser.parse_args()
    if options.dry_run:
        return dry_run()
    out = options.scratch / "gen"
    env = {**os.environ, **SERVING_1B_ENV}
    import torch

    gpu = torch.cuda.get_device_name()
    print(f"{gpu}, torch {torch.__version__}", flush=True)
    # The same transpile options for every package measured (default, tuned, cuBLAS matvec).
    transpile_options = [*SERVING_1B_VARIANTS, "--capture-sizes", ",".join(map(str, CAPTURE_SIZES)), "-q"]
    if options.jobs:
        transpile_options += ["-j", str(options.jobs)]
    command = serving_cuda_command(out, NAME, *transpile_options)
    if not (out / NAME).is_dir():
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        print(f"transpile: {time.perf_counter() - started:.1f} s", flush=True)
    variants = options.variants.split(",")
    outs = {variant: out for variant in variants}
    if options.autotune:
        tuned_out = options.scratch / "gen-tuned"
        started = time.perf_counter()
        tuned = serving_cuda_command(tuned_out, NAME, *transpile_options, "--autotune")
        done = subprocess.run(tuned, cwd=ROOT, env=env)
        print(f"transpile --autotune: {time.perf_counter() - started:.1f} s, exit {done.returncode}", flush=True)
        if done.returncode == 0:
            variants += list(TUNED_VARIANTS)
            outs.update({variant: tuned_out for variant in TUNED_VARIANTS})
            # The lockfile comes back with the logs ($OUT, as gpu-run.sh and gpu-final.sh set it),
            # to be kept in bench-results/.
            keep = Path(os.environ.get("OUT", options.scratch)) / "tuning-serving_llama_1b.json"
            shutil.copyfile(tuned_out / NAME / "tuning.json", keep)
            print(f"lockfile: {keep}", flush=True)
    if options.compare_matvec:
        library_out = options.scratch / "gen-library"
        started = time.perf_counter()
        library = serving_cuda_command(library_out, NAME, *transpile_options, "--matvec", "library")
        done = subprocess.run(library, cwd=ROOT, env=env)
        print(f"transpile --matvec library: {time.perf_counter() - started:.1f} s, exit {done.returncode}", flush=True)
        if done.returncode == 0:
            variants += list(LIBRARY_VARIANTS)
            outs.update({variant: library_out for variant in LIBRARY_VARIANTS})
    tensors = json.loads((out / NAME / "manifest.json").read_text())["weights"]["tensors"].values()
    weight_bytes = sum(
        math.prod(t["shape"]) * getattr(torch, t["dtype"].removeprefix("torch.")).itemsize for t in tensors
    )
    bandwidth = copy_bandwidth()
    sys.path.insert(0, str(EXAMPLE))
    import llama

    floors_us = floors(weight_bytes, bandwidth, llama.CONFIGS["1b"], torch.bfloat16.itemsize)
    print(
        f"weights {weight_bytes / 1e9:.2f} GB, copy bandwidth {bandwidth / 1e9:.0f} GB/s, "
        f"weights-read floor {weight_bytes / bandwidth * 1e6:.0f} us",
        flush=True,
    )
    rounds = []
    for round_number in range(options.rounds):
        result = {}
        for variant in variants:
            started = time.perf_counter()
            try:
                done = run_fresh(
                    [
                        sys.executable,
                        __file__,
                        "worker",
                        variant,
                        str(outs[variant]),
                        str(options.repeats),
                        options.cases,
                    ],
                    env=env,
                    timeout=options.variant_timeout,
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
            print("\n".join(table(merge_rounds([*rounds, result]), floors_us)), flush=True)
        rounds.append(result)
    summaries = merge_rounds(rounds)
    print(
        f"\nMedian us per call (min-max over {options.rounds} rounds x {options.repeats} calls), {gpu}; "
        f"decode cases after {DECODE_START} cached tokens a sequence; floor: weights + KV read over the copy bandwidth"
    )
    print("\n".join(table(summaries, floors_us)))
    print("JSON " + json.dumps(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
