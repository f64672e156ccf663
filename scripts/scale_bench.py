#!/usr/bin/env python3
"""Transpile cost as the model grows (issue 17): the serving decoder (examples/serving_llama)
at several configurations, CPU target, `--weights none` and `embed`, `-j 1` and `-j 2`: wall
time per stage and peak RSS of the parent and of its compile workers, in one run, printed
as markdown tables (medians with min-max over --rounds, ratios against the issue's targets).

    python scripts/scale_bench.py [--configs 1b,8b,1b:2,1b:32] [--weights none,embed] [--jobs 1,2]
                                  [--rounds 1] [--cache warm|cold] [--dtype bfloat16] [--out FILE]
    python scripts/scale_bench.py --configs tiny --jobs 1 --weights none --cache-dir DIR [--no-warm-up]   # a smoke run

A configuration is a name (tiny, 1b, 8b) or NAME:LAYERS (the width of NAME at another
depth: 1b:2, 1b:32). Each transpile runs in a fresh process (`python -c`, so that the
spawned workers import nothing of this script) that calls transpiler.cli.main and then
reports its own peak RSS (VmHWM) and its waited-for children's (getrusage
RUSAGE_CHILDREN: the largest worker); meanwhile this process samples the RSS of the whole
process tree from /proc every 0.2 s (all processes together, sampled). Stage times are the
transpile summary's `time:` line. With --cache warm (default) one Inductor cache folder
serves the run, filled first by an untimed `-j 1 --weights none` transpile of each
configuration (--cache-dir keeps it for the next run); --cache cold gives every transpile
an empty one. --weights embed is skipped
for configurations whose weights exceed --max-embed-gb (an 8B model in bf16 writes 16 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness import (
    REPO,
    RESULT_MARKER,
    SERVING_EXAMPLE,
    describe_machine,
    format_number,
    format_ratio,
    format_summary,
    markdown_table,
    parse_transpile_summary,
    proc_status_kib,
    ratio,
    result_line,
    summarize,
)

MODEL = Path(__file__).resolve().parent / "bench_models" / "scale_decoder.py"
# llama.Config fields; the 1b and 8b shapes are Llama's (TinyLlama 1.1B, Llama 3 8B).
CONFIGS = {
    "tiny": {"vocab": 256, "hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 128, "max_tokens": 64},
    "1b": {
        "vocab": 32000,
        "hidden": 2048,
        "layers": 16,
        "heads": 32,
        "kv_heads": 8,
        "ffn": 8192,
        "max_tokens": 2048,
        "max_seqs": 256,
        "max_blocks_per_seq": 256,
    },
    "8b": {
        "vocab": 128256,
        "hidden": 4096,
        "layers": 32,
        "heads": 32,
        "kv_heads": 8,
        "ffn": 14336,
        "max_tokens": 2048,
        "max_seqs": 256,
        "max_blocks_per_seq": 256,
    },
}
# Four variants at every size: two ranges of the token count and two exact sizes.
RANGES = {"tiny": "1-16,17-64", "1b": "1-64,65-2048", "8b": "1-64,65-2048"}
SIZES = "1,8"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The targets (2-core, 24 GB machine); the harness reports against them, never tunes to them.
TARGETS = {
    "8b_vs_1b_time": 1.3,  # --weights none, at most
    "8b_peak_rss_gib": 2.0,  # --weights none, all processes, under
    "32_vs_2_layers_time": 1.2,  # warm cache, -j 1, at most
    "embed_rss_vs_weights": 1.2,  # parent peak RSS / weight bytes, at most
    "j2_vs_j1_speedup": 1.5,  # 1b, at least
}
SAMPLE_EVERY_S = 0.2
# Smaller weights leave the embed-RSS target out: torch and Inductor's own memory would be all of it.
MIN_WEIGHTS_FOR_RSS_TARGET_KIB = 2**18  # 0.25 GiB


# --- configurations ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """One configuration of the decoder: a name (NAME or NAME:LAYERS) and its Config fields."""

    label: str
    base: str
    fields: dict

    @property
    def layers(self) -> int:
        return self.fields["layers"]


def parse_config(text: str) -> Scale:
    """'1b' or '1b:32' -> Scale; unknown names and bad depths are refused."""
    base, _, layers = text.partition(":")
    if base not in CONFIGS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown configuration; give one of {', '.join(CONFIGS)} (or NAME:LAYERS)"
        )
    fields = dict(CONFIGS[base])
    if layers:
        if not layers.isdigit() or int(layers) < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: LAYERS must be a positive whole number, as in 1b:32")
        fields["layers"] = int(layers)
    return Scale(text, base, fields)


def parameter_count(fields: dict) -> int:
    """Parameters of llama.Decoder at these Config fields (embedding and lm_head untied)."""
    hidden, ffn, vocab = fields["hidden"], fields["ffn"], fields["vocab"]
    head_dim = hidden // fields["heads"]
    attention = hidden * fields["heads"] * head_dim * 2 + hidden * fields["kv_heads"] * head_dim * 2
    block = attention + 3 * hidden * ffn + 2 * hidden
    return 2 * vocab * hidden + fields["layers"] * block + hidden


# --- one transpile in a fresh process -----------------------------------------------------

# Runs transpiler.cli.main in this fresh process, then reports its own peak RSS and the
# largest of its waited-for children's (the compile workers, joined by the pool).
CHILD = """
import json, resource, sys
from transpiler.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("RESULT " + json.dumps({"returncode": code, "parent_peak_kib": hwm, "worker_peak_kib": children}), flush=True)
sys.exit(code)
"""


def parent_pids(stat_lines: dict[int, str]) -> dict[int, int]:
    """pid -> parent pid from /proc/PID/stat lines (the name in parentheses may hold spaces
    and parentheses: the fields after the last ')' are state, ppid, ...)."""
    parents = {}
    for pid, line in stat_lines.items():
        fields = line[line.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1].isdigit():
            parents[pid] = int(fields[1])
    return parents


def descendants(root: int, parents: dict[int, int]) -> set[int]:
    """root and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def _stat_lines() -> dict[int, str]:
    lines = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    lines[int(entry)] = stat.read()
            except OSError:
                pass
    return lines


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process tree and each process's VmHWM until stopped."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.peak_total_kib = 0
        self.worker_hwm_kib: dict[int, int] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            total = 0
            for pid in descendants(self.root, parent_pids(_stat_lines())):
                rss = proc_status_kib("VmRSS", pid) or 0
                total += rss
                if pid != self.root:
                    self.worker_hwm_kib[pid] = max(self.worker_hwm_kib.get(pid, 0), proc_status_kib("VmHWM", pid) or 0)
            self.peak_total_kib = max(self.peak_total_kib, total)
            self.stopped.wait(SAMPLE_EVERY_S)


