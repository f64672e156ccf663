"""The CPU target: Inductor's C++ kernels, shipped as the CPython extensions it built."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

from ..errors import TranspileError
from ..inductor import CPU_ISAS, compile_variant, cpp_kernel_files
from ..ir import CompiledVariant, Kernel, UniquePiece
from ..rewrite import rewrite_call
from ..tuning import TUNING_PATCHES


# CPU flags (as /proc/cpuinfo names them) that code built for each x86-64 level may use.
_X86_64_V3 = ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "sse4_1", "sse4_2", "ssse3", "popcnt")
CPU_FEATURES = {
    "avx2": _X86_64_V3,
    "avx512": _X86_64_V3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
}
# For --cpu-isa native: the vector extensions of this machine, all of which gcc may use.
_NATIVE_CANDIDATES = CPU_FEATURES["avx512"] + (
    "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx512vbmi", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
)


# What Inductor's C++ code generation would otherwise read off the transpiling machine: the
# number of threads (how many loop levels to parallelize, how a GEMM is partitioned) and the
# per-core cache sizes (GEMM blocking). Fixed here, so that the emitted bytes are the same on
# every machine; the kernels still run on however many threads the process has
# (`cpp.dynamic_threads`: OpenMP's count at run time). Recorded in the manifest.
BUILD_ASSUMPTIONS = {"threads": 8, "l1d_cache_bytes": 32768, "l2_cache_bytes": 524288}


@contextlib.contextmanager
def assumed_cpu_caches():
    """torch.cpu.get_capabilities() with the cache sizes of BUILD_ASSUMPTIONS."""
    import torch

    real = torch.cpu.get_capabilities

    def capabilities():
        return {
            **real(),
            "l1d_cache_size": BUILD_ASSUMPTIONS["l1d_cache_bytes"],
            "l2_cache_size": BUILD_ASSUMPTIONS["l2_cache_bytes"],
        }

    torch.cpu.get_capabilities = capabilities
    try:
        yield
    finally:
        torch.cpu.get_capabilities = real


@contextlib.contextmanager
def build_paths_mapped():
    """Kernel binaries that do not embed where torch and Python are installed: Inductor's
    compile flags plus `-ffile-prefix-map` (gcc >= 8, clang >= 10) mapping torch's folder to
    `torch` and Python's include folder to `python` (torch's headers expand `__FILE__` into
    the binary's strings). The flags are part of Inductor's cache key for the binary."""
    import sysconfig

    import torch
    import torch._inductor.cpp_builder as cpp_builder

    real = getattr(cpp_builder, "_get_optimization_cflags", None)
    if real is None:  # another torch: its binaries may embed these folders
        yield
        return
    mapped = (
        (str(Path(torch.__file__).resolve().parent), "torch"),
        (sysconfig.get_paths()["include"], "python"),
    )
    flags = [f"ffile-prefix-map={folder}=" + name for folder, name in mapped]

    def optimization_cflags(*args, **kwargs):
        cflags, ldflags = real(*args, **kwargs)
        return cflags + flags, ldflags

    cpp_builder._get_optimization_cflags = optimization_cflags
    try:
        yield
    finally:
        cpp_builder._get_optimization_cflags = real


def cpu_features(cpu_isa: str) -> tuple[str, ...]:
    if platform.machine() not in ("x86_64", "AMD64"):
        return ()
    if cpu_isa in CPU_FEATURES:
        return CPU_FEATURES[cpu_isa]
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return ()
    return tuple(flag for flag in _NATIVE_CANDIDATES if flag in flags)



class CpuTarget:
    name = "cpu"

    # --- rendering (emit.py)

    def extra_modules(self, package, env, common: dict) -> dict[str, str]:
        return {}

    def piece_template(self) -> str:
        return "pieces/piece.py.jinja"

    def piece_context(self, piece: UniquePiece, shipped: list[Kernel]) -> dict:
        runtime_names = {n for v in piece.variants for n in v.runtime_names}
        if shipped:
            runtime_names.add("load_kernel")
        return {"runtime_names": sorted(runtime_names)}

    def kernel_files(self, folder: str, kernel: Kernel) -> tuple[dict, dict]:
        return {f"{folder}/{kernel.name}.cpp": kernel.source}, {f"{folder}/{kernel.name}.so": kernel.binary_path}

    def cpu_features(self, cpu_isa: str) -> tuple[str, ...]:
        return cpu_features(cpu_isa)

    def init_template(self) -> str:
        return "__init__.py.jinja"

    def init_context(self, package) -> dict:
        return {}

    # --- the pipeline

    def inductor_patches(self, cpu_isa: str, tuned: bool) -> dict:
        """The x86-64 level the C++ is generated and built for; tuned: GEMMs ATen against
        Inductor's C++ templates (batched matmuls: a plain matmul's template needs constant
        weights, and weights are inputs here)."""
        import torch
        import torch._inductor.config as config

        isa = CPU_ISAS[cpu_isa]
        patches: dict = {}
        if hasattr(config.cpp, "march"):
            patches["cpp.march"] = None if isa["march"] == "native" else isa["march"]
        elif isa["march"] != "native":
            raise TranspileError(
                f"--cpu-isa {cpu_isa} needs torch >= 2.12 (found {torch.__version__}); use --cpu-isa native"
            )
        patches["cpp.simdlen"] = isa["simdlen"]
        patches["cpp.threads"] = BUILD_ASSUMPTIONS["threads"]
        patches["cpp.dynamic_threads"] = True
        if hasattr(config.aot_inductor, "enable_line_tables"):
            # No `-g1` line tables: they embed the build folder (Inductor's cache) and torch's
            # install path, so the same kernel built twice gave different binaries. The C++
            # each binary is built from ships beside it.
            patches["aot_inductor.enable_line_tables"] = False
        if tuned:
            patches.update(TUNING_PATCHES, max_autotune_gemm_backends="ATEN,CPP")
        return patches

    def check(self, options) -> None:
        if options.capture_sizes is not None:
            raise TranspileError("--capture-sizes: CUDA graphs need --device cuda")

    def compile_variant(self, piece, unique, variant, dispatch_symbol, captured, session=None) -> CompiledVariant:
        return _compile_cpu(piece, unique, variant, dispatch_symbol, captured, session)

    def fingerprint(self) -> dict:
        return {}

    def build_assumptions(self) -> dict:
        return dict(BUILD_ASSUMPTIONS)

    def graphs_context(self, name, captured, dispatch, dispatch_symbol, ranges, capture_sizes, state):
        return None


def _compile_cpu(piece, unique: UniquePiece, variant, dispatch_symbol, captured, session=None) -> CompiledVariant:
    hint = session.benchmark_size if session is not None else None
    with assumed_cpu_caches(), build_paths_mapped():
        output = compile_variant(piece.graph_module, dispatch_symbol, variant, captured.symbol_ranges, hint)
    kernel_files = cpp_kernel_files(output.module_globals)
    prefix = f"{variant.name}_"
    rewritten = rewrite_call(output.source_code, variant.name, unique.input_names, prefix)
    kernels = []
    for kernel_name, source in rewritten.kernel_sources.items():
        binary = kernel_files.get(kernel_name)
        if binary is None:
            raise TranspileError(f"Inductor did not build kernel {kernel_name}; this is a bug, run with -v")
        full_source = Path(binary).with_suffix(".cpp")
        kernels.append(
            Kernel(
                name=f"{prefix}{kernel_name}",
                kind="cpp",
                # The exact file the binary was built from, when Inductor kept it.
                source=full_source.read_text() if full_source.is_file() else source,
                binary_path=binary,
            )
        )
    canonical = rewritten.neutral_source + "".join(
        f"\n{name}\n{source}" for name, source in sorted(rewritten.kernel_sources.items())
    )
    return CompiledVariant(
        variant=variant,
        canonical_code=canonical,
        function_source=rewritten.function_source,
        kernels=kernels,
        runtime_names=rewritten.runtime_names,
        module_names=rewritten.module_names,
    )
