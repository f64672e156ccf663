"""Tensor parallel (--tensor-parallel N): the package of one rank, run by N processes on the
gloo backend, matches the unsplit model run eagerly over a decode loop with the KV cache;
the split is recorded; load() slices the full checkpoint (state dict, safetensors file or
folder) or takes each rank's own shards, and refuses a group of another size; bad model
files and checkpoints get one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import EXAMPLE_PATHS, EXAMPLES, ROOT, imported_package, load_model_module, run_cli, transpile_once

MODEL = ROOT / "examples" / "llama_tp" / "model.py"
WORLD_SIZE = 2
# Prefill, single tokens, each range's bounds (1-16, 17-64) and the exact size 1.
STEPS = [7, 1, 1, 16, 17, 1, 64, 1, 3]
# Collectives as splitting ops: the stitching function calls them between compiled pieces.
SPLIT_COLLECTIVES = "serving::attention,_c10d_functional::all_reduce,_c10d_functional::all_gather_into_tensor"


@pytest.fixture(scope="module")
def packages(example_out, shared_dir):
    """OUT folders of llama_tp (collectives inside pieces) and llama_tp_split."""
    inside = example_out("llama_tp")
    args = [str(ROOT / a) if a.startswith("examples/") else a for a in EXAMPLES["llama_tp"]]
    args[args.index("--name") + 1] = "llama_tp_split"
    split = transpile_once(shared_dir, "llama_tp_split", [*args, "--split-ops", SPLIT_COLLECTIVES])
    return {"llama_tp": inside, "llama_tp_split": split}


def _write_checkpoints(state: dict, folder) -> tuple:
    """The full checkpoint as one safetensors file, and as a folder of two with an index."""
    from safetensors.torch import save_file

    single = folder / "full.safetensors"
    save_file(state, single)
    sharded = folder / "checkpoint"
    sharded.mkdir()
    keys = sorted(state)
    files = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for file, part in files.items():
        save_file({key: state[key] for key in part}, sharded / file)
    weight_map = {key: file for file, part in files.items() for key in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return single, sharded


def run_ranks(world_size: int, packages: dict, folder) -> list[dict]:
    """Run tests/tp_worker.py on `world_size` gloo ranks; return each rank's RESULT."""
    reference = load_model_module(MODEL)
    single, sharded = _write_checkpoints(reference.model.state_dict(), folder)
    spec = {
        "world_size": world_size,
        "store": str(folder / "store"),
        "model": str(MODEL),
        "paths": [*(str(out) for out in packages.values()), *EXAMPLE_PATHS],
        "packages": list(packages),
        "checkpoint_file": str(single),
        "checkpoint_folder": str(sharded),
        "rank_file": str(folder / "rank{rank}.safetensors"),
        "steps": STEPS,
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "tp_worker.py"), str(folder / "spec.json"), str(rank)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=folder,
        )
        for rank in range(world_size)
    ]
    results = []
    for rank, worker in enumerate(workers):
        try:
            stdout, stderr = worker.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            raise
        assert worker.returncode == 0, f"rank {rank} failed:\n{stderr[-4000:]}"
        (line,) = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        results.append(json.loads(line[len("RESULT ") :]))
    return results


@pytest.fixture(scope="module")
def ranks(packages, tmp_path_factory):
    """Each rank's RESULT, WORLD_SIZE ranks running both packages."""
    return run_ranks(WORLD_SIZE, packages, tmp_path_factory.mktemp("tensor-parallel"))


@pytest.mark.parametrize("name", ["llama_tp", "llama_tp_split"])
def test_decode_loop_on_gloo_matches_unsplit_eager(ranks, name):
    """Each rank's logits equal the unsplit model's, and its cache holds its kv heads' slice."""
    for rank, result in enumerate(ranks):
        entry = result["packages"][name]
        assert entry["rank"] == rank
        decode = entry["decode"]
        assert decode["cache_written"]
        assert decode["logits"] < 1e-4, f"rank {rank}: logits differ by {decode['logits']}"
        assert decode["cache"] < 1e-5, f"rank {rank}: cache differs by {decode['cache']}"


