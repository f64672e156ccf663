"""Device targets: the CUDA target's rendering, exercised on the CPU with a package whose
kernels are stand-ins for cubins (no GPU here), and an unknown device refused."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from conftest import EXAMPLES, ROOT

from transpiler import pipeline
from transpiler.cudagraphs import cudagraphs_context
from transpiler.errors import TranspileError
from transpiler.options import parse_ranges, parse_sizes
from transpiler.targets import get_target


def test_unknown_device_is_refused():
    with pytest.raises(TranspileError, match="--device tpu: choose cpu or cuda"):
        get_target("tpu")


@pytest.fixture(scope="module")
def cpu_package():
    """The mlp example's Package as the pipeline hands it to emit.render."""
    args = EXAMPLES["mlp"]
    captured = {}
    real_render = pipeline.render

    def keep(package, target=None):
        captured["package"] = copy.deepcopy(package)
        return real_render(package, target)

    pipeline.render = keep
    try:
        options = pipeline.Options(
            model_path=ROOT / args[0], name="mlp", ranges=parse_ranges("1-32,33-128"), sizes=parse_sizes("4")
        )
        pipeline.transpile(options)
    finally:
        pipeline.render = real_render
    return captured["package"]


def as_cuda(package):
    """The same package as the CUDA target would hand it over: Triton kernels with launch data."""
    from transpiler.targets.cuda import CubinKernel

    def cubin(k):
        return CubinKernel(
            name=k.name,
            source=f"# Triton source of {k.name}\n",
            binary=b"cubin",
            launch={
                "function_name": k.name,
                "handle": f"_{k.name}",
                "file_name": k.name,
                "symbol": "kernel",
                "num_warps": 4,
                "shared": 0,
                "arg_types": "OOi",
                "arch": 90,
                "params": ["a", "b", "stream"],
                "grid_lines": ["grid_0 = 1", "grid_1 = 1", "grid_2 = 1"],
                "launch_args": ["a", "b"],
                "comment": "XBLOCK=128",
            },
            metadata={"symbol": "kernel", "config": {"XBLOCK": 128}},
            alias_of=k.alias_of,
        )

    pieces = tuple(
        dataclasses.replace(
            piece,
            variants=tuple(
                dataclasses.replace(
                    variant,
                    target_runtime_names=["empty_strided_cuda", "get_raw_stream"],
                    kernels=[cubin(k) for k in variant.kernels],
                )
                for variant in piece.variants
            ),
        )
        for piece in package.pieces
    )
    return dataclasses.replace(
        package,
        device="cuda",
        gpu={"arch": 90, "name": "NVIDIA H100", "cuda": "13.0", "triton": "3.6.0"},
        cuda_graphs=cudagraphs_context(
            package.name, [1, 2, 4, 8], package.inputs, package.dispatch.input_index, package.dispatch.dim, (0,)
        ),
        pieces=pieces,
    )


def test_each_target_renders_its_own_files(cpu_package):
    from transpiler.emit import render

    cpu = render(cpu_package)
    cuda = render(as_cuda(cpu_package))
    assert "cuda_runtime.py" not in cpu.files and "cudagraphs.py" not in cpu.files
    assert {"cuda_runtime.py", "cudagraphs.py", "cudagraphs_runtime.py"} <= set(cuda.files)
    assert all(path.endswith(".so") for path in cpu.binaries)
    assert cuda.binaries and all(path.endswith(".cubin") for path in cuda.binaries)
    for path in cuda.binaries:
        stem = path[: -len(".cubin")]
        assert f"{stem}.json" in cuda.files and f"{stem}.triton" in cuda.files
    piece_cpu, piece_cuda = cpu.files["pieces/piece_0.py"].decode(), cuda.files["pieces/piece_0.py"].decode()
    assert "load_kernel(" in piece_cpu and "load_triton_kernel" not in piece_cpu
    assert "from ..cuda_runtime import" in piece_cuda and "load_triton_kernel(" in piece_cuda
    init_cpu, init_cuda = cpu.files["__init__.py"].decode(), cuda.files["__init__.py"].decode()
    assert "def capture(" not in init_cpu and "GPU = " not in init_cpu
    assert "def capture(" in init_cuda and 'GPU = {"arch": 90, "cuda": "13.0", "triton": "3.6.0"}' in init_cuda
    assert cpu.manifest["cpu_features"] and cuda.manifest["cpu_features"] == []


def test_a_tensor_parallel_package_renders_for_cuda(cpu_package):
    """__init__.py of a tensor-parallel CUDA package (what scripts/gpu_tp_check.py runs):
    load() binds the process group, slices the checkpoint and can capture graphs."""
    from transpiler.emit import render
    from transpiler.ir import Shard, TensorParallel

    package = as_cuda(cpu_package)
    package = dataclasses.replace(
        package,
        weights_embedded=False,
        tensor_parallel=TensorParallel(
            world_size=2,
            group_name="mlp:tp",
            shards=tuple(
                Shard(
                    key=w.key,
                    dtype=str(package.weight_tensors[w.key].dtype),
                    rank_shape=tuple(package.weight_tensors[w.key].shape),
                    dim=0,
                )
                for w in package.weights
                if w.user_supplied
            ),
            collectives=(("_c10d_functional::all_reduce", 1),),
        ),
    )
    rendered = render(package)
    assert {"distributed.py", "distributed_runtime.py"} <= set(rendered.files)
    init = rendered.files["__init__.py"].decode()
    compile(init, "__init__.py", "exec")
    for line in (
        "rank_weights=None",
        "process_group=None",
        'cuda_graphs="piecewise"',
        "group, rank = distributed.bind_process_group(process_group)",
        "shards = distributed.rank_tensors(SHARDS, rank, weights, rank_weights)",
        "tensors = runtime.load_weights(WEIGHT_SPECS, WEIGHTS_EMBEDDED, shards, DEVICE)",
        "model = CompiledModel(stitch.forward, tensors, group, rank)",
        "model.capture(mode=cuda_graphs, **(static_inputs or {}))",
        "TENSOR_PARALLEL = 2",
    ):
        assert line in init, line
    assert rendered.manifest["tensor_parallel"]["process_group"] == "mlp:tp"
    assert rendered.manifest["weights"]["embedded"] is False
