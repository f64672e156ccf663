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

    def compile_variant(self, piece, unique, variant, dispatch_symbol, captured):
        """One piece compiled for one variant: an ir.CompiledVariant."""

    def fingerprint(self) -> dict:
        """What the kernels depend on beyond torch and Python (checked at load)."""

    def graphs_context(self, name, captured, dispatch, dispatch_symbol, ranges, capture_sizes, state):
        """The context of the CUDA-graph wrappers, or None for a target without them."""


def get_target(device: str) -> Target:
    if device == "cpu":
        from .cpu import CpuTarget

        return CpuTarget()
    if device == "cuda":
        from .cuda import CudaTarget

        return CudaTarget()
    raise TranspileError(f"--device {device}: choose cpu or cuda")