def test_four_ranks_match_unsplit_eager(shared_dir, tmp_path):
    """Nothing assumes two ranks: the same model file split four ways."""
    args = [str(ROOT / a) if a.startswith("examples/") else a for a in EXAMPLES["llama_tp"]]
    args[args.index("--name") + 1] = "llama_tp4"
    args[args.index("--tensor-parallel") + 1] = "4"
    out = transpile_once(shared_dir, "llama_tp4", args)
    results = run_ranks(4, {"llama_tp4": out}, tmp_path)
    assert [result["rank"] for result in results] == [0, 1, 2, 3]
    for rank, result in enumerate(results):
        entry = result["packages"]["llama_tp4"]
        assert entry["decode"]["logits"] < 1e-4 and entry["decode"]["cache"] < 1e-5, (rank, entry["decode"])
        assert entry["from_file"] and entry["from_folder"] and entry["from_rank_file"]
    assert (
        "transpiled for 4 ranks (--tensor-parallel 4), the process group has 1"
        in results[0]["packages"]["llama_tp4"]["wrong_group"]
    )


def test_workers_compile_the_same_bytes_under_their_own_fake_group(example_out, tmp_path):
    """-j N: each compile worker prepares the model under a fake process group of its own;
    llama_tp through two workers (this process compiling nothing) equals its -j 1 transpile."""
    from transpiler.options import Options, parse_ranges, parse_sizes
    from transpiler.parallel import WorkerPool
    from transpiler.pipeline import transpile
    from transpiler.treediff import diff_trees
    from transpiler.write import materialize_to

    args = EXAMPLES["llama_tp"]
    assert args[1:] == [
        "--name",
        "llama_tp",
        "--import",
        "serving_ops",
        "--tensor-parallel",
        "2",
        "--ranges",
        "1-16,17-64",
        "--sizes",
        "1",
    ]
    expected = example_out("llama_tp") / "llama_tp"
    options = Options(
        model_path=ROOT / args[0],
        name="llama_tp",
        imports=("serving_ops",),
        tensor_parallel=2,
        ranges=parse_ranges("1-16,17-64"),
        sizes=parse_sizes("1"),
        jobs=3,
    )
    pool = WorkerPool(options, 2)
    pool.caller_compiles = False
    rendered, _ = transpile(options, pool=pool)
    assert pool.mismatched == 0, "every worker captured the graphs this process did"
    materialize_to(rendered, tmp_path / "llama_tp")
    assert diff_trees(expected, tmp_path / "llama_tp") == []
    import torch.distributed as dist

    assert not dist.is_initialized(), "the fake process group is torn down after the transpile"


def test_weights_from_files_and_per_rank_shards_are_the_same(ranks):
    for result in ranks:
        entry = result["packages"]["llama_tp"]
        assert entry["from_file"], "sliced from a safetensors file"
        assert entry["from_folder"], "sliced from a safetensors folder with an index"
        assert entry["from_rank_file"], "this rank's own safetensors file"
        assert entry["from_rank_state_dict"], "this rank's own state dict"


def test_group_of_another_size_is_refused_with_one_line(ranks):
    message = ranks[0]["packages"]["llama_tp"]["wrong_group"]
    assert message == (
        "llama_tp was transpiled for 2 ranks (--tensor-parallel 2), the process group has 1; "
        "run it on 2 ranks, or transpile again with --tensor-parallel 1"
    )


def test_collectives_import_no_compiler(ranks):
    """Calling the compiled collectives (and the stitching function's) loads no Dynamo or Inductor."""
    for result in ranks:
        assert result["compiler_modules"] == []


def test_split_collectives_are_called_by_the_stitching_function(packages):
    stitch = (packages["llama_tp_split"] / "llama_tp_split" / "stitch.py").read_text()
    assert (
        'torch.ops._c10d_functional.all_reduce.default(\n        linear_3, "sum", "llama_tp_split:tp"\n    )' in stitch
    )
    assert "torch.ops._c10d_functional.wait_tensor.default(all_reduce)" in stitch
    inside = (packages["llama_tp"] / "llama_tp" / "pieces" / "piece_1.py").read_text()
    assert 'torch.ops._c10d_functional.all_reduce_.default(buf0, "sum", "llama_tp:tp")' in inside
    assert "_c10d_functional" not in (packages["llama_tp"] / "llama_tp" / "stitch.py").read_text()