def transpile_once(scale: Scale, weights: str, jobs: int, out: Path, cache: Path, dtype: str) -> dict:
    """One transpile in a fresh process: wall, stage times, peak RSS (parent, largest worker,
    whole tree sampled); raises RuntimeError with the tail of its output when it fails."""
    options = [
        str(MODEL),
        "-o",
        str(out),
        "--name",
        "scale",
        "--import",
        "serving_ops",
        "--ranges",
        RANGES[scale.base],
        "--sizes",
        SIZES,
        "--weights",
        weights,
        "-j",
        str(jobs),
    ]
    env = {
        **os.environ,
        "SCALE_CONFIG": json.dumps(scale.fields),
        "SCALE_DTYPE": dtype,
        "TORCHINDUCTOR_CACHE_DIR": str(cache),
        "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), str(SERVING_EXAMPLE), os.environ.get("PYTHONPATH")] if p),
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, *options],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = TreeSampler(process.pid)
    sampler.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    sampler.stopped.set()
    sampler.join()
    reported = result_line(stdout, RESULT_MARKER)
    if process.returncode != 0 or reported is None:
        raise RuntimeError(f"{scale.label} --weights {weights} -j {jobs} exited {process.returncode}: {stderr[-1500:]}")
    summary = parse_transpile_summary(stdout)
    workers = max([reported["worker_peak_kib"], *sampler.worker_hwm_kib.values()]) if jobs > 1 else 0
    return {
        "wall_s": wall,
        "tool_s": summary.get("tool_seconds"),
        "stages": summary.get("stages", {}),
        "variants": summary.get("variants"),
        "unique_pieces": summary.get("unique_pieces"),
        "parent_peak_kib": reported["parent_peak_kib"],
        "worker_peak_kib": workers,
        "tree_peak_kib": max(sampler.peak_total_kib, reported["parent_peak_kib"]),
        "package_bytes": sum(p.stat().st_size for p in (out / "scale").rglob("*") if p.is_file()),
    }


