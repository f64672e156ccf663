"""Tensor parallelism at transpile time (--tensor-parallel N).

The model file describes one rank of a model split across N ranks: it sizes its shards
with torch.distributed.get_world_size() and combines the ranks' partial results with
functional collectives (torch.distributed._functional_collectives), which torch.export
captures as `_c10d_functional` ops and Inductor compiles inside pieces. Transpiling needs
no N GPUs: the model file is loaded and compiled under a fake process group of N ranks
(torch's own, for tests), this process being rank 0; every rank runs the same code.

Jobs, one function each:
- `fake_process_group`: the fake group while the model is loaded, exported and compiled,
  registered under the package's group name too; rank queries from the model refused;
- `retarget_collectives`: the captured collectives name the fake group; point them at the
  package's group name instead, which load() binds to the real process group;
- `shards_of`: how each checkpoint tensor is split, read from `parameter.tp_dim`;
- `with_wait_ops`: collectives made splitting ops take their `wait_tensor` with them.

The command parses --tensor-parallel in options.py (free of torch); this process and every
compile worker (parallel.py) enter `fake_process_group` through pipeline.distributed_context.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.fx

from .errors import TranspileError
from .ir import Shard, Weight

# Namespace of the functional collectives' ops; what they are called on is a group name.
COLLECTIVES = "_c10d_functional"
WAIT = f"{COLLECTIVES}::wait_tensor"
# The attribute a model file sets on a sharded parameter or buffer (vLLM: set_weight_attrs).
SHARD_ATTRIBUTE = "tp_dim"
_TORCH_DIR = str(Path(torch.__file__).parent)


def group_name_for(package: str) -> str:
    """The name compiled collectives use: the package's, so that two packages never collide."""
    return f"{package}:tp"


@contextlib.contextmanager
def fake_process_group(world_size: int, group_name: str):
    """A fake default process group of `world_size` ranks, this process rank 0, also
    registered under `group_name`; torn down afterwards. Yields the default group's name."""
    import torch.distributed as dist

    if not dist.is_available():
        raise TranspileError("--tensor-parallel: this torch was built without torch.distributed")
    if dist.is_initialized():
        raise TranspileError(
            "--tensor-parallel: a process group is already initialised in the transpiler's process; "
            "transpile in a process of its own"
        )
    from torch._C._distributed_c10d import _register_process_group
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        group = dist.group.WORLD
        _register_process_group(group_name, group)
        with _rank_queries_refused():
            yield group.group_name
    finally:
        dist.destroy_process_group()  # also unregisters every name, group_name included


