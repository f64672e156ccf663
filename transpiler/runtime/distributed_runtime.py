"""Tensor parallelism of a transpiled package: the package is one rank of a model split
across WORLD_SIZE ranks, and its distributed.py binds TensorParallel below to that split.

Every rank runs the same code on its own shards of the weights. The collectives the
compiled pieces call name one process group: load() registers the default process group
under that name (or the group it is given: load(process_group=...)) once it has checked
that the group has WORLD_SIZE ranks.

load() reads this rank's shards (SHARDS in __init__.py: per checkpoint key, the dim it is
split along into WORLD_SIZE equal contiguous blocks, or None where every rank holds it whole):
- weights=: the full checkpoint, as the unsplit model's state_dict() has it: a state dict
  of full tensors, a safetensors file, or a folder of safetensors files (a Hugging Face
  checkpoint, with or without its model.safetensors.index.json). From a file, only this
  rank's block of each tensor is read: the file is mapped and the block copied out, which
  reads the pages that hold it and no others.
- rank_weights=: this rank's shards themselves, a state dict or a safetensors file (what
  model.state_dict() of a loaded rank returns, saved once per rank).
Copied verbatim into every package from transpiler/runtime/ by transpile; do not edit.
"""

import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import _register_process_group, _resolve_process_group

from . import runtime


class TensorParallel:
    """One split of a model: how many ranks, the process group's name, and the package's
    name (the start of every message)."""

    def __init__(
        self, name: str, world_size: int, group_name: str, calls_collectives: bool
    ):
        self.name = name
        self.world_size = world_size
        self.group_name = group_name
        # Whether the forward calls collectives (else, with one rank, no process group is needed).
        self.calls_collectives = calls_collectives

    def bind_process_group(self, process_group=None):
        """The process group the collectives run on, registered under the group name, and
        this process's rank in it."""
        world_size = self.world_size
        if process_group is None:
            if world_size == 1 and not self.calls_collectives:
                return None, 0
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError(
                    f"{self.name} is one rank of a model split across {world_size} ranks: initialise the process group "
                    f"first (torch.distributed.init_process_group, under torchrun --nproc-per-node {world_size}) "
                    "or pass load(process_group=...)"
                )
            process_group = dist.group.WORLD
        size = process_group.size()
        if size != world_size:
            raise ValueError(
                f"{self.name} was transpiled for {world_size} ranks (--tensor-parallel {world_size}), the process group "
                f"has {size}; run it on {world_size} ranks, or transpile again with --tensor-parallel {size}"
            )
        self._register(process_group)
        return process_group, dist.get_rank(process_group)

    def _register(self, process_group) -> None:
        """Register the group under the group name, where torch's collective ops look it up."""
        try:
            bound = _resolve_process_group(self.group_name)
        except RuntimeError:  # not registered yet
            _register_process_group(self.group_name, process_group)
            return
        if bound.group_name != process_group.group_name:
            raise RuntimeError(
                f"{self.name} already runs on process group {bound.group_name!r} in this process and its collectives "
                "run on one group; load every copy with that group (or destroy it first)"
            )

    def rank_tensors(
        self, shards: dict, rank: int, weights=None, rank_weights=None
    ) -> dict:
        """Checkpoint key -> this rank's tensor, from the full checkpoint or this rank's shards.

        shards: key -> (dtype, this rank's shape, split dim or None), as SHARDS in __init__.py.
        """
        if (weights is None) == (rank_weights is None):
            raise TypeError(
                f"{self.name} ships no parameters (each rank holds its own shards): pass the full checkpoint as "
                "load(weights=...) or this rank's shards as load(rank_weights=...), one of the two"
            )
        full = rank_weights is None
        checkpoint = Checkpoint(
            weights if full else rank_weights, "weights" if full else "rank_weights"
        )
        found = checkpoint.tensors(list(shards))
        tensors = {}
        for key, (dtype, shape, dim) in shards.items():
            tensor = found[key]
            expected = self.full_shape_of(shape, dim) if full else shape
            if tuple(tensor.shape) != expected or tensor.dtype != dtype:
                what = "the full checkpoint's" if full else "this rank's"
                raise ValueError(
                    f"{checkpoint.what}: {key!r} is {tensor.dtype} {tuple(tensor.shape)}, {what} must be {dtype} {expected}"
                )
            # the whole tensor is this rank's
            if not full or dim is None or self.world_size == 1:
                tensors[key] = tensor.detach().contiguous()
            elif checkpoint.mapped:
                tensors[key] = self.block_of(
                    tensor, dim, rank
                ).contiguous()  # copies only a strided block
            else:
                # A copy, so that this rank does not keep the caller's full tensor alive.
                tensors[key] = self.block_of(tensor, dim, rank).clone(
                    memory_format=torch.contiguous_format
                )
        return tensors

    def full_shape_of(self, shape: tuple, dim) -> tuple:
        """The unsplit tensor's shape, from one rank's."""
        return tuple(
            size * self.world_size if axis == dim else size
            for axis, size in enumerate(shape)
        )

    def block_of(self, full: torch.Tensor, dim, rank: int) -> torch.Tensor:
        """Rank `rank`'s block of a full tensor along `dim` (a view; the tensor itself if None)."""
        if dim is None:
            return full
        size = full.size(dim) // self.world_size
        return full.narrow(dim, rank * size, size)


class Checkpoint:
    """Tensors by key from a state dict, a safetensors file or a folder of them, found
    through runtime.py's Checkpoint (each header parsed once, the folder's index checked).

    A file's tensors are mapped, not read: a block taken from one (a view) reads only the
    pages that hold it, when it is copied or used.
    """

    def __init__(self, source, what: str):
        self.what = what  # the argument's name, for messages
        if isinstance(source, (str, os.PathLike)) and not Path(source).exists():
            raise FileNotFoundError(
                f"{what}: {source} is neither a safetensors file nor a folder of them"
            )
        self.found = runtime.Checkpoint(source)
        self.mapped = self.found.tensors is None

    def tensors(self, keys: list) -> dict:
        """key -> tensor (mapped from its file, for a checkpoint on disk); one error for what is missing."""
        held = self.found.entries if self.mapped else self.found.tensors
        missing = [key for key in keys if key not in held]
        if missing:
            where = f" in {Path(self.found.where).name}" if self.mapped else ""
            raise KeyError(
                f"{self.what}: missing {missing[0]!r}{where}; {self._hint()}"
            )
        if not self.mapped:
            return {key: held[key] for key in keys}
        by_file = {}
        for key in keys:
            by_file.setdefault(held[key].file, []).append(held[key])
        tensors = {}
        for file, entries in sorted(by_file.items()):
            tensors.update(runtime.map_file(file, entries))
        return tensors

    def _hint(self) -> str:
        if self.what == "weights":
            return "pass the unsplit model's full checkpoint (its state_dict(), or safetensors files)"
        return "pass this rank's shards (model.state_dict() of a loaded rank)"
