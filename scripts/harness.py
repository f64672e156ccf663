"""What the benchmark and GPU scripts share: figures (median, min-max, ratios, markdown
tables), fresh-process runs, the transpile command and its summary, importing an emitted
package from a folder, loading MODEL.py, and the machine's description.

Scripts in this folder `import harness` (their folder is on sys.path when they run);
tests/unit/test_harness.py tests it without a transpile. Only the standard library is
imported at module level (no torch, no statistics): the bench workers import it before
their timers start.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVING_EXAMPLE = REPO / "examples" / "serving_llama"
# The 1.1B bf16 serving decoder the GPU scripts measure (examples/serving_llama/llama.py's "1b").
SERVING_1B_ENV = {"SERVING_CONFIG": "1b", "SERVING_DTYPE": "bfloat16"}


# --- figures ---------------------------------------------------------------------------


def median_min_max(samples: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of a non-empty list of numbers."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return median, ordered[0], ordered[-1]


def summarize(samples, keep_samples: bool = False) -> dict:
    """{"median", "min", "max", "n"} of the samples that are not None (all None when there
    are none); with keep_samples, also the samples themselves (for a JSON record)."""
    values = [value for value in samples if value is not None]
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None}
    median, low, high = median_min_max(values)
    summary = {"median": median, "min": low, "max": high, "n": len(values)}
    if keep_samples:
        summary["samples"] = values
    return summary


def auto_digits(value: float) -> int:
    """Decimals that keep about three significant figures: 0 from 100, 1 from 10, 2 from 1, else 3."""
    magnitude = abs(value)
    return 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 1 else 3


def format_number(value: float | None, unit: str = "", digits: int | None = None) -> str:
    """`12.3 ms`; "n/a" for None; digits chosen by magnitude unless given."""
    if value is None:
        return "n/a"
    if digits is None:
        digits = auto_digits(value)
    return f"{value:.{digits}f}{unit}"


def format_summary(
    summary: dict | list | None,
    scale: float = 1.0,
    unit: str = "",
    digits: int | None = None,
    dash: str = "-",
    single_as_median: bool = False,
) -> str:
    """'12.3 ms (11.0-14.2)': the median with its unit (given with its space: " ms"), then
    the range, all scaled, of a summary or of a list of samples; "n/a" when empty.
    single_as_median: one sample prints as its value alone. Digits by magnitude (each
    number its own) unless given."""
    if isinstance(summary, list):
        summary = summarize(summary)
    if not summary or summary.get("median") is None:
        return "n/a"
    median = format_number(summary["median"] * scale, unit, digits)
    if single_as_median and summary["n"] == 1:
        return median
    low = format_number(summary["min"] * scale, "", digits)
    high = format_number(summary["max"] * scale, "", digits)
    return f"{median} ({low}{dash}{high})"


def format_us(samples: list[float]) -> str:
    """'123 us (110-140)': microsecond timings' median and range, whole microseconds."""
    return format_summary(samples, unit=" us", digits=0)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def format_ratio(value: float | None) -> str:
    """'0.62x', or 'n/a'."""
    return "n/a" if value is None else f"{value:.2f}x"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table; cells are str()-ed."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- fresh processes -------------------------------------------------------------------

RESULT_MARKER = "RESULT "


def result_line(stdout: str, marker: str = RESULT_MARKER) -> dict | None:
    """The JSON of the last stdout line that starts with `marker`, or None."""
    lines = [line for line in stdout.splitlines() if line.startswith(marker)]
    return json.loads(lines[-1][len(marker) :]) if lines else None


@dataclass(frozen=True)
class FreshRun:
    """One command run in a fresh process."""

    wall_s: float  # the harness's wall clock around the whole process
    returncode: int
    stdout: str
    stderr: str
    result: dict | None  # the JSON after the result marker, when the process printed one

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.result is not None


def run_fresh(
    command: list[str] | str,
    env: dict | None = None,
    marker: str = RESULT_MARKER,
    timeout: float | None = None,
    cwd: Path | None = None,
) -> FreshRun:
    """Run a command (a str is Python code for `python -c`) in a fresh process with `env`
    (default: this process's) and return its wall time, output and marked result."""
    if isinstance(command, str):
        command = [sys.executable, "-c", command]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    wall = time.perf_counter() - started
    return FreshRun(wall, done.returncode, done.stdout, done.stderr, result_line(done.stdout, marker))


def interleaved(rounds: int, variants, run) -> dict:
    """{variant: [run(variant), ...]}: `rounds` turns over the variants (A B C A B C ...), so
    that drift on the machine falls on every variant alike; None results are left out."""
    samples = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant in variants:
            value = run(variant)
            if value is not None:
                samples[variant].append(value)
    return samples


# --- the transpiler --------------------------------------------------------------------


def transpile_command(model: Path | str, out: Path | str, *options: str) -> list[str]:
    """`python -m transpiler.cli MODEL -o OUT OPTIONS...` with this interpreter."""
    return [sys.executable, "-m", "transpiler.cli", str(model), "-o", str(out), *options]


