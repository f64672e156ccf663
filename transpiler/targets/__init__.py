"""Device targets: what the pipeline asks of the device it compiles for.

Each target (cpu.py: C++ kernels built into CPython extensions; cuda.py: Triton kernels
shipped as cubins, a GPU fingerprint and CUDA-graph wrappers) answers the same few
questions, so the pipeline reads the same for every device. A new device is one module
here and one line in TARGETS; nothing outside this folder compares device names.

Free of torch (the targets' own modules import it when looked up), so that the command
can list the devices before it imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

from ..errors import TranspileError

if TYPE_CHECKING:
    from ..ir import CompiledVariant, Kernel, Package, Variant
    from .cpu_isa import CpuIsa

# Device name (as --device says it) -> "module:class" of its target, imported when looked up.
TARGETS: dict[str, str] = {
    "cpu": "transpiler.targets.cpu:CpuTarget",
    "cuda": "transpiler.targets.cuda:CudaTarget",
}
DEVICES: tuple[str, ...] = tuple(TARGETS)
DEFAULT_DEVICE = "cpu"


class Target(Protocol):
    name: str  # the device, as torch names it ("cpu", "cuda")
    kernel_type: type[Kernel]  # the kind of kernel it compiles: its piece template, files and imports
    init_templates: tuple[str, ...]  # its extensions of __init__.py.jinja (each `{% extends parent_template %}`)

    def check(self, options) -> None:
        """Refuse options this target cannot honour (one line)."""

    def compile_variant(self, group, variant: Variant, dispatch_symbol, symbol_ranges, session=None) -> CompiledVariant:
        """The first piece of `group` (a prepare.PieceGroup) compiled for one variant, its
        kernels of `kernel_type`. `session` (tuning.py), in a tuned transpile: the size to
        compile at, and the Triton configs to measure or replay."""

    def inductor_patches(self, options, tuned: bool) -> dict[str, object]:
        """Inductor settings of this target for `options` (options.Options; tuned: those of
        --autotune and its replays)."""

    def fingerprint(self) -> dict:
        """What the kernels depend on beyond torch and Python (checked at load)."""

    def tuning_identity(self, cpu_isa: CpuIsa) -> dict:
        """What a tuning lockfile's choices hold for besides the device and torch."""

    def build_assumptions(self) -> dict:
        """What the kernels were generated for in place of the transpiling machine's own
        properties (CPU: a thread count and cache sizes); recorded in the manifest."""

    def graphs_context(self, split, capture_sizes: tuple[int, ...] | None):
        """The context of the CUDA-graph wrappers for the split model (prepare.SplitModel) and
        --capture-sizes, or None for a target without them."""

    # Rendering (emit.py): what differs between the targets' packages.

    def extra_modules(self, package: Package, env, common: dict) -> dict[str, str]:
        """Python sources (path -> unformatted source) only this target emits."""

    def cpu_features(self, cpu_isa: CpuIsa) -> tuple[str, ...]:
        """CPU flags the kernels need, which load() checks."""

    def init_context(self, package: Package) -> dict:
        """The target's entries of __init__.py's context."""


def parse_device(text: str) -> str:
    """--device NAME, checked against the table."""
    if text not in TARGETS:
        raise TranspileError(f"--device {text}: choose {' or '.join(DEVICES)}")
    return text


def get_target(device: str) -> Target:
    module_name, _, class_name = TARGETS[parse_device(device)].partition(":")
    return getattr(importlib.import_module(module_name), class_name)()