def test_manifest_and_init_record_the_split(packages):
    from safetensors import safe_open

    root = packages["llama_tp"] / "llama_tp"
    manifest = json.loads((root / "manifest.json").read_text())["tensor_parallel"]
    assert manifest["world_size"] == 2
    assert manifest["process_group"] == "llama_tp:tp"
    assert manifest["collectives"] == {"_c10d_functional::all_reduce": 4, "_c10d_functional::all_gather_into_tensor": 1}
    shards = manifest["shards"]
    expected_dims = {
        "embed.weight": None,  # replicated
        "layers.0.input_norm.weight": None,
        "layers.0.attn.q_proj.weight": 0,  # column-parallel
        "layers.0.attn.k_proj.weight": 0,
        "layers.0.attn.v_proj.weight": 0,
        "layers.0.attn.o_proj.weight": 1,  # row-parallel
        "layers.0.gate.weight": 0,
        "layers.0.up.weight": 0,
        "layers.0.down.weight": 1,
        "norm.weight": None,
        "lm_head.weight": 0,  # vocab-parallel
    }
    for key, dim in expected_dims.items():
        assert shards[key]["dim"] == dim, key
    assert len(shards) == 21 and "inv_freq" not in shards  # a non-persistent buffer: shipped
    assert shards["layers.0.attn.o_proj.weight"] == {"dim": 1, "rank_shape": [64, 32], "full_shape": [64, 64]}
    assert shards["lm_head.weight"] == {"dim": 0, "rank_shape": [128, 64], "full_shape": [256, 64]}
    # The package ships only what no checkpoint holds.
    with safe_open(str(root / "weights.safetensors"), "pt") as weights:
        assert list(weights.keys()) == ["inv_freq"]
    with imported_package(packages["llama_tp"], "llama_tp", EXAMPLE_PATHS) as package:
        assert package.TENSOR_PARALLEL == 2
        assert {key: dim for key, (_, _, dim) in package.SHARDS.items()} == {k: v["dim"] for k, v in shards.items()}
        assert package.SHARDS["layers.1.down.weight"] == (torch.float32, (64, 64), 1)


def _full_state():
    return load_model_module(MODEL).model.state_dict()


def test_missing_or_misshaped_checkpoint_tensor_is_a_clear_error(packages, tmp_path):
    from safetensors.torch import save_file

    with imported_package(packages["llama_tp"], "llama_tp", EXAMPLE_PATHS) as package:
        from llama_tp import distributed

        state = _full_state()
        del state["layers.1.up.weight"]
        with pytest.raises(
            KeyError, match=r"weights: missing 'layers.1.up.weight'; pass the unsplit model's full checkpoint"
        ):
            distributed.rank_tensors(package.SHARDS, 1, weights=state)
        state = _full_state()
        state["layers.0.attn.o_proj.weight"] = state["layers.0.attn.o_proj.weight"][:, :32]  # one rank's, not the full
        with pytest.raises(
            ValueError,
            match=r"weights: 'layers.0.attn.o_proj.weight' is torch.float32 \(64, 32\), the full checkpoint's must be "
            r"torch.float32 \(64, 64\)",
        ):
            distributed.rank_tensors(package.SHARDS, 0, weights=state)
        state = _full_state()
        state["norm.weight"] = state["norm.weight"].double()
        with pytest.raises(
            ValueError, match=r"'norm.weight' is torch.float64 \(64,\), the full checkpoint's must be torch.float32"
        ):
            distributed.rank_tensors(package.SHARDS, 0, weights=state)
        # The same checks read a file's header.
        state = _full_state()
        del state["lm_head.weight"]
        save_file(state, tmp_path / "partial.safetensors")
        with pytest.raises(KeyError, match=r"weights: missing 'lm_head.weight' in partial.safetensors"):
            distributed.rank_tensors(package.SHARDS, 0, weights=str(tmp_path / "partial.safetensors"))
        with pytest.raises(FileNotFoundError, match="neither a safetensors file nor a folder"):
            distributed.rank_tensors(package.SHARDS, 0, weights=str(tmp_path / "nowhere"))
        # Per-rank shards are checked against this rank's shape.
        with pytest.raises(
            ValueError,
            match=r"rank_weights: 'layers.0.attn.q_proj.weight' is torch.float32 \(64, 64\), this rank's must be torch.float32 \(32, 64\)",
        ):
            distributed.rank_tensors(package.SHARDS, 0, rank_weights=_full_state())


def test_slices_are_the_ranks_blocks(packages):
    """Rank r's block of a tensor split along dim d is the r-th of N equal contiguous blocks."""
    with imported_package(packages["llama_tp"], "llama_tp", EXAMPLE_PATHS) as package:
        from llama_tp import distributed

        state = _full_state()
        for rank in range(WORLD_SIZE):
            tensors = distributed.rank_tensors(package.SHARDS, rank, weights=state)
            assert torch.equal(
                tensors["layers.0.attn.q_proj.weight"], state["layers.0.attn.q_proj.weight"].chunk(2, 0)[rank]
            )
            assert torch.equal(tensors["layers.0.down.weight"], state["layers.0.down.weight"].chunk(2, 1)[rank])
            assert torch.equal(tensors["embed.weight"], state["embed.weight"])
            # A copy: the rank keeps no reference to the caller's full tensor.
            assert (
                tensors["lm_head.weight"].untyped_storage().data_ptr()
                != state["lm_head.weight"].untyped_storage().data_ptr()
            )


