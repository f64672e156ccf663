"""The stages in order: load -> capture -> split -> dedupe -> compile per variant ->
rewrite -> stitch -> render. Each stage is its own module; this one only connects them."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import capture as capture_stage
from . import opaque_attention
from .dedupe import group_pieces, shared_names
from .emit import RenderedPackage, render
from .errors import TranspileError
from .inductor import CPU_ISAS, RangeSpecialized, compile_variant, cpp_kernel_files, inductor_config
from .ir import CompiledVariant, Kernel, Package, UniquePiece
from .model_file import load_model_file
from .ranges import make_variants, parse_ranges, parse_sizes
from .rewrite import rewrite_call
from .mutation import find_mutations, state_of
from .split import DEFAULT_SPLIT_OPS, check_split_ops, is_splitting_node, split_graph
from .stitching import build_stitch


@dataclass
class Options:
    model_path: Path
    name: str | None = None
    device: str = "cpu"
    split_ops: list[str] | None = None
    ranges: str | None = None
    sizes: str | None = None
    dispatch_dim: str | None = None
    imports: list[str] = field(default_factory=list)
    cpu_isa: str = "avx2"
    capture_sizes: str | None = None
    static_inputs: list[str] | None = None  # --static-inputs (wins over model.py's)
    weights: str = "embed"  # --weights embed|none
    checkpoint_prefix: str = ""  # --checkpoint-prefix: state-dict key = prefix + checkpoint key


@dataclass
class Summary:
    pieces: int
    unique_pieces: int
    splitting_calls: int
    variants: int
    kernels: int
    seconds: float
    notes: list[str] = field(default_factory=list)  # what the transpiler decided on its own


def package_name(options: Options) -> str:
    name = options.name or options.model_path.stem
    if not name.isidentifier():
        raise TranspileError(f"package name {name!r} is not a Python identifier; pass --name NAME")
    return name


def transpile(options: Options, progress: Callable[[int], object] | None = None) -> tuple[RenderedPackage, Summary]:
    """Everything but writing: returns the rendered package and a summary.

    `progress(total)` is called once with the number of compiles and returns a
    callable invoked after each one.
    """
    started = time.perf_counter()
    if options.device not in ("cpu", "cuda"):
        raise TranspileError(f"--device {options.device}: choose cpu or cuda")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise TranspileError("--device cuda: no CUDA GPU is visible; transpile on the GPU the package will run on")
    if options.weights not in ("embed", "none"):
        raise TranspileError(f"--weights {options.weights}: choose embed or none")
    if options.cpu_isa not in CPU_ISAS:
        raise TranspileError(f"--cpu-isa {options.cpu_isa}: choose one of {', '.join(CPU_ISAS)}")
    name = package_name(options)
    model_file = load_model_file(options.model_path, options.imports)
    split_ops = options.split_ops if options.split_ops is not None else model_file.split_ops
    if split_ops is None:
        split_ops = list(DEFAULT_SPLIT_OPS)
    else:
        if opaque_attention.OP in split_ops:
            opaque_attention.register()
        check_split_ops(split_ops)
    # Attention splits the graph: capture it as one opaque op, so that export never runs
    # sdpa's device meta functions (whose guards can pin the sequence length).
    route_attention = opaque_attention.ATEN_SDPA in split_ops
    if route_attention and opaque_attention.OP not in split_ops:
        split_ops = [*split_ops, opaque_attention.OP]

    captured = capture_stage.export_model(model_file, options.device, route_attention)
    state = _state(captured, split_ops, model_file, options)
    dispatch, dispatch_symbol = capture_stage.resolve_dispatch_dim(captured, options.dispatch_dim)
    ranges = parse_ranges(options.ranges, dispatch)
    variants = make_variants(ranges, parse_sizes(options.sizes, dispatch))
    graphs = None
    if options.device == "cuda":
        graphs = _cuda_graphs_context(name, captured, dispatch, dispatch_symbol, ranges, options.capture_sizes, state)
    elif options.capture_sizes is not None:
        raise TranspileError("--capture-sizes: CUDA graphs need --device cuda")

    pieces = split_graph(captured.graph_module, split_ops)
    custom_ops = custom_op_splitting_ops(pieces)
    groups = group_pieces(pieces)
    unique: list[UniquePiece] = []
    module_of_piece: dict[int, str] = {}
    for number, instances in enumerate(groups.values()):
        module = f"piece_{number}"
        input_names = shared_names([[node.name for node in p.inputs] for p in instances])
        unique.append(
            UniquePiece(
                module_name=module,
                input_names=input_names,
                num_outputs=len(instances[0].outputs),
                call_count=len(instances),
            )
        )
        for piece in instances:
            module_of_piece[piece.index] = module

    variants, notes = _compile_all(unique, groups, variants, dispatch_symbol, captured, options, progress)

    weight_names = [w.name for w in captured.weights]
    stitch = build_stitch(
        captured.graph_module,
        pieces,
        module_of_piece,
        captured.user_inputs,
        weight_names,
        f"{dispatch.input_name}.size({dispatch.dim})",
        captured.program.call_spec.out_spec,
        model_file.path.resolve().parent,
    )
    package = Package(
        name=name,
        model_file=model_file.path.name,
        model_sha256=model_file.sha256,
        device=options.device,
        cpu_isa=options.cpu_isa,
        march=CPU_ISAS[options.cpu_isa]["march"],
        torch_version=torch.__version__.split("+")[0],
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        imports=list(options.imports),
        split_ops=list(split_ops),
        dispatch=dispatch,
        variants=variants,
        inputs=capture_stage.input_specs(captured),
        weights=captured.weights,
        weight_tensors=captured.weight_tensors,
        pieces=unique,
        stitch=stitch,
        num_piece_calls=sum(not p.is_split for p in pieces),
        num_split_calls=sum(len(p.nodes) for p in pieces if p.is_split),
        gpu=_gpu_fingerprint() if options.device == "cuda" else {},
        cuda_graphs=graphs,
        state=state,
        ships_ops=opaque_attention.used_in(captured.graph_module),
        weights_embedded=options.weights == "embed",
        checkpoint_prefix=options.checkpoint_prefix,
        custom_op_splitting_ops=custom_ops,
    )
    rendered = render(package)
    summary = Summary(
        pieces=package.num_piece_calls,
        unique_pieces=len(unique),
        splitting_calls=package.num_split_calls,
        variants=len(variants),
        kernels=sum(1 for p in unique for k in p.kernels if not k.alias_of),
        seconds=time.perf_counter() - started,
        notes=notes + [
            f"splitting op {op} is made with torch.library.custom_op, whose first call imports torch._dynamo "
            "(about 1 s on a CPU, 4 s on a GPU machine); the package fills the wrapper's cache at load() so that "
            "it does not, but torch.library.Library define + impl needs no such step"
            for op in custom_ops
        ],
    )
    return rendered, summary


# How many times a range may be split at Inductor's guards before the transpile gives up.
_MAX_RANGE_SPLITS = 8


def _compile_all(unique, groups, variants, dispatch_symbol, captured, options, progress):
    """Compile every piece for every variant. A range on which Inductor specializes (a guard
    on the dispatch size that fails inside it) is split where the guard flips and compiled
    again, half by half; returns the final variants and a note per split."""
    notes = []
    for _ in range(_MAX_RANGE_SPLITS + 1):
        for piece in unique:
            piece.variants = []
        try:
            _compile_variants(unique, groups, variants, dispatch_symbol, captured, options, progress)
            return variants, notes
        except RangeSpecialized as specialized:
            last_error = specialized
            old = specialized.variant
            parts = specialized.parts
            if len(parts) < 2:
                raise
            position = variants.index(old)
            variants = variants[:position] + make_variants(parts, []) + variants[position + 1 :]
            notes.append(
                f"range {old.range.label()} split into {', '.join(p.label() for p in parts)} "
                f"(Inductor specialized it on `{specialized.guard}`)"
            )
    raise last_error


def _compile_variants(unique, groups, variants, dispatch_symbol, captured, options, progress):
    step = progress(len(unique) * len(variants)) if progress else None
    with inductor_config(options.device, options.cpu_isa):
        for piece, instances in zip(unique, groups.values()):
            first_kernel_with_source: dict[str, str] = {}
            first_variant_with_code: dict[str, str] = {}
            for variant in variants:
                compile_one = _compile_cuda if options.device == "cuda" else _compile_cpu
                compiled = compile_one(instances[0], piece, variant, dispatch_symbol, captured)
                # Ranges often compile to the same code: emit it once, bind the others to it.
                compiled.alias_of = first_variant_with_code.setdefault(compiled.canonical_code, variant.name)
                if compiled.alias_of == variant.name:
                    compiled.alias_of = None
                else:
                    compiled.kernels = []
                # Variants also often compile a kernel to the same C++: ship it once.
                for kernel in compiled.kernels:
                    identity = kernel.source + json.dumps(kernel.metadata, sort_keys=True)
                    kernel.alias_of = first_kernel_with_source.setdefault(identity, kernel.name)
                    if kernel.alias_of == kernel.name:
                        kernel.alias_of = None
                piece.variants.append(compiled)
                if step:
                    step()


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


def _compile_cuda(piece, unique: UniquePiece, variant, dispatch_symbol, captured) -> CompiledVariant:
    from .cuda_kernels import compile_cuda_variant, kernel_manifest, launcher_context
    from .emit import format_python

    output = compile_cuda_variant(piece.graph_module, dispatch_symbol, variant, captured.symbol_ranges)
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


def custom_op_splitting_ops(pieces) -> list[str]:
    """Splitting ops defined with torch.library.custom_op (their wrapper imports Dynamo)."""
    from torch._library.custom_ops import OPDEFS

    names = []
    for piece in pieces:
        for node in piece.nodes if piece.is_split else ():
            if isinstance(node.target, torch._ops.OpOverload):
                name = node.target._schema.name
                if name in OPDEFS and name not in names:
                    names.append(name)
    return names


def _state(captured, split_ops, model_file, options):
    """What the forward writes in place, and which inputs CUDA graphs use by reference."""
    mutations = find_mutations(captured.graph_module, frozenset(split_ops), is_splitting_node)
    declared = options.static_inputs if options.static_inputs is not None else model_file.static_inputs
    where = "--static-inputs" if options.static_inputs is not None else model_file.path.name
    return state_of(
        mutations,
        captured.user_inputs,
        {w.name: w.key for w in captured.weights},
        declared,
        model_file.pad_values,
        where,
    )


def _cuda_graphs_context(name, captured, dispatch, dispatch_symbol, ranges, capture_sizes_text, state):
    """What the emitted cudagraphs.py needs: capture sizes and which dims to pad and slice."""
    from . import cudagraphs

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
