"""Device targets: what the pipeline asks of the device it compiles for.

Each target (cpu.py: C++ kernels built into CPython extensions; cuda.py: Triton kernels
shipped as cubins, a GPU fingerprint and CUDA-graph wrappers) answers the same few
questions, so the pipeline reads the same for every device.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import TranspileError


class Target(Protocol):
    name: str

    def check(self, options) -> None:
        """Refuse options this target cannot honour (one line)."""

    def compile_variant(self, piece, unique, variant, dispatch_symbol, captured, session=None):
        """One piece compiled for one variant: an ir.CompiledVariant. `session` (tuning.py), in a
        tuned transpile: the size to compile at, and the Triton configs to measure or replay."""

    def inductor_patches(self, cpu_isa: str, tuned: bool) -> dict:
        """Inductor settings of this target (tuned: those of --autotune and its replays)."""

    def fingerprint(self) -> dict:
        """What the kernels depend on beyond torch and Python (checked at load)."""

    def build_assumptions(self) -> dict:
        """What the kernels were generated for in place of the transpiling machine's own
        properties (CPU: a thread count and cache sizes); recorded in the manifest."""

    def graphs_context(self, name, captured, dispatch, dispatch_symbol, ranges, capture_sizes, state):
        """The context of the CUDA-graph wrappers, or None for a target without them."""

    # Rendering (emit.py): what differs between the targets' packages.

    def extra_modules(self, package, env, common: dict) -> dict:
        """Python sources (path -> unformatted source) only this target emits."""

    def piece_template(self) -> str:
        """The template of one piece module."""

    def piece_context(self, piece, shipped) -> dict:
        """Names a piece module imports and what it defines for its kernels."""

    def kernel_files(self, folder: str, kernel) -> tuple[dict, dict]:
        """Text files and binaries (a path to copy, or bytes) of one shipped kernel."""

    def cpu_features(self, cpu_isa: str) -> tuple:
        """CPU flags the kernels need, which load() checks."""

    def init_template(self) -> str:
        """The template of __init__.py: the shared one, or one extending its blocks."""

    def init_context(self, package) -> dict:
        """The target's entries of __init__.py's context."""


def get_target(device: str) -> Target:
    if device == "cpu":
        from .cpu import CpuTarget

        return CpuTarget()
    if device == "cuda":
        from .cuda import CudaTarget

        return CudaTarget()
    raise TranspileError(f"--device {device}: choose cpu or cuda")
