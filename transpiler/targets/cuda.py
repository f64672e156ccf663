"""The CUDA target: Triton kernels shipped as cubins with launch metadata, the GPU's
fingerprint, and the context of the emitted CUDA-graph wrappers (cudagraphs.py)."""

from __future__ import annotations

import json

import torch

from .. import capture as capture_stage
from ..errors import TranspileError
from ..ir import CompiledVariant, Kernel, UniquePiece
from ..rewrite import rewrite_call
from ..tuning import TUNING_PATCHES


class CudaTarget:
    name = "cuda"

    # --- rendering (emit.py)

    def extra_modules(self, package, env, common: dict) -> dict[str, str]:
        from ..cudagraphs import render_source
        from ..runtime import runtime_files

        return {
            **runtime_files("cuda_runtime.py", "cudagraphs_runtime.py"),
            "cudagraphs.py": render_source(package.cuda_graphs, env),
        }

    def piece_template(self) -> str:
        return "pieces/cuda_piece.py.jinja"

    def piece_context(self, piece: UniquePiece, shipped: list[Kernel]) -> dict:
        cuda_runtime_names = {n for v in piece.variants for n in v.cuda_runtime_names}
        if shipped:
            cuda_runtime_names.add("load_triton_kernel")
        return {
            "runtime_names": sorted({n for v in piece.variants for n in v.runtime_names}),
            "cuda_runtime_names": sorted(cuda_runtime_names),
            "kernels": [k.launch for k in shipped],
        }

    def kernel_files(self, folder: str, kernel: Kernel) -> tuple[dict, dict]:
        text = {
            f"{folder}/{kernel.name}.py": kernel.source,
            f"{folder}/{kernel.name}.json": json.dumps(kernel.metadata, indent=2, sort_keys=True) + "\n",
        }
        return text, {f"{folder}/{kernel.name}.cubin": kernel.binary}

    def cpu_features(self, cpu_isa: str) -> tuple[str, ...]:
        return ()  # the host code is Python and torch alone

    def init_template(self) -> str:
        return "targets/cuda/__init__.py.jinja"

    def init_context(self, package) -> dict:
        return {
            "gpu_literal": repr({k: package.gpu[k] for k in ("arch", "cuda", "triton")}),
            "static_inputs_literal": repr(package.state.static_inputs),
        }

    # --- the pipeline

    def inductor_patches(self, cpu_isa: str, tuned: bool) -> dict:
        import torch._inductor.config as config

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
            return patches
        # One config per kernel, chosen without timing: autotuning picks by benchmark,
        # which would make the emitted launch parameters differ from run to run.
        patches = {"triton.autotune_pointwise": False}
        if hasattr(config, "deterministic"):
            patches["deterministic"] = True
        return patches

    def check(self, options) -> None:
        if not torch.cuda.is_available():
            raise TranspileError("--device cuda: no CUDA GPU is visible; transpile on the GPU the package will run on")

    def compile_variant(self, piece, unique, variant, dispatch_symbol, captured, session=None) -> CompiledVariant:
        return _compile_cuda(piece, unique, variant, dispatch_symbol, captured, session)

    def fingerprint(self) -> dict:
        return _gpu_fingerprint()

    def build_assumptions(self) -> dict:
        return {}

    def graphs_context(self, name, captured, dispatch, dispatch_symbol, ranges, capture_sizes, state):
        return _cuda_graphs_context(name, captured, dispatch, dispatch_symbol, ranges, capture_sizes, state)


def _compile_cuda(piece, unique: UniquePiece, variant, dispatch_symbol, captured, session=None) -> CompiledVariant:
    from ..cuda_kernels import compile_cuda_variant, kernel_manifest, launcher_context
    from ..emit import format_python

    output = compile_cuda_variant(piece.graph_module, dispatch_symbol, variant, captured.symbol_ranges, session)
    prefix = f"{variant.name}_"
    rewritten = rewrite_call(
        output.source_code, variant.name, unique.input_names, prefix, "cuda", output.align_indices
    )
    kernels = []
    for kernel_name, kernel in sorted(output.kernels.items()):
        name = f"{prefix}{kernel_name}"
        kernels.append(
            Kernel(
                name=name,
                kind="triton",
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
        cuda_runtime_names=rewritten.cuda_runtime_names,
    )


def _cuda_graphs_context(name, captured, dispatch, dispatch_symbol, ranges, capture_sizes_text, state):
    """What the emitted cudagraphs.py needs: capture sizes and which dims to pad and slice."""
    from .. import cudagraphs

    sizes = cudagraphs.parse_capture_sizes(capture_sizes_text, ranges[0].lo, ranges[-1].hi)
    return cudagraphs.cudagraphs_context(
        name,
        sizes,
        capture_stage.input_specs(captured),
        dispatch.input_index,
        dispatch.dim,
        cudagraphs.output_dispatch_dims(captured.graph_module, dispatch_symbol),
        cudagraphs.input_dispatch_dims(captured.graph_module, dispatch_symbol, captured.user_inputs),
        state,
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
