"""transpiler/runtime/distributed_runtime.py directly: one rank's block of each tensor,
from a state dict, a mapped file or the rank's own shards, and the process-group checks."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from transpiler.runtime.distributed_runtime import TensorParallel

SHARDS = {  # key -> (dtype, this rank's shape, split dim)
    "col": (torch.float32, (2, 6), 0),
    "row": (torch.float32, (6, 2), 1),
    "norm": (torch.float32, (6,), None),
}


def full_state():
    generator = torch.Generator().manual_seed(0)
    return {
        "col": torch.randn(4, 6, generator=generator),
        "row": torch.randn(6, 4, generator=generator),
        "norm": torch.randn(6, generator=generator),
    }


def test_shapes_and_blocks():
    split = TensorParallel("pkg", 2, "pkg:tp", True)
    assert split.full_shape_of((2, 6), 0) == (4, 6) and split.full_shape_of((6,), None) == (6,)
    full = torch.arange(24).reshape(4, 6)
    assert split.block_of(full, 0, 1).tolist() == full[2:].tolist()
    assert split.block_of(full, None, 1) is full


@pytest.mark.parametrize("source", ["state_dict", "file"])
def test_each_rank_gets_its_block_and_the_blocks_make_the_whole(tmp_path, source):
    split = TensorParallel("pkg", 2, "pkg:tp", True)
    state = full_state()
    weights = state
    if source == "file":
        weights = str(tmp_path / "full.safetensors")
        safetensors.torch.save_file(state, weights)
    ranks = [split.rank_tensors(SHARDS, rank, weights=weights) for rank in (0, 1)]
    assert torch.equal(torch.cat([r["col"] for r in ranks], 0), state["col"])
    assert torch.equal(torch.cat([r["row"] for r in ranks], 1), state["row"])
    assert all(torch.equal(r["norm"], state["norm"]) for r in ranks)
    for tensors in ranks:
        assert all(t.is_contiguous() for t in tensors.values())
        if source == "state_dict":  # copies: the caller's full tensors are not kept alive
            assert tensors["col"].untyped_storage().data_ptr() != state["col"].untyped_storage().data_ptr()


def test_rank_weights_are_this_ranks_shards(tmp_path):
    split = TensorParallel("pkg", 2, "pkg:tp", True)
    shards = split.rank_tensors(SHARDS, 1, weights=full_state())
    again = split.rank_tensors(SHARDS, 1, rank_weights=shards)
    assert all(torch.equal(again[key], shards[key]) for key in SHARDS)


def test_errors_name_the_argument_and_the_fix(tmp_path):
    split = TensorParallel("pkg", 2, "pkg:tp", True)
    with pytest.raises(TypeError, match="pkg ships no parameters .*one of the two"):
        split.rank_tensors(SHARDS, 0)
    with pytest.raises(TypeError, match="one of the two"):
        split.rank_tensors(SHARDS, 0, weights=full_state(), rank_weights=full_state())
    with pytest.raises(ValueError, match=r"weights: 'col' is torch.float32 \(2, 6\), the full checkpoint's must be"):
        split.rank_tensors(SHARDS, 0, weights={**full_state(), "col": torch.zeros(2, 6)})
    with pytest.raises(KeyError, match="weights: missing 'norm'; pass the unsplit model's full checkpoint"):
        split.rank_tensors(SHARDS, 0, weights={k: v for k, v in full_state().items() if k != "norm"})
    with pytest.raises(FileNotFoundError, match="rank_weights: .* is neither a safetensors file nor a folder"):
        split.rank_tensors(SHARDS, 0, rank_weights=str(tmp_path / "nowhere"))


def test_process_group_checks():
    assert TensorParallel("pkg", 1, "pkg:tp", False).bind_process_group() == (None, 0)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="pkg is one rank of a model split across 2 ranks: initialise"):
        TensorParallel("pkg", 2, "pkg:tp", True).bind_process_group()

    class ThreeRanks:
        def size(self):
            return 3

    with pytest.raises(ValueError, match=r"pkg was transpiled for 2 ranks .* the process group has 3"):
        TensorParallel("pkg", 2, "pkg:tp", True).bind_process_group(ThreeRanks())
