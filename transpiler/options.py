"""What the command asks for: the options of one transpile, parsed once, where they enter,
into typed values; and the package's name.

Free of torch, so that the command can start compile workers before it imports torch.
What can only be checked against the captured model (ranges and sizes inside the dispatch
dimension's bounds, capture sizes inside the compiled ones) is checked after capture.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import TranspileError
from .ir import SizeRange
from .targets import DEFAULT_DEVICE
from .targets.cpu_isa import CPU_ISAS, DEFAULT_CPU_ISA, CpuIsa

WEIGHTS_CHOICES = ("embed", "none")
MATVEC_CHOICES = ("reduction", "library")


@dataclass(frozen=True)
class Options:
    model_path: Path  # MODEL.py, or with hf the Hugging Face folder
    hf: bool = False  # --hf FOLDER: the model is hf_serving's serving form of the folder's decoder
    name: str | None = None
    device: str = DEFAULT_DEVICE  # a name of targets.TARGETS (parse_device)
    split_ops: tuple[str, ...] | None = None  # --split-ops (wins over model.py's)
    ranges: tuple[SizeRange, ...] | None = None  # --ranges, sorted and contiguous (None: the whole dim)
    sizes: tuple[int, ...] = ()  # --sizes, sorted, each once
    dispatch_dim: str | None = None  # INPUT:DIM, resolved against the captured inputs
    imports: tuple[str, ...] = ()
    cpu_isa: CpuIsa = CPU_ISAS[DEFAULT_CPU_ISA]
    capture_sizes: tuple[int, ...] | None = None  # --capture-sizes as given (None: the target's defaults)
    static_inputs: tuple[str, ...] | None = None  # --static-inputs (wins over model.py's)
    weights: str = "embed"  # --weights embed|none
    jobs: int = 1  # -j: compile on this many processes (this one and jobs - 1 workers)
    checkpoint_prefix: str = ""  # --checkpoint-prefix: state-dict key = prefix + checkpoint key
    autotune: bool = False  # --autotune: benchmark Inductor's choices, record them in tuning.json
    tuning: Path | None = None  # --tuning (or OUT/NAME/tuning.json): a lockfile to replay
    tensor_parallel: int | None = None  # --tensor-parallel N: the package is one rank of N
    matvec: str = "reduction"  # --matvec: one-row products as fused reductions (cuda), or "library"

    @property
    def embeds_weights(self) -> bool:
        return self.weights == "embed"


def package_name(options: Options) -> str:
    name = options.name or options.model_path.stem
    if not name.isidentifier():
        raise TranspileError(f"package name {name!r} is not a Python identifier; pass --name NAME")
    return name


def parse_names(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated list of names (ops, inputs); None when the option is absent."""
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_ranges(text: str | None) -> tuple[SizeRange, ...] | None:
    """--ranges LO-HI,...: sorted, neither overlapping nor leaving gaps (None: not given)."""
    if text is None:
        return None
    ranges = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not sep or not lo.isdigit() or not hi.isdigit() or int(lo) > int(hi):
            raise TranspileError(
                f"--ranges: {part.strip()!r} is not LO-HI with LO <= HI; write for example 1-16,17-256"
            )
        ranges.append(SizeRange(int(lo), int(hi)))
    ranges.sort()
    for previous, current in itertools.pairwise(ranges):
        if current.lo <= previous.hi:
            raise TranspileError(
                f"--ranges: {previous.label()} and {current.label()} overlap; make each range start after the previous one ends"
            )
        if current.lo > previous.hi + 1:
            raise TranspileError(
                f"--ranges: sizes {previous.hi + 1}-{current.lo - 1} fall between {previous.label()} and "
                f"{current.label()}; make the ranges contiguous"
            )
    return tuple(ranges)


def parse_sizes(text: str | None) -> tuple[int, ...]:
    """--sizes N,...: whole numbers, sorted, each once."""
    if not text:
        return ()
    sizes = set()
    for part in text.split(","):
        if not part.strip().isdigit():
            raise TranspileError(f"--sizes: {part.strip()!r} is not a whole number; write for example 1,8")
        sizes.add(int(part))
    return tuple(sorted(sizes))


def parse_capture_sizes(text: str | None) -> tuple[int, ...] | None:
    """--capture-sizes N,...: whole numbers, as given (the target checks them against the
    compiled sizes: positive, inside them, increasing); None: not given."""
    if text is None:
        return None
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part.lstrip("-").isdigit():
            raise TranspileError(f"--capture-sizes: {part!r} is not a whole number; write for example 1,2,4,8")
        sizes.append(int(part))
    return tuple(sizes)


def parse_weights(text: str) -> str:
    if text not in WEIGHTS_CHOICES:
        raise TranspileError(f"--weights {text}: choose embed or none")
    return text


def parse_world_size(text) -> int | None:
    """--tensor-parallel N: the number of ranks, a whole number >= 1 (None: not given)."""
    if text is None:
        return None
    try:
        size = int(text)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise TranspileError(f"--tensor-parallel {text}: give the number of ranks, a whole number >= 1")
    return size


def available_cores() -> int:
    """The cores this process may run on (its affinity, where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
