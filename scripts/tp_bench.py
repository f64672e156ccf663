#!/usr/bin/env python3
"""Tensor parallel on the CPU: collectives compiled inside the pieces vs. collectives as
splitting ops (called by the stitching function between pieces), on gloo ranks.

    python scripts/tp_bench.py [--world-size 2] [--repeats 200] [--out DIR]

Transpiles examples/llama_tp (tiny config) both ways for --tensor-parallel N, starts N
ranks (one thread each), and times each package's forward per call at decode and prefill
sizes, the two packages interleaved call by call after a barrier; rank 0 prints a markdown
table of medians with min-max (figures from scripts/harness.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    REPO,
    format_ratio,
    import_file,
    import_package,
    markdown_table,
    ratio,
    summarize,
    transpile_command,
)
from harness import format_us as cell

ROOT = REPO
MODEL = ROOT / "examples" / "llama_tp" / "model.py"
SPLIT_COLLECTIVES = "serving::attention,_c10d_functional::all_reduce,_c10d_functional::all_gather_into_tensor"
VARIANTS = {"inside": [], "split": ["--split-ops", SPLIT_COLLECTIVES]}
SIZES = (1, 16, 64)


def timed(run, before=None) -> float:
    """Microseconds of one run(), after before() (a barrier, a synchronize)."""
    if before is not None:
        before()
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1e6


def transpile(out: Path, name: str, world_size: int, extra: list[str]) -> None:
    command = transpile_command(
        MODEL,
        out,
        "--name",
        name,
        "--import",
        "serving_ops",
        "--tensor-parallel",
        str(world_size),
        "--ranges",
        "1-16,17-64",
        "--sizes",
        "1",
        "-q",
        *extra,
    )
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def rank_main(spec_path: str, rank: int) -> int:
    """One rank: load the packages, time them interleaved, rank 0 prints the table."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    out, *paths = spec["paths"]
    sys.path[:0] = paths
    reference = import_file(MODEL, "llama_tp_reference")  # before the group exists: the full model, the checkpoint
    state = reference.model.state_dict()
    dist.init_process_group("gloo", init_method=f"file://{spec['store']}", rank=rank, world_size=spec["world_size"])
    models = {name: import_package(out, f"llama_tp_{name}", paths).load(weights=state) for name in VARIANTS}
    config = reference.CONFIG
    samples = {(name, size): [] for name in VARIANTS for size in SIZES}
    for size in SIZES:
        ids = torch.randint(0, config.vocab, (1, size), generator=torch.Generator().manual_seed(size))
        positions = torch.arange(size).unsqueeze(0)
        caches = {name: reference.new_kv_cache(config, world=spec["world_size"]) for name in VARIANTS}
        for repeat in range(spec["repeats"] + 10):
            for name, model in models.items():
                run = lambda: model(ids, positions, caches[name], positions[0])  # noqa: E731
                elapsed = timed(run, dist.barrier)
                if repeat >= 10:  # warm-up calls aside
                    samples[(name, size)].append(elapsed)
    if rank == 0:
        rows = [
            [
                size,
                cell(samples[("inside", size)]),
                cell(samples[("split", size)]),
                format_ratio(
                    ratio(summarize(samples[("split", size)])["median"], summarize(samples[("inside", size)])["median"])
                ),
            ]
            for size in SIZES
        ]
        print(
            markdown_table(
                ["tokens", "collectives inside pieces", "collectives as splitting ops", "split / inside"], rows
            )
        )
    dist.destroy_process_group()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, help="transpile into DIR (default: a temporary folder)")
    parser.add_argument("--rank", nargs=2, metavar=("SPEC", "RANK"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.rank:
        return rank_main(options.rank[0], int(options.rank[1]))
    with tempfile.TemporaryDirectory(prefix="tp-bench-") as scratch:
        out = options.out or Path(scratch)
        for name, extra in VARIANTS.items():
            transpile(out, f"llama_tp_{name}", options.world_size, extra)
        spec = Path(scratch) / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "world_size": options.world_size,
                    "repeats": options.repeats,
                    "store": str(Path(scratch) / "store"),
                    "paths": [str(out), str(ROOT / "examples" / "serving_llama")],
                }
            )
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
        ranks = [
            subprocess.Popen([sys.executable, __file__, "--rank", str(spec), str(rank)], env=env)
            for rank in range(options.world_size)
        ]
        return max(rank.wait() for rank in ranks)


if __name__ == "__main__":
    sys.exit(main())
