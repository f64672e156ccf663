"""What the command asks for: the options of one transpile, and the package's name.

Free of torch, so that the command can start compile workers before it imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TranspileError


@dataclass
class Options:
    model_path: Path  # MODEL.py, or with hf the Hugging Face folder
    hf: bool = False  # --hf FOLDER: the model is hf_serving's serving form of the folder's decoder
    name: str | None = None
    device: str = "cpu"
    split_ops: list[str] | None = None
    ranges: str | None = None
    sizes: str | None = None
    dispatch_dim: str | None = None
    imports: list[str] = field(default_factory=list)
    cpu_isa: str = "avx2"
    capture_sizes: str | None = None
    static_inputs: list[str] | None = None  # --static-inputs (wins over model.py's)
    weights: str = "embed"  # --weights embed|none
    jobs: int = 1  # -j: compile on this many processes (this one and jobs - 1 workers)
    checkpoint_prefix: str = ""  # --checkpoint-prefix: state-dict key = prefix + checkpoint key
    autotune: bool = False  # --autotune: benchmark Inductor's choices, record them in tuning.json
    tuning: Path | None = None  # --tuning (or OUT/NAME/tuning.json): a lockfile to replay
    tensor_parallel: int | None = None  # --tensor-parallel N: the package is one rank of N


def package_name(options: Options) -> str:
    name = options.name or options.model_path.stem
    if not name.isidentifier():
        raise TranspileError(f"package name {name!r} is not a Python identifier; pass --name NAME")
    return name


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
