#!/usr/bin/env python3
"""The whole GPU check in one go (run on the GPU machine through scripts/gpu-check.sh).

Stages: transpile the examples for cuda; compare with eager at range bounds, exact sizes
(and capture sizes, with and without CUDA graphs, where the package has them); the
nothing-compiles import check in a fresh process; re-transpile determinism; a latency
table per size against eager, torch.compile and torch.compile(mode="reduce-overhead");
time to first output from a fresh process. Prints PASS/FAIL lines and a markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import harness
from harness import REPO, cuda_timings, format_summary, markdown_table, summarize, transpile_command

ROOT = REPO
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from transpiler.treediff import source_files  # noqa: E402

EXAMPLES = json.loads((ROOT / "examples" / "examples.json").read_text())
CUDA_EXAMPLES = ["tiny_llama", "mlp", "custom_op", "hf_llama"]
RESULTS: list[tuple[str, bool, str]] = []


def record(name: str, ok: bool, detail: str = "") -> None:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)


def transpile(name: str, out: Path, extra=()) -> float:
    args = [str(ROOT / a) if a.startswith("examples/") else a for a in EXAMPLES[name]]
    start = time.perf_counter()
    result = subprocess.run(
        transpile_command(args[0], out, *args[1:], "--device", "cuda", "-q", *extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    record(f"transpile {name}", result.returncode == 0, f"{seconds:.1f} s {result.stderr[-2000:]}")
    return seconds


def import_package(out: Path, name: str):
    """The package from OUT (replacing another OUT's package of the same name: the tuned one)."""
    return harness.import_package(out, name, [ROOT / "examples" / "custom_op"])


def eager_model(name: str):
    model_file = harness.load_model_file(ROOT / EXAMPLES[name][0])
    return model_file, model_file.model.eval().cuda()


def check_correctness(name: str, out: Path) -> None:
    from conftest import boundary_sizes, inputs_at

    package = import_package(out, name)
    model_file, eager = eager_model(name)
    compiled = package.load()
    sizes = boundary_sizes(package)
    runners = [("plain", compiled)]
    if hasattr(compiled, "capture"):
        for mode in ("piecewise", "full"):
            graphed = package.load().capture(mode=mode)
            runners.append((f"graphs-{mode}", graphed))
        capture_sizes = importlib.import_module(f"{name}.cudagraphs").CAPTURE_SIZES
        sizes = sorted(set(sizes) | set(capture_sizes))
    worst = {label: 0.0 for label, _ in runners}
    for size in sizes:
        inputs = tuple(t.cuda() for t in inputs_at(model_file.example_inputs, package.INPUTS, size, seed=size))
        with torch.no_grad():
            expected = eager(*inputs)
        for label, runner in runners:
            actual = runner(*inputs)
            error = (actual.float() - expected.float()).abs().max().item()
            worst[label] = max(worst[label], error)
    for label, error in worst.items():
        record(f"eager equality {name} {label}", error < 1e-3, f"max abs error {error:.2e} over {len(sizes)} sizes")


ISOLATED = """
import json, sys, time
start = time.perf_counter()
import torch
after_torch = time.perf_counter()
import {name}
model = {name}.load()
inputs = {inputs}
out = model(*inputs)
torch.cuda.synchronize()
done = time.perf_counter()
bad = sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor", "triton")))
print("RESULT " + json.dumps({{"bad": bad, "first_output_after_torch": done - after_torch, "whole": done - start}}))
"""


def check_isolation(name: str, out: Path, scratch: Path) -> dict:
    inputs = "(torch.tensor([[3, 17, 99, 5, 64]], device='cuda'), torch.arange(5, device='cuda').unsqueeze(0))"
    env = {
        **os.environ,
        "PYTHONPATH": str(out),
        "TRITON_CACHE_DIR": str(scratch / "empty-triton"),
        "TORCHINDUCTOR_CACHE_DIR": str(scratch / "empty-inductor"),
        "CC": "/bin/false",
        "CXX": "/bin/false",
    }
    result = harness.run_fresh(ISOLATED.format(name=name, inputs=inputs), env=env)
    if not result.ok:
        record(f"fresh-process import {name}", False, result.stderr[-1500:])
        return {}
    report = result.result
    empty = not (scratch / "empty-triton").exists() and not (scratch / "empty-inductor").exists()
    record(
        f"fresh-process import {name} compiles nothing",
        not report["bad"] and empty,
        f"modules {report['bad']}, caches untouched {empty}",
    )
    return report


FIRST_OUTPUT = """
import json, sys, time
start = time.perf_counter()
import torch
after_torch = time.perf_counter()
input_ids = torch.tensor([[3, 17, 99, 5, 64]], device="cuda")
positions = torch.arange(5, device="cuda").unsqueeze(0)
{body}
torch.cuda.synchronize()
done = time.perf_counter()
print("RESULT " + json.dumps({{"after_torch": done - after_torch, "whole": done - start}}))
"""
EAGER_BODY = """
import importlib.util
spec = importlib.util.spec_from_file_location("m", "{model}")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
model = m.model.cuda()
{extra}
with torch.no_grad():
    out = model(input_ids, positions)
"""


def time_to_first_output(out: Path, scratch: Path) -> list[str]:
    """Fresh processes, after `import torch` to the first result (and the whole process)."""
    model = ROOT / "examples" / "tiny_llama" / "model.py"
    bodies = {
        "eager": EAGER_BODY.format(model=model, extra=""),
        "torch.compile (warm cache)": EAGER_BODY.format(
            model=model, extra="model = torch.compile(model, dynamic=True)"
        ),
        "emitted package": "import tiny_llama\nout = tiny_llama.load()(input_ids, positions)",
        "emitted package + piecewise graphs": "import tiny_llama\nout = tiny_llama.load(capture=True)(input_ids, positions)",
    }
    env = {**os.environ, "PYTHONPATH": str(out), "TORCHINDUCTOR_CACHE_DIR": str(scratch / "ttfo-cache")}
    rows = []
    for label, body in bodies.items():
        code = FIRST_OUTPUT.format(body=body)
        if "compile" in label:  # warm the cache first
            harness.run_fresh(code, env=env)
        samples = []
        for _ in range(3):
            result = harness.run_fresh(code, env=env)
            if not result.ok:
                record(f"time to first output {label}", False, result.stderr[-1000:])
                break
            samples.append(result.result)
        if samples:
            after = format_summary([s["after_torch"] for s in samples], digits=2)
            whole = format_summary([s["whole"] for s in samples], digits=2)
            rows.append([label, after, whole])
    header = ["path", "after import torch (s), median (min-max) of 3", "whole process (s)"]
    return markdown_table(header, rows).splitlines()


def check_determinism(name: str, first: Path, scratch: Path) -> None:
    second = scratch / "again"
    transpile(name, second)
    a, b = source_files(first / name), source_files(second / name)
    differing = sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))
    record(f"re-transpile determinism {name}", not differing, f"differing: {differing[:5]}")