@contextlib.contextmanager
def _rank_queries_refused():
    """The traced code is the same on every rank, so the model must not depend on its rank:
    torch.distributed.get_rank() called from outside torch raises while transpiling."""
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    original = c10d.get_rank

    def get_rank(*args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if not caller.startswith(_TORCH_DIR):
            raise TranspileError(
                f"{Path(caller).name} asks for its rank (torch.distributed.get_rank()) while transpiling with "
                "--tensor-parallel; every rank runs the same traced code, so compute nothing from the rank: "
                "split weights with `parameter.tp_dim` and combine results with collectives"
            )
        return original(*args, **kwargs)

    dist.get_rank = c10d.get_rank = get_rank
    try:
        yield
    finally:
        dist.get_rank = c10d.get_rank = original


def _namespace(node: torch.fx.Node) -> str | None:
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return None
    return node.target._schema.name.partition("::")[0]


def retarget_collectives(
    graph_module: torch.fx.GraphModule, traced_group: str, group_name: str
) -> tuple[tuple[str, int], ...]:
    """Make the captured collectives call `group_name` where they named the traced default
    group. Refuses collectives on any other group, and torch.distributed's in-place ones.
    Returns (op, calls) per collective op, waits left out."""
    calls: Counter = Counter()
    for node in graph_module.graph.nodes:
        namespace = _namespace(node)
        if namespace in ("c10d", "c10d_functional"):
            raise TranspileError(
                f"the forward calls {node.target._schema.name}; use the functional collectives of "
                "torch.distributed._functional_collectives (all_reduce, all_gather_tensor), which compile "
                "into the package"
            )
        if namespace != COLLECTIVES:
            continue
        schema = node.target._schema
        if schema.name == WAIT:
            continue
        position = next((i for i, a in enumerate(schema.arguments) if a.name == "group_name"), None)
        if position is None:
            raise TranspileError(f"collective {schema.name} names no process group; this torch is not supported")
        in_args = position < len(node.args)
        current = node.args[position] if in_args else node.kwargs.get("group_name")
        if current != traced_group:
            raise TranspileError(
                f"the forward calls {schema.name} on process group {current!r}, not the default one; "
                "a tensor-parallel package runs all its collectives on one group (load(process_group=...))"
            )
        if in_args:
            node.args = (*node.args[:position], group_name, *node.args[position + 1 :])
        else:
            node.kwargs = {**node.kwargs, "group_name": group_name}
        calls[schema.name] += 1
    graph_module.recompile()
    return tuple(calls.items())


def with_wait_ops(split_ops: list[str]) -> list[str]:
    """A collective split out of the pieces waits for its result in the stitching function
    too: a wait captured in another CUDA graph than its collective cannot run."""
    if any(op.startswith(f"{COLLECTIVES}::") for op in split_ops) and WAIT not in split_ops:
        return [*split_ops, WAIT]
    return split_ops


def marked_dims(model: torch.nn.Module) -> dict[str, object]:
    """State-dict key -> the value of `tp_dim` on that parameter or buffer, where set."""
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {key: getattr(t, SHARD_ATTRIBUTE) for key, t in tensors if getattr(t, SHARD_ATTRIBUTE, None) is not None}


def shards_of(
    weights: list[Weight], tensors: dict[str, torch.Tensor], marked: dict[str, object], where: str
) -> tuple[Shard, ...]:
    """One Shard per checkpoint tensor; a mark on anything else is refused (the package
    ships those tensors, as rank 0 has them, and cannot split them)."""
    shards = []
    for weight in weights:
        tensor = tensors[weight.key]
        dim = marked.get(weight.key)
        if dim is not None:
            if not weight.user_supplied:
                raise TranspileError(
                    f"{where}: {weight.key} is marked tp_dim={dim!r} but is not in the model's state_dict "
                    "(a constant or non-persistent buffer), so no checkpoint holds it whole; make it a "
                    "parameter or a persistent buffer, or replicate it"
                )
            if isinstance(dim, bool) or not isinstance(dim, int) or not -tensor.dim() <= dim < tensor.dim():
                raise TranspileError(
                    f"{where}: {weight.key} has tp_dim={dim!r}, not a dim of its shape {tuple(tensor.shape)}; "
                    "set tp_dim to the dim it is split along (0 for output features, 1 for input features)"
                )
            dim %= tensor.dim()
        if weight.user_supplied:
            shards.append(Shard(key=weight.key, dtype=str(tensor.dtype), rank_shape=tuple(tensor.shape), dim=dim))
    return tuple(shards)


def describe(tensor_parallel) -> str:
    """One line for the summary: what is split, and the collectives per forward."""
    split = sum(1 for shard in tensor_parallel.shards if shard.dim is not None)
    calls = ", ".join(f"{count} {op.partition('::')[2]}" for op, count in tensor_parallel.collectives)
    line = (
        f"tensor parallel over {tensor_parallel.world_size} ranks: {split} of {len(tensor_parallel.shards)} "
        f"checkpoint tensors split, the others replicated; collectives per forward: {calls or 'none'}"
    )
    if not tensor_parallel.collectives and tensor_parallel.world_size > 1:
        line += " (the model calls none: does it read torch.distributed.get_world_size()?)"
    return line
