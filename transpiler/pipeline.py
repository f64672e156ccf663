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
from .inductor import CPU_ISAS, RangeSpecialized, inductor_config
from .ir import Package, UniquePiece
from .model_file import load_model_file
from .ranges import make_variants, parse_ranges, parse_sizes
from .mutation import find_mutations, state_of
from .split import DEFAULT_SPLIT_OPS, check_split_ops, is_splitting_node, split_graph
from .stitching import build_stitch
from .targets import get_target


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
    jobs: int = 1  # -j: compile on a pool of this many worker processes
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


@dataclass
class Prepared:
    """Everything before compiling: the captured, split and grouped model. Pool workers
    (parallel.py) prepare the same from the same options, deterministically."""

    name: str
    model_file: object
    split_ops: list[str]
    captured: object
    state: object
    dispatch: object
    dispatch_symbol: object
    ranges: list
    variants: list
    pieces: list
    groups: dict  # structural key -> the pieces that share one module, in order
    unique: list[UniquePiece]
    module_of_piece: dict[int, str]
    custom_ops: list[str]


def prepare(options: Options) -> Prepared:
    """Check the options, load MODEL.py, capture, find state, split and group pieces."""
    if options.weights not in ("embed", "none"):
        raise TranspileError(f"--weights {options.weights}: choose embed or none")
    if options.cpu_isa not in CPU_ISAS:
        raise TranspileError(f"--cpu-isa {options.cpu_isa}: choose one of {', '.join(CPU_ISAS)}")
    get_target(options.device).check(options)
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

    pieces = split_graph(captured.graph_module, split_ops)
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
    return Prepared(
        name=name,
        model_file=model_file,
        split_ops=split_ops,
        captured=captured,
        state=state,
        dispatch=dispatch,
        dispatch_symbol=dispatch_symbol,
        ranges=ranges,
        variants=variants,
        pieces=pieces,
        groups=groups,
        unique=unique,
        module_of_piece=module_of_piece,
        custom_ops=custom_op_splitting_ops(pieces),
    )


def transpile(options: Options, progress: Callable[[int], object] | None = None) -> tuple[RenderedPackage, Summary]:
    """Everything but writing: returns the rendered package and a summary.

    `progress(total)` is called once with the number of compiles and returns a
    callable invoked after each one.
    """
    started = time.perf_counter()
    target = get_target(options.device)
    prepared = prepare(options)
    captured, dispatch = prepared.captured, prepared.dispatch
    graphs = target.graphs_context(
        prepared.name, captured, dispatch, prepared.dispatch_symbol, prepared.ranges, options.capture_sizes, prepared.state
    )
    variants, notes = _compile_all(prepared, target, options, progress)

    stitch = build_stitch(
        captured.graph_module,
        prepared.pieces,
        prepared.module_of_piece,
        captured.user_inputs,
        [w.name for w in captured.weights],
        f"{dispatch.input_name}.size({dispatch.dim})",
        captured.program.call_spec.out_spec,
        prepared.model_file.path.resolve().parent,
    )
    unique, pieces, custom_ops = prepared.unique, prepared.pieces, prepared.custom_ops
    package = Package(
        name=prepared.name,
        model_file=prepared.model_file.path.name,
        model_sha256=prepared.model_file.sha256,
        device=options.device,
        cpu_isa=options.cpu_isa,
        march=CPU_ISAS[options.cpu_isa]["march"],
        torch_version=torch.__version__.split("+")[0],
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        imports=list(options.imports),
        split_ops=list(prepared.split_ops),
        dispatch=dispatch,
        variants=variants,
        inputs=capture_stage.input_specs(captured),
        weights=captured.weights,
        weight_tensors=captured.weight_tensors,
        pieces=unique,
        stitch=stitch,
        num_piece_calls=sum(not p.is_split for p in pieces),
        num_split_calls=sum(len(p.nodes) for p in pieces if p.is_split),
        gpu=target.fingerprint(),
        cuda_graphs=graphs,
        state=prepared.state,
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


def _compile_all(prepared: Prepared, target, options: Options, progress):
    """Compile every piece for every variant. A range on which Inductor specializes (a guard
    on the dispatch size that fails inside it) is split where the guard flips and compiled
    again, half by half; returns the final variants and a note per split."""
    notes = []
    variants = prepared.variants
    for _ in range(_MAX_RANGE_SPLITS + 1):
        for piece in prepared.unique:
            piece.variants = []
        try:
            _compile_variants(prepared, target, variants, options, progress)
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


def compile_task(prepared: Prepared, target, options: Options, piece_index: int, variant):
    """One piece for one variant (in this process or a pool worker)."""
    instances = list(prepared.groups.values())[piece_index]
    with inductor_config(options.device, options.cpu_isa):
        return target.compile_variant(
            instances[0], prepared.unique[piece_index], variant, prepared.dispatch_symbol, prepared.captured
        )


def _compile_variants(prepared: Prepared, target, variants, options: Options, progress):
    tasks = [(index, variant) for index in range(len(prepared.unique)) for variant in variants]
    step = progress(len(tasks)) if progress else None
    jobs = min(options.jobs or 1, len(tasks))
    if jobs > 1:
        from .parallel import compile_in_pool

        results = compile_in_pool(options, tasks, jobs, step)
    else:
        results = []
        for index, variant in tasks:
            results.append(compile_task(prepared, target, options, index, variant))
            if step:
                step()
    # Deduplicated in task order, whatever order the compiles finished in.
    compiled_of = dict(zip(((index, variant.name) for index, variant in tasks), results))
    for index, piece in enumerate(prepared.unique):
        first_kernel_with_source: dict[str, str] = {}
        first_variant_with_code: dict[str, str] = {}
        for variant in variants:
            compiled = compiled_of[index, variant.name]
            # Ranges often compile to the same code: emit it once, bind the others to it.
            compiled.alias_of = first_variant_with_code.setdefault(compiled.canonical_code, variant.name)
            if compiled.alias_of == variant.name:
                compiled.alias_of = None
            else:
                compiled.kernels = []
            # Variants also often compile a kernel to the same source: ship it once.
            for kernel in compiled.kernels:
                identity = kernel.source + json.dumps(kernel.metadata, sort_keys=True)
                kernel.alias_of = first_kernel_with_source.setdefault(identity, kernel.name)
                if kernel.alias_of == kernel.name:
                    kernel.alias_of = None
            piece.variants.append(compiled)


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