# --- figures (unit-tested: tests/unit/test_scale_bench.py) -----------------------------------


def run_key(config: str, weights: str, jobs: int) -> str:
    return f"{config} | {weights} | -j {jobs}"


def median_of(runs: dict, key: str, field: str) -> float | None:
    return summarize([run[field] for run in runs.get(key, [])])["median"]


def results_table(runs: dict, scales: dict[str, Scale], dtype: str) -> str:
    """A row per configuration, weights mode and -j: each figure's median (min-max) over rounds."""
    stage_names: list[str] = []
    for samples in runs.values():
        for run in samples:
            stage_names += [s for s in run["stages"] if s not in stage_names]
    header = [
        "config",
        "layers",
        "params",
        "weights",
        "-j",
        "wall s",
        *(f"{s} s" for s in stage_names),
        "parent peak RSS GiB",
        "largest worker GiB",
        "all processes GiB (sampled)",
        "weights GiB",
    ]
    rows = []
    gib = 1 / 2**20  # KiB -> GiB

    def cell(values, scale=1.0, digits=1):
        return format_summary(values, scale, digits=digits, single_as_median=True)

    for key, samples in runs.items():
        config, weights, jobs = key.split(" | ")
        scale = scales[config]
        params = parameter_count(scale.fields)
        rows.append(
            [
                config,
                scale.layers,
                f"{params / 1e9:.2f}B" if params >= 1e8 else f"{params / 1e6:.2f}M",
                weights,
                jobs.removeprefix("-j "),
                cell([r["wall_s"] for r in samples]),
                *(cell([r["stages"].get(s) for r in samples]) for s in stage_names),
                cell([r["parent_peak_kib"] for r in samples], gib, 2),
                cell([r["worker_peak_kib"] for r in samples], gib, 2) if jobs != "-j 1" else "-",
                cell([r["tree_peak_kib"] for r in samples], gib, 2),
                format_number(params * DTYPE_BYTES[dtype] / 2**30, digits=2),
            ]
        )
    return markdown_table(header, rows)


