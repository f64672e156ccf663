"""The x86-64 levels the CPU target's C++ kernels can be built for: the one table that the
command's choices, Inductor's settings, the manifest and load()'s CPU check all read.

Free of torch, so that the command can list the choices before it imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TranspileError


@dataclass(frozen=True)
class CpuIsa:
    """One --cpu-isa choice. The vector width decides the generated source, so pinning it
    keeps output identical across machines of the same level."""

    name: str  # "avx2": what --cpu-isa says and the manifest records
    march: str  # gcc's -march: "x86-64-v3", or "native" for this machine's own
    simdlen: int | None  # Inductor's vector width in bits (None: this machine's)
    features: tuple[str, ...] | None  # CPU flags (as /proc/cpuinfo names them) the code may use; None: this machine's


# CPU flags that code built for each x86-64 level may use.
_X86_64_V3 = ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "sse4_1", "sse4_2", "ssse3", "popcnt")
_X86_64_V4 = _X86_64_V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")

CPU_ISAS: dict[str, CpuIsa] = {
    isa.name: isa
    for isa in (
        CpuIsa("avx2", "x86-64-v3", 256, _X86_64_V3),
        CpuIsa("avx512", "x86-64-v4", 512, _X86_64_V4),
        CpuIsa("native", "native", None, None),
    )
}
DEFAULT_CPU_ISA = "avx2"

# For --cpu-isa native: the vector extensions of this machine, all of which gcc may use.
NATIVE_CANDIDATES = _X86_64_V4 + (
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx512vbmi",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def parse_cpu_isa(text: str) -> CpuIsa:
    """--cpu-isa NAME, as one of the table's levels."""
    isa = CPU_ISAS.get(text)
    if isa is None:
        raise TranspileError(f"--cpu-isa {text}: choose one of {', '.join(CPU_ISAS)}")
    return isa