@pytest.fixture
def fake_group():
    """A fake process group in this process, of any size; destroyed afterwards."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    def make(size: int):
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=size)

    yield make
    if dist.is_initialized():
        dist.destroy_process_group()


def test_load_needs_a_process_group_and_weights(packages, fake_group):
    state = _full_state()  # before any group exists: the model file then builds the full model
    with imported_package(packages["llama_tp"], "llama_tp", EXAMPLE_PATHS) as package:
        with pytest.raises(
            RuntimeError,
            match=r"llama_tp is one rank of a model split across 2 ranks: initialise the process group first",
        ):
            package.load(weights=state)
        fake_group(3)
        with pytest.raises(
            ValueError, match=r"transpiled for 2 ranks \(--tensor-parallel 2\), the process group has 3"
        ):
            package.load(weights=state)
    import torch.distributed as dist

    dist.destroy_process_group()
    fake_group(2)
    with imported_package(packages["llama_tp"], "llama_tp", EXAMPLE_PATHS) as package:
        with pytest.raises(TypeError, match=r"ships no parameters .*: pass the full checkpoint as load\(weights=...\)"):
            package.load()
        model = package.load(weights=state)
        assert model.rank == 0 and model.process_group.size() == 2
        assert model.state_dict()["layers.0.up.weight"].shape == (64, 64)  # this rank's half of 128 rows


def _transpile_model(tmp_path, source: str, *extra: str) -> tuple[int, str]:
    path = tmp_path / "model.py"
    path.write_text(source)
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = run_cli([str(path), "-o", str(tmp_path / "out"), "-q", *extra])
    return code, stderr.getvalue()


_HEADER = """
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
"""


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_tensor_parallel_size_is_refused(tmp_path, value):
    code, stderr = _transpile_model(tmp_path, _HEADER, "--tensor-parallel", value)
    assert code == 2
    assert (
        stderr.strip() == f"transpile: error: --tensor-parallel {value}: give the number of ranks, a whole number >= 1"
    )


def test_model_asking_for_its_rank_is_refused(tmp_path):
    source = (
        _HEADER
        + """
offset = dist.get_rank() * 4
model = torch.nn.Linear(4, 4)
example_inputs = (torch.randn(2, 4),)
"""
    )
    code, stderr = _transpile_model(tmp_path, source, "--tensor-parallel", "2")
    assert code == 2
    assert stderr.count("\n") == 1
    assert (
        "model.py asks for its rank (torch.distributed.get_rank()) while transpiling with --tensor-parallel" in stderr
    )
    assert not (tmp_path / "out").exists()
    import torch.distributed as dist

    assert not dist.is_initialized(), "the fake process group must be torn down after a failure"


def test_collective_on_another_group_is_refused(tmp_path):
    source = (
        _HEADER
        + """
group = dist.new_group([0])


class Model(torch.nn.Module):
    def forward(self, x):
        return funcol.all_reduce(x * 2, "sum", group)

model = Model()
example_inputs = (torch.randn(2, 4),)
"""
    )
    code, stderr = _transpile_model(tmp_path, source, "--tensor-parallel", "2")
    assert code == 2
    assert "calls _c10d_functional::all_reduce on process group" in stderr
    assert "a tensor-parallel package runs all its collectives on one group" in stderr


@pytest.mark.parametrize(
    "mark, message",
    [
        ("model.inv.tp_dim = 0", "inv is marked tp_dim=0 but is not in the model's state_dict"),
        ("model.linear.weight.tp_dim = 2", "linear.weight has tp_dim=2, not a dim of its shape (4, 4)"),
    ],
)
def test_bad_shard_marks_are_refused(tmp_path, mark, message):
    source = (
        _HEADER
        + f"""
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.register_buffer("inv", torch.ones(4), persistent=False)

    def forward(self, x):
        return self.linear(x) * self.inv

model = Model()
{mark}
example_inputs = (torch.randn(2, 4),)
"""
    )
    code, stderr = _transpile_model(tmp_path, source, "--tensor-parallel", "2")
    assert code == 2, stderr
    assert message in stderr