def target_rows(runs: dict, scales: dict[str, Scale], dtype: str) -> list[list[str]]:
    """The issue's targets, for the runs that measure them: [target, measured, status]."""
    rows = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else "met" if ok else "missed"

    def by(base: str, layers: int | None = None) -> list[str]:
        return [c for c, s in scales.items() if s.base == base and (layers is None or s.layers == layers)]

    full_1b = [c for c in by("1b") if scales[c].layers == CONFIGS["1b"]["layers"]]
    for c8 in by("8b"):
        for c1 in full_1b:
            for jobs in (1, 2):
                r = ratio(
                    median_of(runs, run_key(c8, "none", jobs), "wall_s"),
                    median_of(runs, run_key(c1, "none", jobs), "wall_s"),
                )
                if r is not None:
                    rows.append(
                        [
                            f"{c8} / {c1} transpile time, --weights none -j {jobs} <= {TARGETS['8b_vs_1b_time']}x",
                            format_ratio(r),
                            verdict(r <= TARGETS["8b_vs_1b_time"]),
                        ]
                    )
        for jobs in (1, 2):
            peak = median_of(runs, run_key(c8, "none", jobs), "tree_peak_kib")
            if peak is not None:
                gib = peak / 2**20
                rows.append(
                    [
                        f"{c8} peak RSS, all processes, --weights none -j {jobs} < {TARGETS['8b_peak_rss_gib']} GiB",
                        f"{gib:.2f} GiB",
                        verdict(gib < TARGETS["8b_peak_rss_gib"]),
                    ]
                )
    for base in ("tiny", "1b", "8b"):
        depths = sorted({scales[c].layers for c in by(base)})
        if len(depths) > 1:
            shallow, deep = by(base, depths[0])[0], by(base, depths[-1])[0]
            for weights in ("none", "embed"):
                r = ratio(
                    median_of(runs, run_key(deep, weights, 1), "wall_s"),
                    median_of(runs, run_key(shallow, weights, 1), "wall_s"),
                )
                if r is not None:
                    rows.append(
                        [
                            f"{deep} / {shallow} transpile time, --weights {weights} -j 1 <= {TARGETS['32_vs_2_layers_time']}x",
                            format_ratio(r),
                            verdict(r <= TARGETS["32_vs_2_layers_time"]),
                        ]
                    )
    for config, scale in scales.items():
        weight_kib = parameter_count(scale.fields) * DTYPE_BYTES[dtype] / 1024
        if weight_kib < MIN_WEIGHTS_FOR_RSS_TARGET_KIB:
            continue  # the process's own memory (torch, Inductor) would be the whole figure
        for jobs in (1, 2):
            embedded = median_of(runs, run_key(config, "embed", jobs), "parent_peak_kib")
            r = ratio(embedded, weight_kib)
            if r is not None:
                without = median_of(runs, run_key(config, "none", jobs), "parent_peak_kib")
                extra = (
                    ""
                    if without is None
                    else f" (over --weights none: {format_ratio(ratio(embedded - without, weight_kib))})"
                )
                rows.append(
                    [
                        f"{config} --weights embed -j {jobs}: parent peak RSS <= {TARGETS['embed_rss_vs_weights']}x the weights",
                        format_ratio(r) + extra,
                        verdict(r <= TARGETS["embed_rss_vs_weights"]),
                    ]
                )
    for config in full_1b:
        for weights in ("none", "embed"):
            r = ratio(
                median_of(runs, run_key(config, weights, 1), "wall_s"),
                median_of(runs, run_key(config, weights, 2), "wall_s"),
            )
            if r is not None:
                rows.append(
                    [
                        f"{config} --weights {weights}: -j 2 >= {TARGETS['j2_vs_j1_speedup']}x faster than -j 1",
                        format_ratio(r),
                        verdict(r >= TARGETS["j2_vs_j1_speedup"]),
                    ]
                )
    return rows


# --- the run ---------------------------------------------------------------------------------


