"""The stages in order: load -> capture -> split -> dedupe -> compile per variant ->
rewrite -> stitch -> render. Each stage is its own module; this one only connects them."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import capture as capture_stage
from . import foreign_ops, opaque_attention, piece_transfer
from . import tensor_parallel as tp
from .dedupe import group_pieces, shared_names
from .emit import RenderedPackage, render
from .errors import TranspileError
from .exports import build_exports
from .inductor import CPU_ISAS, RangeSpecialized
from .ir import Package, TensorParallel, UniquePiece
from .parallel import WorkerPool
from .model_file import load_model_file
from .ranges import make_variants, parse_ranges, parse_sizes
from .mutation import find_mutations, state_of
from .options import Options, available_cores, package_name  # noqa: F401  (the command imports them from here too)
from .split import DEFAULT_SPLIT_OPS, check_split_ops, is_splitting_node, split_graph
from .stitching import build_stitch
from .targets import get_target
from .tuning import lockfile_text, start_tuning


@dataclass
class Summary:
    pieces: int
    unique_pieces: int
    splitting_calls: int
    variants: int
    kernels: int
    seconds: float
    notes: list[str] = field(default_factory=list)  # what the transpiler decided on its own
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, in order


@dataclass
class Prepared:
    """Everything before compiling: the captured, split and grouped model."""

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
    tuning: object = None  # tuning.Tuning of a tuned transpile
    tensor_parallel: TensorParallel | None = None  # --tensor-parallel N: the split and the collectives
    required_ops: list = field(default_factory=list)  # foreign_ops.RequiredOp: ops the package imports a module for
    exports: object = None  # exports.Exports: what __init__.py re-exports
    plan: object = None  # piece_transfer.CompilePlan: the unique pieces every process compiles


def distributed_context(options: Options):
    """What loading, capturing and compiling the model run under: with --tensor-parallel N,
    a fake process group of N ranks (this process rank 0), in this process and in every
    compile worker alike; otherwise nothing."""
    if options.tensor_parallel is None:
        return contextlib.nullcontext()
    return tp.fake_process_group(options.tensor_parallel, tp.group_name_for(package_name(options)))


def prepare(options: Options) -> Prepared:
    """Check the options, load MODEL.py, capture, find state, split and group pieces.
    With --tensor-parallel, runs inside distributed_context(options)."""
    if options.weights not in ("embed", "none"):
        raise TranspileError(f"--weights {options.weights}: choose embed or none")
    if options.cpu_isa not in CPU_ISAS:
        raise TranspileError(f"--cpu-isa {options.cpu_isa}: choose one of {', '.join(CPU_ISAS)}")
    get_target(options.device).check(options)
    if options.tensor_parallel is not None and options.checkpoint_prefix:
        raise TranspileError(
            "--checkpoint-prefix with --tensor-parallel: not supported yet (the ranks slice checkpoint tensors "
            "by their state-dict keys); give the checkpoint the model's own keys"
        )
    tuning = start_tuning(options.autotune, options.tuning, options.device, options.cpu_isa)
    name = package_name(options)
    if options.hf:
        from .hf_serving import load_hf_model_file

        model_file = load_hf_model_file(options.model_path, options.imports)
    else:
        # A package that ships no parameters is built from a model without their values.
        fake_parameters = options.weights == "none" or options.tensor_parallel is not None
        model_file = load_model_file(options.model_path, options.imports, fake_parameters=fake_parameters)
    split_ops = options.split_ops if options.split_ops is not None else model_file.split_ops
    if split_ops is None:
        split_ops = list(DEFAULT_SPLIT_OPS)
    else:
        if opaque_attention.OP in split_ops:
            opaque_attention.register()
        check_split_ops(split_ops)
        split_ops = tp.with_wait_ops(split_ops)
    # Attention splits the graph: capture it as one opaque op, so that export never runs
    # sdpa's device meta functions (whose guards can pin the sequence length).
    route_attention = opaque_attention.ATEN_SDPA in split_ops
    if route_attention and opaque_attention.OP not in split_ops:
        split_ops = [*split_ops, opaque_attention.OP]

    exports = build_exports(model_file.exports, list(options.imports))  # refused before any compile
    marked = tp.marked_dims(model_file.model)
    captured = capture_stage.export_model(model_file, options.device, route_attention, keep_ops=split_ops)
    tensor_parallel = None
    if options.tensor_parallel is not None:
        tensor_parallel = _tensor_parallel(captured, marked, name, model_file, options)
    state = _state(captured, split_ops, model_file, options)
    dispatch, dispatch_symbol = capture_stage.resolve_dispatch_dim(captured, options.dispatch_dim)
    ranges = parse_ranges(options.ranges, dispatch)
    sizes = parse_sizes(options.sizes, dispatch)
    variants = make_variants(ranges, sizes)

    required_ops = foreign_ops.required_ops(captured.graph_module)
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
    if tuning is not None:
        # A replay compiles the lockfile's variants (the tuning run's ranges, as it split them).
        variants = tuning.plan([piece.module_name for piece in unique], ranges, sizes) or variants
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
        required_ops=required_ops,
        tuning=tuning,
        tensor_parallel=tensor_parallel,
        exports=exports,
    )


def transpile(
    options: Options, progress: Callable[[int], object] | None = None, pool: WorkerPool | None = None
) -> tuple[RenderedPackage, Summary]:
    """Everything but writing: returns the rendered package and a summary.

    `progress(total)` is called once with the number of compiles and returns a
    callable invoked after each one. `pool`: compile workers already started for these
    options (the command starts them before it imports torch); with -j N and no pool,
    they start here. Either way they capture the model while this process does, and
    are closed before this returns.
    """
    if pool is None and options.jobs > 1:
        pool = WorkerPool(options, options.jobs - 1)
    try:
        with distributed_context(options):
            return _transpile(options, progress, pool)
    finally:
        if pool:
            pool.close()


def _transpile(options: Options, progress, pool) -> tuple[RenderedPackage, Summary]:
    started = time.perf_counter()
    target = get_target(options.device)
    prepared = prepare(options)
    stages = {"capture": time.perf_counter() - started}
    captured, dispatch = prepared.captured, prepared.dispatch
    graphs = target.graphs_context(
        prepared.name, captured, dispatch, prepared.dispatch_symbol, prepared.ranges, options.capture_sizes, prepared.state
    )
    # Captured once: the pieces, packed, are what this process and every worker compile.
    prepared.plan = piece_transfer.plan_of(prepared, options)
    if pool:
        pool.share(prepared.plan)
    variants, notes = _compile_all(prepared, target, options, progress, pool)
    if pool:
        pool.finish()  # workers exit while this process renders
        if pool.mismatched:
            notes.append(
                f"{pool.mismatched} compile worker(s) could not rebuild the pieces (an op they call is "
                "registered by MODEL.py itself, not by an --import module); this process compiled their share"
            )
    stages["compile"] = time.perf_counter() - started - sum(stages.values())

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
        exports=prepared.exports,
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
        # A tensor-parallel package ships no parameters: rank 0's shards would be wrong for
        # every other rank; load(weights=...) slices each rank's from the full checkpoint.
        weights_embedded=options.weights == "embed" and prepared.tensor_parallel is None,
        checkpoint_prefix=options.checkpoint_prefix,
        custom_op_splitting_ops=custom_ops,
        tuning=lockfile_text(prepared.tuning, unique),
        tensor_parallel=prepared.tensor_parallel,
        required_ops=prepared.required_ops,
    )
    rendered = render(package)
    stages["render"] = time.perf_counter() - started - sum(stages.values())
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
        ]
        + ([tp.describe(prepared.tensor_parallel)] if prepared.tensor_parallel else [])
        + foreign_ops.notes(
            captured, prepared.required_ops, [str(prepared.model_file.path.resolve().parent)], options.imports
        ),
        stages=stages,
    )
    return rendered, summary


# How many times a range may be split at Inductor's guards before the transpile gives up.
_MAX_RANGE_SPLITS = 8


def _compile_all(prepared: Prepared, target, options: Options, progress, pool=None):
    """Compile every piece for every variant. A range on which Inductor specializes (a guard
    on the dispatch size that fails inside it) is split where the guard flips and compiled
    again, half by half; returns the final variants and a note per split."""
    notes = []
    variants = prepared.variants
    for _ in range(_MAX_RANGE_SPLITS + 1):
        for piece in prepared.unique:
            piece.variants = []
        try:
            _compile_variants(prepared, target, variants, options, progress, pool)
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
    """One piece for one variant (in this process; pool workers compile the same plan)."""
    return piece_transfer.compile_planned(prepared.plan, target, options, piece_index, variant)


def compile_threads_per_process(jobs: int) -> int | None:
    """With -j N, each process builds kernels on its share of the cores (Inductor's
    default, one thread or Triton process per core, in every process would oversubscribe)."""
    if jobs <= 1:
        return None
    return max(1, available_cores() // jobs)


def _compile_variants(prepared: Prepared, target, variants, options: Options, progress, pool=None):
    tasks = [(index, variant) for index in range(len(prepared.unique)) for variant in variants]
    step = progress(len(tasks)) if progress else None
    if pool:
        results = pool.compile(tasks, lambda task: compile_task(prepared, target, options, *task), step)
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


def _tensor_parallel(captured, marked, name, model_file, options) -> TensorParallel:
    """Collectives pointed at the package's group name, and how each weight is split."""
    import torch.distributed as dist

    group_name = tp.group_name_for(name)
    collectives = tp.retarget_collectives(captured.graph_module, dist.group.WORLD.group_name, group_name)
    shards = tp.shards_of(captured.weights, captured.weight_tensors, marked, model_file.path.name)
    return TensorParallel(
        world_size=options.tensor_parallel, group_name=group_name, shards=shards, collectives=collectives
    )


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


