"""The CPU target: Inductor's C++ kernels, shipped as the CPython extensions it built."""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from unittest import mock

from ..errors import TranspileError
from ..inductor import compile_variant, cpp_kernel_files
from ..ir import CompiledVariant, Kernel, UniquePiece
from ..rewrite import KernelDialect, rewrite_call
from ..tuning import TUNING_PATCHES
from .cpu_isa import NATIVE_CANDIDATES, CpuIsa

# Inductor's C++ kernels: `name = async_compile.cpp_pybinding(...)`, called as functions.
CPP_DIALECT = KernelDialect(definition="cpp_pybinding")


@dataclass
class CppKernel(Kernel):
    """A C++ kernel built into a CPython extension, shipped with its source beside it."""

    binary_path: str = ""  # where the transpiler found the binary (build-time only)

    piece_template: ClassVar[str] = "pieces/piece.py.jinja"

    def files(self, folder: str) -> tuple[dict[str, str], dict[str, str | bytes]]:
        return {f"{folder}/{self.name}.cpp": self.source}, {f"{folder}/{self.name}.so": self.binary_path}

    @classmethod
    def piece_context(cls, piece: UniquePiece, shipped: list[Kernel]) -> dict[str, object]:
        runtime_names = {n for v in piece.variants for n in v.runtime_names}
        if shipped:
            runtime_names.add("load_kernel")
        return {"runtime_names": sorted(runtime_names)}


# What Inductor's C++ code generation would otherwise read off the transpiling machine: the
# number of threads (how a GEMM is partitioned; whether a loop is worth parallelizing) and
# the per-core cache sizes (GEMM blocking). Fixed here, so that the emitted bytes are the
# same on every machine; the kernels still run on however many threads the process has
# (`cpp.dynamic_threads`: OpenMP's count at run time). A loop nest is parallelized when each
# of `parallel_loop_threads` threads would get Inductor's minimum chunk of work (so decode-
# size kernels stay serial); GEMM templates are partitioned for `threads`. Recorded in the
# manifest.
BUILD_ASSUMPTIONS = {"threads": 8, "parallel_loop_threads": 2, "l1d_cache_bytes": 32768, "l2_cache_bytes": 524288}


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

    return mock.patch.object(torch.cpu, "get_capabilities", capabilities)


def parallel_only_where_worth_it():
    """With `cpp.dynamic_threads`, Inductor opens an OpenMP parallel region in every kernel,
    however little work it has ("let the OMP runtime manage serial vs. parallel"), and waking
    the threads costs more than tiny kernels do (measured: 1.4-1.7x slower decode steps at 2
    threads). Decide each loop nest's parallel depth as without dynamic threads, for
    BUILD_ASSUMPTIONS' `parallel_loop_threads`: small kernels stay serial, as a build for a
    known thread count has them; the regions that remain take OpenMP's thread count at run
    time."""
    import torch._inductor.config as config
    from torch._inductor.codegen.cpp import CppKernel

    real = getattr(CppKernel, "decide_parallel_depth", None)
    if real is None:  # another torch: every kernel gets a parallel region
        return contextlib.nullcontext()

    def decide_parallel_depth(self, max_parallel_depth, threads):
        with config.patch({"cpp.dynamic_threads": False}):
            return real(self, max_parallel_depth, BUILD_ASSUMPTIONS["parallel_loop_threads"])

    return mock.patch.object(CppKernel, "decide_parallel_depth", decide_parallel_depth)


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
        return contextlib.nullcontext()
    mapped = (
        (str(Path(torch.__file__).resolve().parent), "torch"),
        (sysconfig.get_paths()["include"], "python"),
    )
    flags = [f"ffile-prefix-map={folder}=" + name for folder, name in mapped]

    def optimization_cflags(*args, **kwargs):
        cflags, ldflags = real(*args, **kwargs)
        return cflags + flags, ldflags

    return mock.patch.object(cpp_builder, "_get_optimization_cflags", optimization_cflags)


def cpu_features(cpu_isa: CpuIsa) -> tuple[str, ...]:
    if platform.machine() not in ("x86_64", "AMD64"):
        return ()
    if cpu_isa.features is not None:
        return cpu_isa.features
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return ()
    return tuple(flag for flag in NATIVE_CANDIDATES if flag in flags)


class CpuTarget:
    name = "cpu"
    kernel_type = CppKernel
    init_templates: tuple[str, ...] = ()  # the shared __init__.py as it stands

    # --- rendering (emit.py)

    def extra_modules(self, package, env, common: dict) -> dict[str, str]:
        return {}

    def cpu_features(self, cpu_isa: CpuIsa) -> tuple[str, ...]:
        return cpu_features(cpu_isa)

    def init_context(self, package) -> dict:
        return {}

    # --- the pipeline

    def inductor_patches(self, options, tuned: bool) -> dict[str, object]:
        """The x86-64 level the C++ is generated and built for; tuned: GEMMs ATen against
        Inductor's C++ templates (batched matmuls: a plain matmul's template needs constant
        weights, and weights are inputs here)."""
        cpu_isa: CpuIsa = options.cpu_isa
        import torch
        import torch._inductor.config as config

        patches: dict[str, object] = {}
        if hasattr(config.cpp, "march"):
            patches["cpp.march"] = None if cpu_isa.march == "native" else cpu_isa.march
        elif cpu_isa.march != "native":
            raise TranspileError(
                f"--cpu-isa {cpu_isa.name} needs torch >= 2.12 (found {torch.__version__}); use --cpu-isa native"
            )
        patches["cpp.simdlen"] = cpu_isa.simdlen
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

    def compile_variant(self, group, variant, dispatch_symbol, symbol_ranges, session=None) -> CompiledVariant:
        return _compile_cpu(group, variant, dispatch_symbol, symbol_ranges, session)

    def fingerprint(self) -> dict:
        return {}

    def tuning_identity(self, cpu_isa: CpuIsa) -> dict:
        return {"cpu_isa": cpu_isa.name}

    def build_assumptions(self) -> dict:
        return dict(BUILD_ASSUMPTIONS)

    def graphs_context(self, split, capture_sizes):
        return None


def _compile_cpu(group, variant, dispatch_symbol, symbol_ranges, session=None) -> CompiledVariant:
    hint = session.benchmark_size if session is not None else None
    with assumed_cpu_caches(), parallel_only_where_worth_it(), build_paths_mapped():
        output = compile_variant(group.compiled.graph_module, dispatch_symbol, variant, symbol_ranges, hint)
    kernel_files = cpp_kernel_files(output.module_globals)
    prefix = f"{variant.name}_"
    rewritten = rewrite_call(output.source_code, variant.name, list(group.input_names), prefix, CPP_DIALECT)
    kernels = []
    for kernel_name, source in rewritten.kernel_sources.items():
        binary = kernel_files.get(kernel_name)
        if binary is None:
            raise TranspileError(f"Inductor did not build kernel {kernel_name}; this is a bug, run with -v")
        full_source = Path(binary).with_suffix(".cpp")
        kernels.append(
            CppKernel(
                name=f"{prefix}{kernel_name}",
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
