"""The emitted packages' runtime: code that is the same in every package, kept here as
ordinary modules (imported, linted and unit-tested as they are) and copied verbatim into
each package, which imports them relatively (`from . import runtime`).

runtime.py: kernels, weights (safetensors read by hand), input checks; ops.py: the opaque
attention op; cuda_runtime.py: cubins launched without Triton; cudagraphs_runtime.py: the
CUDA-graph runner; distributed_runtime.py: tensor-parallel process groups and shards.
What differs by model is rendered beside them (cudagraphs.py, distributed.py, __init__.py).

This file is the tool's, not copied: importing the package imports none of the modules.
"""

from __future__ import annotations

from importlib import resources

# The modules a package may ship, in the order they are listed.
MODULES = (
    "runtime.py",
    "ops.py",
    "cuda_runtime.py",
    "cudagraphs_runtime.py",
    "distributed_runtime.py",
)


def runtime_files(*names: str) -> dict[str, str]:
    """path in the package -> source, for the named modules (copied verbatim)."""
    unknown = [name for name in names if name not in MODULES]
    if unknown:
        raise ValueError(
            f"not a runtime module: {', '.join(unknown)}; choose from {', '.join(MODULES)}"
        )
    folder = resources.files(__name__)
    return {name: folder.joinpath(name).read_text(encoding="utf-8") for name in names}