# How the GPU scripts compile the 1.1B decoder: decode sizes 1-64 as one range, exact size 1.
SERVING_1B_VARIANTS = ("--ranges", "1-64,65-2048", "--sizes", "1")


def serving_cuda_command(out: Path | str, name: str, *options: str) -> list[str]:
    """`transpile` of the serving example for the GPU as package `name` (its op module
    imported); `options` follow (variants, capture sizes, -j, -q)."""
    model = SERVING_EXAMPLE / "model.py"
    return transpile_command(model, out, "--name", name, "--import", "serving_ops", "--device", "cuda", *options)


SUMMARY = re.compile(
    r"(?P<calls>\d+) piece calls \((?P<unique>\d+) unique\), (?P<split>\d+) splitting-op calls, "
    r"(?P<variants>\d+) variants, (?P<kernels>\d+) kernels in (?P<seconds>[\d.]+) s"
)
STAGE_TIMES = re.compile(r"^\s*time: (?P<stages>.*)$", re.MULTILINE)
STAGE = re.compile(r"(?P<stage>[\w-]+) (?P<seconds>[\d.]+) s")


def parse_transpile_summary(stdout: str) -> dict:
    """The figures of transpile's summary lines (empty when absent): piece calls, unique
    pieces, splitting-op calls, variants, kernels, seconds, and each stage's seconds
    (`stages`, in the order printed) from the `time:` line."""
    figures: dict = {}
    match = SUMMARY.search(stdout)
    if match:
        figures.update(
            piece_calls=int(match["calls"]),
            unique_pieces=int(match["unique"]),
            split_calls=int(match["split"]),
            variants=int(match["variants"]),
            kernels=int(match["kernels"]),
            tool_seconds=float(match["seconds"]),
        )
    times = STAGE_TIMES.search(stdout)
    if times:
        figures["stages"] = {m["stage"]: float(m["seconds"]) for m in STAGE.finditer(times["stages"])}
    return figures


def import_package(parent: Path | str, name: str, paths=()):
    """Import the emitted package `name` from the folder `parent` (and `paths`, where the
    modules its --import names live), dropping a package of that name imported before
    from another folder. The folders stay on sys.path (the package imports lazily)."""
    import importlib

    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]
    for folder in reversed([str(parent), *map(str, paths)]):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def import_file(path: Path | str, module_name: str):
    """A Python file run as a module of its own (a model file whose CONFIG, helpers or
    full-size model a script needs, beyond the transpiler's contract)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_model_file(path: Path | str, imports=()):
    """MODEL.py loaded as the transpiler loads it (transpiler.model_file: its folder on
    sys.path, --import modules first, the contract checked): a ModelFile."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from transpiler.model_file import load_model_file as load

    return load(path, list(imports))


# --- the machine -----------------------------------------------------------------------


def machine_info() -> dict:
    """CPU model, CPUs, cores, memory (lscpu and sysconf; what is unknown is left out)."""
    info: dict = {"cpu_model": platform.processor() or "unknown", "cpus": os.cpu_count()}
    keys = {
        "Model name": "cpu_model",
        "CPU(s)": "cpus",
        "Core(s) per socket": "cores_per_socket",
        "Socket(s)": "sockets",
        "Thread(s) per core": "threads_per_core",
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        field = keys.get(key.strip())
        if field:
            value = value.strip()
            info[field] = value if field == "cpu_model" else int(value) if value.isdigit() else value
    if isinstance(info.get("cores_per_socket"), int) and isinstance(info.get("sockets"), int):
        info["cores"] = info["cores_per_socket"] * info["sockets"]
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def describe_machine(info: dict | None = None) -> str:
    """'AMD EPYC 7B13, 2 cores / 2 CPUs, 23.5 GiB; Linux-...' in one line."""
    info = machine_info() if info is None else info
    memory = f", {info['memory_gib']} GiB" if "memory_gib" in info else ""
    return f"{info.get('cpu_model')}, {info.get('cores', info.get('cpus'))} cores / {info.get('cpus')} CPUs{memory}; {platform.platform()}"


def proc_status_kib(field: str, pid: int | str = "self") -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM...), or None where unreadable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


# --- the GPU (torch imported when called) ----------------------------------------------


def copy_bandwidth() -> float:
    """Device memory copy bandwidth in bytes/s (read + write of a 1 GiB buffer)."""
    import torch

    source = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        target.copy_(source)
    end.record()
    end.synchronize()
    return 2 * 10 * source.numel() / (start.elapsed_time(end) / 1e3)


def cuda_timings(run, make_inputs, repeats: int, warmup: int = 3) -> list[float]:
    """Microseconds of `run(*make_inputs(index))` per call, between CUDA events, after
    `warmup` untimed calls (make_inputs gets the call's index, warm-up calls included)."""
    import torch

    for index in range(warmup):
        run(*make_inputs(index))
    torch.cuda.synchronize()
    samples = []
    for index in range(warmup, warmup + repeats):
        inputs = make_inputs(index)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(*inputs)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3)
    return samples