REPLAY_WITHOUT_BENCHMARKS = """
import sys
from torch._inductor.runtime.triton_heuristics import CachingAutotuner
from torch._inductor.select_algorithm import AlgorithmSelectorCache

def refuse(*args, **kwargs):
    raise AssertionError("a replay of tuning.json benchmarked")

AlgorithmSelectorCache.benchmark = refuse
CachingAutotuner.benchmark_all_configs = refuse
from transpiler.cli import main
sys.exit(main(sys.argv[1:]))
"""


def check_tuning(name: str, scratch: Path) -> None:
    """--autotune on the GPU: Triton configs and GEMM backends measured and recorded; the
    lockfile's replay (benchmarks made to fail) gives the same sources; the tuned package
    equals eager with and without CUDA graphs."""
    tuned, replayed = scratch / "tuned", scratch / "tuned-replay"
    transpile(name, tuned, ["--autotune"])
    lockfile = tuned / name / "tuning.json"
    if not lockfile.is_file():
        record(f"tuning run {name} writes tuning.json", False)
        return
    data = json.loads(lockfile.read_text())
    entries = [entry for variants in data["pieces"].values() for entry in variants.values()]
    gemm = sum(len(entry.get("gemm", {})) for entry in entries)
    triton = sum(len(entry.get("triton", {})) for entry in entries)
    changed = sum(
        1
        for entry in entries
        for choice in [*entry.get("gemm", {}).values(), *entry.get("triton", {}).values()]
        if len(choice["us"]) > 1
    )
    record(
        f"tuning run {name} records choices",
        triton > 0,
        f"{gemm} GEMM and {triton} Triton choices, {changed} among several candidates; {data.get('gpu')}",
    )
    args = [str(ROOT / a) if a.startswith("examples/") else a for a in EXAMPLES[name]]
    replay = transpile_command(args[0], replayed, *args[1:], "--device", "cuda", "-q", "--tuning", str(lockfile))
    replay[1:3] = ["-c", REPLAY_WITHOUT_BENCHMARKS]  # `python -m transpiler.cli` with the benchmarks made to fail
    result = subprocess.run(replay, cwd=ROOT, capture_output=True, text=True)
    a, b = source_files(tuned / name), source_files(replayed / name)
    differing = sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))
    record(
        f"tuning replay {name} without benchmarks is identical",
        result.returncode == 0 and not differing,
        f"rc {result.returncode}, differing: {differing[:5]} {result.stderr[-1500:]}",
    )
    print(lockfile.read_text()[:4000], flush=True)
    check_correctness(name, tuned)


