"""The stages before compiling: load MODEL.py, capture, find state, split and group the
pieces. Returns a SplitModel, which the compile stage (compiling.py) takes; compile
workers (parallel.py) prepare the same from the same options, deterministically."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import sympy

from . import capture as capture_stage
from . import foreign_ops, opaque_attention
from . import tensor_parallel as tp
from .capture import Capture
from .dedupe import group_pieces, shared_names
from .errors import TranspileError
from .exports import Exports, build_exports
from .ir import DispatchDim, SizeRange, State, TensorParallel, Variant
from .model_file import ModelFile, load_model_file
from .mutation import find_mutations, state_of
from .options import Options, package_name
from .ranges import make_variants, ranges_within, sizes_within
from .split import (
    DEFAULT_SPLIT_OPS,
    Piece,
    check_split_ops,
    is_splitting_node,
    split_graph,
)
from .targets import Target
from .tuning import Tuning, start_tuning, tuning_header


@dataclass(frozen=True)
class PieceGroup:
    """Structurally identical compiled pieces (the N layers of a transformer): one emitted
    module, called from every place one of them stands."""

    module_name: str  # "piece_0"
    input_names: tuple[str, ...]  # shared by every instance (dedupe.shared_names)
    instances: tuple[Piece, ...]  # in graph order; the first is the one compiled

    @property
    def compiled(self) -> Piece:
        return self.instances[0]


@dataclass(frozen=True)
class SplitModel:
    """The captured model split into pieces and grouped: what the compile stage takes."""

    name: str
    model_file: ModelFile
    split_ops: tuple[str, ...]
    captured: Capture
    state: State
    dispatch: DispatchDim
    dispatch_symbol: sympy.Symbol
    ranges: tuple[SizeRange, ...]  # as asked for (before any split at Inductor's guards)
    variants: tuple[Variant, ...]
    pieces: tuple[Piece, ...]  # every piece in graph order: compiled ones and splitting-op calls
    groups: tuple[PieceGroup, ...]  # the compiled pieces, one group per emitted module
    custom_ops: tuple[str, ...]  # splitting ops made with torch.library.custom_op
    tuning: Tuning | None = None  # a tuned transpile: its run or replay
    tensor_parallel: TensorParallel | None = None  # --tensor-parallel N: the split and the collectives
    exports: Exports | None = None  # what __init__.py re-exports (MODEL.py's `exports`)
    required_ops: tuple[foreign_ops.RequiredOp, ...] = ()  # ops from outside torch the package imports a module for

    @functools.cached_property
    def module_of_piece(self) -> dict[int, str]:
        """Piece index -> the module that computes it."""
        return {piece.index: group.module_name for group in self.groups for piece in group.instances}


def distributed_context(options: Options):
    """What loading, capturing and compiling the model run under: with --tensor-parallel N,
    a fake process group of N ranks (this process rank 0), in this process and in every
    compile worker alike; otherwise nothing."""
    if options.tensor_parallel is None:
        return contextlib.nullcontext()
    return tp.fake_process_group(options.tensor_parallel, tp.group_name_for(package_name(options)))


def prepare(options: Options, target: Target) -> SplitModel:
    """Check the options, load MODEL.py, capture, find state, split and group pieces.
    With --tensor-parallel, runs inside distributed_context(options)."""
    target.check(options)
    if options.tensor_parallel is not None and options.checkpoint_prefix:
        raise TranspileError(
            "--checkpoint-prefix with --tensor-parallel: not supported yet (the ranks slice checkpoint tensors "
            "by their state-dict keys); give the checkpoint the model's own keys"
        )
    tuning = start_tuning(
        options.autotune, options.tuning, lambda: tuning_header(target.name, target.tuning_identity(options.cpu_isa))
    )
    name = package_name(options)
    if options.hf:
        from .hf_serving import load_hf_model_file

        model_file = load_hf_model_file(options.model_path, list(options.imports))
    else:
        # A package that ships no parameters is built from a model without their values.
        fake_parameters = not options.embeds_weights or options.tensor_parallel is not None
        model_file = load_model_file(options.model_path, list(options.imports), fake_parameters=fake_parameters)
    split_ops, route_attention = _split_ops(options, model_file)
    exports = build_exports(model_file.exports, list(options.imports))  # refused before any compile

    marked = tp.marked_dims(model_file.model)
    captured = capture_stage.export_model(model_file, target.name, route_attention, keep_ops=list(split_ops))
    tensor_parallel = None
    if options.tensor_parallel is not None:
        tensor_parallel = _tensor_parallel(captured, marked, name, model_file, options)
    state = _state(captured, split_ops, model_file, options)
    dispatch, dispatch_symbol = capture_stage.resolve_dispatch_dim(captured, options.dispatch_dim)
    ranges = ranges_within(options.ranges, dispatch)
    sizes = sizes_within(options.sizes, dispatch)

    required_ops = tuple(foreign_ops.required_ops(captured.graph_module))
    pieces = tuple(split_graph(captured.graph_module, list(split_ops)))
    groups = tuple(
        PieceGroup(
            module_name=f"piece_{number}",
            input_names=tuple(shared_names([[node.name for node in p.inputs] for p in instances])),
            instances=tuple(instances),
        )
        for number, instances in enumerate(group_pieces(list(pieces)).values())
    )
    variants = make_variants(ranges, sizes)
    if tuning is not None:
        # A replay compiles the lockfile's variants (the tuning run's ranges, as it split them).
        variants = tuple(tuning.plan([group.module_name for group in groups], list(ranges), list(sizes)) or variants)
    return SplitModel(
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
        custom_ops=custom_op_splitting_ops(pieces),
        tuning=tuning,
        tensor_parallel=tensor_parallel,
        exports=exports,
        required_ops=required_ops,
    )


def _split_ops(options: Options, model_file: ModelFile) -> tuple[tuple[str, ...], bool]:
    """The ops to split at (the command's, MODEL.py's or the default attention ops), and
    whether attention is captured as one opaque op."""
    split_ops = options.split_ops if options.split_ops is not None else model_file.split_ops
    if split_ops is None:
        split_ops = list(DEFAULT_SPLIT_OPS)
    else:
        split_ops = list(split_ops)
        if opaque_attention.OP in split_ops:
            opaque_attention.register()
        check_split_ops(split_ops)
        split_ops = tp.with_wait_ops(split_ops)
    # Attention splits the graph: capture it as one opaque op, so that export never runs
    # sdpa's device meta functions (whose guards can pin the sequence length).
    route_attention = opaque_attention.ATEN_SDPA in split_ops
    if route_attention and opaque_attention.OP not in split_ops:
        split_ops = [*split_ops, opaque_attention.OP]
    return tuple(split_ops), route_attention


def custom_op_splitting_ops(pieces) -> tuple[str, ...]:
    """Splitting ops defined with torch.library.custom_op (their wrapper imports Dynamo)."""
    import torch
    from torch._library.custom_ops import OPDEFS

    names = []
    for piece in pieces:
        for node in piece.nodes if piece.is_split else ():
            if isinstance(node.target, torch._ops.OpOverload):
                name = node.target._schema.name
                if name in OPDEFS and name not in names:
                    names.append(name)
    return tuple(names)


def _tensor_parallel(captured, marked, name, model_file, options) -> TensorParallel:
    """Collectives pointed at the package's group name, and how each weight is split."""
    import torch.distributed as dist

    group_name = tp.group_name_for(name)
    collectives = tp.retarget_collectives(captured.graph_module, dist.group.WORLD.group_name, group_name)
    shards = tp.shards_of(list(captured.weights), captured.weight_tensors, marked, model_file.path.name)
    return TensorParallel(
        world_size=options.tensor_parallel, group_name=group_name, shards=shards, collectives=collectives
    )


def _state(captured, split_ops, model_file, options) -> State:
    """What the forward writes in place, and which inputs CUDA graphs use by reference."""
    mutations = find_mutations(captured.graph_module, frozenset(split_ops), is_splitting_node)
    declared = options.static_inputs if options.static_inputs is not None else model_file.static_inputs
    where = "--static-inputs" if options.static_inputs is not None else model_file.path.name
    return state_of(
        mutations,
        list(captured.user_inputs),
        {w.name: w.key for w in captured.weights},
        list(declared) if declared is not None else None,
        model_file.pad_values,
        where,
    )
