"""The CPU target: Inductor's C++ kernels, shipped as the CPython extensions it built."""

from __future__ import annotations

from pathlib import Path

from ..errors import TranspileError
from ..inductor import compile_variant, cpp_kernel_files
from ..ir import CompiledVariant, Kernel, UniquePiece
from ..rewrite import rewrite_call


class CpuTarget:
    name = "cpu"

    def check(self, options) -> None:
        if options.capture_sizes is not None:
            raise TranspileError("--capture-sizes: CUDA graphs need --device cuda")

    def compile_variant(self, piece, unique, variant, dispatch_symbol, captured) -> CompiledVariant:
        return _compile_cpu(piece, unique, variant, dispatch_symbol, captured)

    def fingerprint(self) -> dict:
        return {}

    def graphs_context(self, name, captured, dispatch, dispatch_symbol, ranges, capture_sizes, state):
        return None


def _compile_cpu(piece, unique: UniquePiece, variant, dispatch_symbol, captured) -> CompiledVariant:
    output = compile_variant(piece.graph_module, dispatch_symbol, variant, captured.symbol_ranges)
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