def time_cuda(fn, inputs, repeats=50) -> float:
    """Median microseconds of fn(*inputs) between CUDA events, after 5 warm-up calls."""
    return summarize(cuda_timings(fn, lambda _index: inputs, repeats, warmup=5))["median"]


LATENCY_VARIANTS = [
    "eager",
    "torch.compile",
    "reduce-overhead",
    "package",
    "package + graphs (piecewise)",
    "package + graphs (full)",
]


def latency_worker(name: str, out: Path, label: str) -> None:
    """One variant's latency at each size, in its own process (a crash stays contained)."""
    from conftest import inputs_at

    package = import_package(out, name)
    model_file, eager = eager_model(name)
    runners = {
        "eager": lambda: eager,
        "torch.compile": lambda: torch.compile(eager, dynamic=True),
        "reduce-overhead": lambda: torch.compile(eager, mode="reduce-overhead"),
        "package": lambda: package.load(),
        "package + graphs (piecewise)": lambda: package.load(capture=True, cuda_graphs="piecewise"),
        "package + graphs (full)": lambda: package.load(capture=True, cuda_graphs="full"),
    }
    runner = runners[label]()
    sizes = sorted({1, 8, 16, 64, 256} & set(range(package.DISPATCH["min"], package.DISPATCH["max"] + 1)))
    timings = {}
    with torch.no_grad():
        for size in sizes:
            inputs = tuple(t.cuda() for t in inputs_at(model_file.example_inputs, package.INPUTS, size))
            timings[size] = time_cuda(runner, inputs)
    print("RESULT " + json.dumps(timings))


def latency_table(name: str, out: Path) -> list[str]:
    columns = {}
    for label in LATENCY_VARIANTS:
        result = harness.run_fresh([sys.executable, __file__, "latency-worker", name, str(out), label])
        if not result.ok:
            record(f"latency {label}", False, result.stderr[-800:])
            continue
        columns[label] = result.result
    sizes = sorted({int(size) for column in columns.values() for size in column})
    rows = [[size, *(f"{columns[label].get(str(size), float('nan')):.0f} µs" for label in columns)] for size in sizes]
    return markdown_table(["size", *columns], rows).splitlines()


def main() -> int:
    if sys.argv[1:2] == ["latency-worker"]:
        latency_worker(sys.argv[2], Path(sys.argv[3]), sys.argv[4])
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--stages", default="transpile,correct,isolate,determinism,tuning,latency,first-output")
    options = parser.parse_args()
    stages = set(options.stages.split(","))
    out = options.scratch / "gen"
    print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), flush=True)
    if "transpile" in stages:
        for name in CUDA_EXAMPLES:
            transpile(name, out)
    if "correct" in stages:
        for name in CUDA_EXAMPLES:
            try:
                check_correctness(name, out)
            except Exception as error:  # report and go on to the other checks
                record(f"eager equality {name}", False, repr(error)[:1500])
    report = {}
    if "isolate" in stages:
        report = check_isolation("tiny_llama", out, options.scratch)
    if "determinism" in stages:
        check_determinism("tiny_llama", out, options.scratch)
    if "tuning" in stages:
        try:
            check_tuning("tiny_llama", options.scratch)
        except Exception as error:
            record("tuning", False, repr(error)[:1500])
    table = []
    if "latency" in stages:
        try:
            table = latency_table("tiny_llama", out)
        except Exception as error:
            record("latency table", False, repr(error)[:1500])
    if "first-output" in stages:
        table += ["", *time_to_first_output(out, options.scratch)]
    print("\n".join(table))
    if report:
        print(f"time to first output after import torch (package): {report['first_output_after_torch']:.2f} s")
    failed = [r for r in RESULTS if not r[1]]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