def plan(
    scales: list[Scale], weights: list[str], jobs: list[int], dtype: str, max_embed_gb: float
) -> tuple[list, list[str]]:
    """(config, weights, jobs) of every timed transpile, and a line for each one skipped."""
    runs, skipped = [], []
    for scale in scales:
        weight_gb = parameter_count(scale.fields) * DTYPE_BYTES[dtype] / 1e9
        for mode in weights:
            if mode == "embed" and weight_gb > max_embed_gb:
                skipped.append(
                    f"{scale.label} --weights embed: {weight_gb:.1f} GB of weights > --max-embed-gb {max_embed_gb:g}"
                )
                continue
            runs += [(scale, mode, j) for j in jobs]
    return runs, skipped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        type=lambda v: [parse_config(c) for c in v.split(",")],
        default=[parse_config(c) for c in ("1b", "8b", "1b:2", "1b:32")],
        help="NAME or NAME:LAYERS, comma-separated (default 1b,8b,1b:2,1b:32; names: " + ", ".join(CONFIGS) + ")",
    )
    parser.add_argument("--weights", default="none,embed", help="--weights modes (default none,embed)")
    parser.add_argument("--jobs", default="1,2", help="-j values (default 1,2)")
    parser.add_argument("--rounds", type=int, default=1, help="times each transpile runs, interleaved (default 1)")
    parser.add_argument("--cache", choices=("warm", "cold"), default="warm")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="with --cache warm: this Inductor cache folder (kept; default: a fresh one in the work folder)",
    )
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="with --cache-dir: the folder is warm already, skip the untimed transpiles",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="bfloat16")
    parser.add_argument(
        "--max-embed-gb", type=float, default=4.0, help="skip --weights embed where the weights are larger (default 4)"
    )
    parser.add_argument("--out", type=Path, help="also write the tables to FILE (and the samples to FILE.json)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed)")
    options = parser.parse_args(argv)
    weights = options.weights.split(",")
    if not set(weights) <= {"none", "embed"}:
        parser.error(f"--weights {options.weights}: give none, embed or none,embed")
    try:
        jobs = [int(j) for j in options.jobs.split(",")]
    except ValueError:
        parser.error(f"--jobs {options.jobs}: give whole numbers such as 1,2")
    if options.no_warm_up and not options.cache_dir:
        parser.error("--no-warm-up needs --cache-dir (a cache folder warmed by an earlier run)")
    if options.rounds < 1:
        parser.error("--rounds must be at least 1")
    scales = {s.label: s for s in options.configs}
    todo, skipped = plan(list(scales.values()), weights, jobs, options.dtype, options.max_embed_gb)
    work = options.work or Path(tempfile.mkdtemp(prefix="scale-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {run_key(s.label, w, j): [] for s, w, j in todo}
    errors = []
    started = time.perf_counter()
    try:
        shared_cache = options.cache_dir or work / "inductor-cache"
        if options.cache == "warm" and not options.no_warm_up:
            for scale in scales.values():
                print(f"warming the Inductor cache: {scale.label}", file=sys.stderr, flush=True)
                try:
                    transpile_once(scale, "none", 1, work / "out", shared_cache, options.dtype)
                except RuntimeError as error:
                    errors.append(f"warm-up {error}")
        for round_index in range(options.rounds):
            for scale, mode, j in todo:
                cache = shared_cache if options.cache == "warm" else Path(tempfile.mkdtemp(prefix="cache-", dir=work))
                try:
                    run = transpile_once(scale, mode, j, work / "out", cache, options.dtype)
                except RuntimeError as error:
                    errors.append(str(error))
                    continue
                finally:
                    if options.cache == "cold":
                        shutil.rmtree(cache, ignore_errors=True)
                runs[run_key(scale.label, mode, j)].append(run)
                print(
                    f"round {round_index + 1}: {scale.label} --weights {mode} -j {j}: {run['wall_s']:.1f} s, "
                    f"stages {run['stages']}, parent {run['parent_peak_kib'] / 2**20:.2f} GiB",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if not options.work:
            shutil.rmtree(work, ignore_errors=True)
    import torch

    runs = {key: samples for key, samples in runs.items() if samples}
    lines = [
        "# Transpile cost by model size (scripts/scale_bench.py)",
        "",
        f"- machine: {describe_machine()}; torch {torch.__version__}",
        f"- serving decoder (scripts/bench_models/scale_decoder.py), {options.dtype}, CPU target, --ranges per config "
        f"({', '.join(f'{k} {v}' for k, v in RANGES.items())}) --sizes {SIZES}: 4 variants",
        f"- Inductor cache: {options.cache}; rounds: {options.rounds} (median (min-max) when more than one); "
        f"total {time.perf_counter() - started:.0f} s",
        f"- command: `{' '.join(['scripts/scale_bench.py', *(argv if argv is not None else sys.argv[1:])])}`",
        "",
        results_table(runs, scales, options.dtype) if runs else "No transpile finished.",
        "",
        "Stage times: the transpile summary's `time:` line; wall: the whole process (interpreter start and "
        "`import torch` included). Peak RSS: the parent's VmHWM and its largest joined worker's "
        "(getrusage RUSAGE_CHILDREN, with the workers' VmHWM sampled); all processes: the process tree's summed "
        "RSS, sampled every 0.2 s (a lower bound). Weights GiB: the parameters at this dtype.",
    ]
    targets = target_rows(runs, scales, options.dtype)
    if targets:
        lines += ["", markdown_table(["target", "measured", "status"], targets)]
    lines += [f"- skipped: {line}" for line in skipped] + [f"- failed: {line.splitlines()[0][:400]}" for line in errors]
    report = "\n".join(lines) + "\n"
    print(report)
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(report)
        options.out.with_suffix(options.out.suffix + ".json").write_text(json.dumps(runs, indent=1) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
