"""Decode throughput of the serving example over the paged cache: tokens per second at 1,
8, 32 and 128 concurrent decoding sequences, the transpiled package against eager and
torch.compile running the same model (same weights) on the same prefilled cache.

    python scripts/serving_throughput.py                      # CPU, tiny config, all modes
    python scripts/serving_throughput.py --package OUT         # reuse OUT/serving_llama (else transpiled to a temp dir)
    SERVING_CONFIG=1b SERVING_DTYPE=bfloat16 python scripts/serving_throughput.py --device cuda

Each concurrency: every sequence is prefilled with a --prompt-token prompt (eager, once),
then each mode decodes --steps steps (one token per sequence a step, greedy inputs fixed
in advance, metadata built before timing) on its own copy of that cache; a round times
the steps, --rounds rounds per mode, the modes interleaved round by round. Reported:
tokens per second, median (min-max) over rounds, and each mode's ratio to eager.

--device cuda adds the package's CUDA-graph modes (piecewise, full) where the package
supports them, and the floor: the weights plus the KV cache read per step, over the
copy bandwidth measured as scripts/gpu_bench.py does. A mode that cannot run prints one
line saying why.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "serving_llama"
sys.path.insert(0, str(EXAMPLE))

import engine  # noqa: E402
import llama  # noqa: E402
import serving_ops  # noqa: E402
import torch  # noqa: E402

CONCURRENCY = (1, 8, 32, 128)


def transpile(out: Path, device: str, name: str) -> Path:
    command = [
        sys.executable,
        "-m",
        "transpiler.cli",
        str(EXAMPLE / "model.py"),
        "--name",
        name,
        "--import",
        "serving_ops",
        "--device",
        device,
        "--ranges",
        "1-16,17-128",
        "--sizes",
        "1,8,32,128",
        "-o",
        str(out),
        "-q",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return out


def decode_plan(config, sequences: int, prompt: int, steps: int, device: str):
    """The prefill batch and the inputs of each decode step (metadata built in advance)."""
    blocks_each = -(-(prompt + steps) // serving_ops.BLOCK_SIZE)
    generator = torch.Generator().manual_seed(sequences)
    prompts = torch.randint(0, config.vocab, (sequences, prompt), generator=generator).tolist()
    tables = [list(range(s * blocks_each, (s + 1) * blocks_each)) for s in range(sequences)]
    chunks = [engine.Chunk(prompts[s], 0, tables[s]) for s in range(sequences)]
    prefill = engine.build_batch(chunks, serving_ops.BLOCK_SIZE, config.max_blocks_per_seq, device)
    decode = []
    for step in range(steps):
        tokens = torch.randint(0, config.vocab, (sequences,), generator=generator).tolist()
        chunks = [engine.Chunk([tokens[s]], prompt + step, tables[s]) for s in range(sequences)]
        decode.append(engine.build_batch(chunks, serving_ops.BLOCK_SIZE, config.max_blocks_per_seq, device))
    return sequences * blocks_each, prefill, decode


def run_round(forward, cache, decode, device) -> float:
    """Seconds for the decode steps."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for input_ids, positions, *metadata in decode:
        forward(input_ids, positions, cache, *metadata)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def floor_us(model, config, sequences, context, dtype) -> float | None:
    """Weights plus the KV cache read per decode step, over the measured copy bandwidth (GPU)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from gpu_bench import copy_bandwidth

    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_bytes = config.layers * 2 * sequences * context * config.kv_heads * config.head_dim * dtype.itemsize
    return (weight_bytes + kv_bytes) / copy_bandwidth() * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--package", type=Path, help="OUT folder holding the transpiled package (default: transpile now)"
    )
    parser.add_argument("--prompt", type=int, default=32, help="tokens cached per sequence before decoding")
    parser.add_argument("--steps", type=int, default=8, help="decode steps a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's); on a CPU shared with other jobs, OpenMP's spinning threads "
        "make small ops orders of magnitude slower, so 1 gives the figures that mean something there",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = llama.CONFIGS[os.environ.get("SERVING_CONFIG", "tiny")]
    dtype = getattr(torch, os.environ.get("SERVING_DTYPE", "float32"))
    device = args.device
    name = "serving_llama" if device == "cpu" else "serving_llama_cuda"
    if args.prompt + args.steps > config.max_blocks_per_seq * serving_ops.BLOCK_SIZE:
        raise SystemExit(
            f"--prompt + --steps must fit a sequence's {config.max_blocks_per_seq * serving_ops.BLOCK_SIZE} positions"
        )

    model = llama.build(config, dtype).to(device)
    modes = {"eager": model}
    notes = []
    try:
        out = args.package or transpile(Path(tempfile.mkdtemp(prefix="serving-throughput-")), device, name)
        sys.path.insert(0, str(out))
        package = __import__(name)
        loaded = package.load(weights=model.state_dict())
        modes["package"] = loaded
    except Exception as error:  # noqa: BLE001  (say why, run the others)
        notes.append(f"package not run: {error}")
        package = loaded = None
    if not args.no_compile:
        modes["torch.compile"] = torch.compile(model, dynamic=True)

    machine = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"{os.cpu_count()}-core CPU, {torch.get_num_threads()} torch thread(s), load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"serving_llama {os.environ.get('SERVING_CONFIG', 'tiny')} {dtype}, {machine}, torch {torch.__version__}; "
        f"{args.prompt}-token prompts, {args.steps} decode steps a round, {args.rounds} rounds"
    )
    for note in notes:
        print(note)
    print("\n| sequences | mode | tokens/s, median (min-max) | x eager |")
    print("| --- | --- | --- | --- |")
    for sequences in [int(n) for n in args.concurrency.split(",")]:
        num_blocks, prefill, decode = decode_plan(config, sequences, args.prompt, args.steps, device)
        prefilled = serving_ops.new_kv_cache(
            num_blocks, dtype, device, layers=config.layers, kv_heads=config.kv_heads, head_dim=config.head_dim
        )
        with torch.no_grad():
            # Prefill sequence by sequence (the prompt fits one call).
            table = prefill[3]
            for s in range(sequences):
                lo, hi = int(prefill[5][s]), int(prefill[5][s + 1])
                model(
                    prefill[0][lo:hi],
                    prefill[1][lo:hi],
                    prefilled,
                    prefill[2][lo:hi],
                    table[s : s + 1],
                    prefill[4][s : s + 1],
                    torch.tensor([0, hi - lo], device=device),
                )
        run_modes = dict(modes)
        if device == "cuda" and loaded is not None:
            for mode in ("piecewise", "full"):
                try:
                    graphed = package.load(weights=model.state_dict())
                    graph_cache = prefilled.clone()
                    graphed.capture(mode=mode, kv_cache=graph_cache)
                    run_modes[f"package, {mode} graphs"] = (graphed, graph_cache)
                except Exception as error:  # noqa: BLE001
                    print(f"| {sequences} | package, {mode} graphs | not run: {str(error).splitlines()[0]} | |")
        caches = {}
        for mode, entry in run_modes.items():
            forward, cache = entry if isinstance(entry, tuple) else (entry, prefilled.clone())
            caches[mode] = (forward, cache)
            with torch.no_grad():
                run_round(
                    forward, cache.clone() if not isinstance(entry, tuple) else cache, decode[:2], device
                )  # warm-up
        times = {mode: [] for mode in caches}
        for _ in range(args.rounds):
            for mode, (forward, cache) in caches.items():
                cache.copy_(prefilled)
                with torch.no_grad():
                    times[mode].append(run_round(forward, cache, decode, device))
        rates = {mode: [sequences * args.steps / t for t in samples] for mode, samples in times.items()}
        eager_median = statistics.median(rates["eager"])
        for mode, samples in rates.items():
            median = statistics.median(samples)
            print(
                f"| {sequences} | {mode} | {median:.0f} ({min(samples):.0f}-{max(samples):.0f}) | {median / eager_median:.2f}x |"
            )
        if device == "cuda":
            floor = floor_us(model, config, sequences, args.prompt + args.steps, dtype)
            print(
                f"| {sequences} | floor (weights + KV read per step / copy bandwidth) | {sequences / (floor / 1e6):.0f} | |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
