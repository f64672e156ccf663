"""The last stage before rendering: the split model and its compiled pieces assembled into
the Package (ir.py) the emitter prints, the stitching function built on the way."""

from __future__ import annotations

import sys

import torch

from . import capture as capture_stage
from . import opaque_attention
from .compiling import CompiledPieces
from .ir import Package
from .options import Options
from .prepare import SplitModel
from .stitching import build_stitch
from .targets import Target
from .tuning import lockfile_text


def assemble_package(
    split: SplitModel, compiled: CompiledPieces, target: Target, options: Options, cuda_graphs
) -> Package:
    captured, dispatch = split.captured, split.dispatch
    stitch = build_stitch(
        captured.graph_module,
        list(split.pieces),
        split.module_of_piece,
        list(captured.user_inputs),
        [w.name for w in captured.weights],
        f"{dispatch.input_name}.size({dispatch.dim})",
        captured.program.call_spec.out_spec,
        split.model_file.path.resolve().parent,
    )
    return Package(
        name=split.name,
        model_file=split.model_file.path.name,
        model_sha256=split.model_file.sha256,
        device=target.name,
        cpu_isa=options.cpu_isa,
        torch_version=torch.__version__.split("+")[0],
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        imports=tuple(options.imports),
        split_ops=split.split_ops,
        dispatch=dispatch,
        variants=compiled.variants,
        inputs=capture_stage.input_specs(captured),
        weights=captured.weights,
        weight_tensors=captured.weight_tensors,
        pieces=compiled.pieces,
        stitch=stitch,
        num_piece_calls=sum(not p.is_split for p in split.pieces),
        num_split_calls=sum(len(p.nodes) for p in split.pieces if p.is_split),
        gpu=target.fingerprint(),
        cuda_graphs=cuda_graphs,
        state=split.state,
        ships_ops=opaque_attention.used_in(captured.graph_module),
        # A tensor-parallel package ships no parameters: rank 0's shards would be wrong for
        # every other rank; load(weights=...) slices each rank's from the full checkpoint.
        weights_embedded=options.embeds_weights and split.tensor_parallel is None,
        checkpoint_prefix=options.checkpoint_prefix,
        custom_op_splitting_ops=split.custom_ops,
        tuning=lockfile_text(split.tuning, compiled.pieces),
        tensor_parallel=split.tensor_parallel,
        exports=split.exports,
        required_ops=split.required_ops,
    )
