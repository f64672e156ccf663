"""The CUDA target: Triton kernels shipped as cubins with launch metadata, the GPU's
fingerprint, and the context of the emitted CUDA-graph wrappers (cudagraphs.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .. import capture as capture_stage
from .. import cudagraphs
from ..errors import TranspileError
from ..ir import CompiledVariant, Kernel, UniquePiece
from ..rewrite import KernelDialect, rewrite_call
from ..runtime import runtime_files
from ..templating import format_python
from ..tuning import TUNING_PATCHES

# Inductor's Triton kernels: `name = async_compile.triton(...)`, launched by `name.run(...,
# stream=s)`, which becomes a call of the launcher the piece module defines; the names a
# CUDA `call` reads that the emitted cuda_runtime module defines.
TRITON_DIALECT = KernelDialect(
    definition="triton",
    launched=True,
    target_runtime_names=frozenset({"align_inputs", "empty_strided_cuda", "get_raw_stream"}),
)


# A kernel's Triton source ships beside its cubin for review under a name no tool takes for
# a module of the package: it imports Inductor's runtime, which the package never does.
KERNEL_SOURCE_SUFFIX = ".triton"


@dataclass
class CubinKernel(Kernel):
    """A Triton kernel shipped as a cubin, with its Triton source and launch metadata beside it."""

    binary: bytes = b""  # the cubin
    launch: dict[str, object] = field(default_factory=dict)  # what the piece template prints to launch it
    metadata: dict[str, object] = field(default_factory=dict)  # launch metadata written beside the cubin

    piece_template: ClassVar[str] = "pieces/cuda_piece.py.jinja"

    def identity(self) -> str:
        return self.source + json.dumps(self.metadata, sort_keys=True)

    def files(self, folder: str) -> tuple[dict[str, str], dict[str, str | bytes]]:
        text = {
            f"{folder}/{self.name}{KERNEL_SOURCE_SUFFIX}": self.source,
            f"{folder}/{self.name}.json": json.dumps(self.metadata, indent=2, sort_keys=True) + "\n",
        }
        return text, {f"{folder}/{self.name}.cubin": self.binary}

    @classmethod
    def piece_context(cls, piece: UniquePiece, shipped: list[Kernel]) -> dict[str, object]:
        cuda_runtime_names = {n for v in piece.variants for n in v.target_runtime_names}
        if shipped:
            cuda_runtime_names.add("load_triton_kernel")
        return {
            "runtime_names": sorted({n for v in piece.variants for n in v.runtime_names}),
            "cuda_runtime_names": sorted(cuda_runtime_names),
            "kernels": [k.launch for k in shipped],
        }


class CudaTarget:
    name = "cuda"
    kernel_type = CubinKernel
    # __init__.py's blocks for the GPU check, the cubins and CUDA graphs.
    init_templates: tuple[str, ...] = ("targets/cuda/__init__.py.jinja",)

    # --- rendering (emit.py)

    def extra_modules(self, package, env, common: dict) -> dict[str, str]:
        return {
            **runtime_files("cuda_runtime.py", "cudagraphs_runtime.py"),
            "cudagraphs.py": cudagraphs.render_source(package.cuda_graphs, env),
        }

    def cpu_features(self, cpu_isa) -> tuple[str, ...]:
        return ()  # the host code is Python and torch alone

    def init_context(self, package) -> dict:
        return {
            "gpu_literal": repr({k: package.gpu[k] for k in ("arch", "cuda", "triton")}),
            "static_inputs_literal": repr(package.state.static_inputs),
        }

    # --- the pipeline

    def inductor_patches(self, options, tuned: bool) -> dict[str, object]:
        import torch._inductor.config as config

        from .matvec import MatvecPass

        # --matvec reduction: one-row products (an exact size of 1) as fused reductions.
        passes = {"post_grad_custom_pre_pass": MatvecPass()} if options.matvec == "reduction" else {}

        if tuned:
            # Every candidate config of every kernel, and GEMMs cuBLAS (ATen) against Triton
            # templates: benchmarked once, then replayed from tuning.json.
            patches = {
                **TUNING_PATCHES,
                "max_autotune_gemm_backends": "ATEN,TRITON",
                "max_autotune_pointwise": True,
                "triton.autotune_pointwise": True,
                "coordinate_descent_tuning": False,
            }
            if hasattr(config, "deterministic"):
                patches["deterministic"] = False
            return {**patches, **passes}
        # One config per kernel, chosen without timing: autotuning picks by benchmark,
        # which would make the emitted launch parameters differ from run to run.
        patches = {"triton.autotune_pointwise": False, **passes}
        if hasattr(config, "deterministic"):
            patches["deterministic"] = True
        return patches

    def check(self, options) -> None:
        if not torch.cuda.is_available():
            raise TranspileError("--device cuda: no CUDA GPU is visible; transpile on the GPU the package will run on")

    def compile_variant(self, group, variant, dispatch_symbol, symbol_ranges, session=None) -> CompiledVariant:
        return _compile_cuda(group, variant, dispatch_symbol, symbol_ranges, session)

    def fingerprint(self) -> dict:
        return _gpu_fingerprint()

    def tuning_identity(self, cpu_isa) -> dict:
        major, minor = torch.cuda.get_device_capability()
        return {"gpu": torch.cuda.get_device_name(), "arch": major * 10 + minor}

    def build_assumptions(self) -> dict:
        return {}

    def graphs_context(self, split, capture_sizes):
        return _cuda_graphs_context(split, capture_sizes)


def _compile_cuda(group, variant, dispatch_symbol, symbol_ranges, session=None) -> CompiledVariant:
    from ..cuda_kernels import compile_cuda_variant, kernel_manifest, launcher_context

    output = compile_cuda_variant(group.compiled.graph_module, dispatch_symbol, variant, symbol_ranges, session)
    prefix = f"{variant.name}_"
    rewritten = rewrite_call(
        output.source_code, variant.name, list(group.input_names), prefix, TRITON_DIALECT, output.align_indices
    )
    kernels = []
    for kernel_name, kernel in sorted(output.kernels.items()):
        name = f"{prefix}{kernel_name}"
        kernels.append(
            CubinKernel(
                name=name,
                source=f"# Triton source of {name}, kept for review: the package launches the cubin\n"
                "# beside it and never imports this file.\n" + format_python(kernel.source, f"{name}.py"),
                binary=kernel.cubin,
                launch=launcher_context(kernel, name, f"_{name}"),
                metadata=kernel_manifest(kernel),
            )
        )
    # Launch parameters are part of what makes two variants interchangeable.
    canonical = rewritten.neutral_source + "".join(
        f"\n{name}\n{k.source}\n{json.dumps(kernel_manifest(k), sort_keys=True)}"
        for name, k in sorted(output.kernels.items())
    )
    return CompiledVariant(
        variant=variant,
        canonical_code=canonical,
        function_source=rewritten.function_source,
        kernels=kernels,
        runtime_names=rewritten.runtime_names,
        module_names=rewritten.module_names,
        target_runtime_names=rewritten.target_runtime_names,
    )


def _cuda_graphs_context(split, capture_sizes: tuple[int, ...] | None):
    """What the emitted cudagraphs.py needs: capture sizes (the defaults, or those given,
    inside the compiled sizes) and which dims to pad and slice."""
    lo, hi = split.ranges[0].lo, split.ranges[-1].hi
    sizes = cudagraphs.capture_sizes_within(capture_sizes, lo, hi)
    captured = split.captured
    padded = cudagraphs.input_padded_dims(
        captured.graph_module, split.dispatch_symbol, captured.user_inputs, captured.symbol_ranges
    )
    static = set(split.state.static_inputs)
    # Counts of their own (sequences) that non-static inputs are padded along.
    counts = {p.symbol for name, p in zip(captured.user_inputs, padded) if p and not p.dispatch and name not in static}
    return cudagraphs.cudagraphs_context(
        split.name,
        sizes,
        capture_stage.input_specs(captured),
        split.dispatch.input_index,
        split.dispatch.dim,
        cudagraphs.output_dispatch_dims(captured.graph_module, split.dispatch_symbol, counts),
        padded,
        split.state,
        [w.key for w in captured.weights],
    )


def _gpu_fingerprint() -> dict:
    """What the cubins depend on: the GPU's architecture and the CUDA and Triton versions."""
    import importlib.metadata

    major, minor = torch.cuda.get_device_capability()
    return {
        "arch": major * 10 + minor,
        "name": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "triton": importlib.metadata.version("triton"),
    }
