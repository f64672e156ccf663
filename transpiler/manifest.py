"""The package's record of itself, a step after rendering: each file's hash, the
fingerprint that __init__.py prints and load() reports, and manifest.json."""

from __future__ import annotations

import hashlib
import json
import platform

from .ir import Package, TensorParallel, Weight
from .weights_file import file_sha256


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hashes(files: dict) -> dict[str, str]:
    """Each file hashed once (the weights file of a 1B model takes seconds), by path; the
    weights file as it streams (weights_file.file_sha256)."""
    return {path: file_sha256(data) for path, data in sorted(files.items())}


def fingerprint(package: Package, hashes: dict[str, str], cpu_features: tuple[str, ...]) -> str:
    """What decides behaviour: every file but __init__.py (which prints this), torch, the
    model file, the CPU features and GPU the kernels need, the CUDA-graph capture sizes."""
    capture_sizes = list(package.cuda_graphs.capture_sizes) if package.cuda_graphs else []
    return fingerprint_of(hashes, package.torch_version, package.model_sha256, cpu_features, package.gpu, capture_sizes)


def fingerprint_of(
    hashes: dict[str, str], torch_version: str, model_sha256: str, cpu_features, gpu: dict, capture_sizes: list[int]
) -> str:
    """The fingerprint from plain values (golden_record.py recomputes it from a manifest)."""
    return sha256(
        json.dumps(
            {
                "files": hashes,
                "torch": torch_version,
                "model": model_sha256,
                "cpu_features": cpu_features,
                "gpu": gpu,
                "capture_sizes": capture_sizes,
            },
            sort_keys=True,
        ).encode()
    )


def checkpoint_key(weight: Weight, prefix: str) -> str | None:
    """The name a checkpoint gives a weight: its state-dict key less --checkpoint-prefix;
    None for tensors only the package supplies."""
    if not weight.user_supplied:
        return None
    return weight.key[len(prefix) :] if prefix and weight.key.startswith(prefix) else weight.key


def build_manifest(
    package: Package,
    fingerprint: str,
    cpu_features: tuple[str, ...],
    build_assumptions: dict,
    weights_file: str | None,
    hashes: dict[str, str],
) -> dict:
    """manifest.json: what was compiled, for what, from what; `hashes` of every file."""
    return {
        "format": 1,
        "name": package.name,
        "model": {"file": package.model_file, "sha256": package.model_sha256},
        "fingerprint": fingerprint,
        "torch": package.torch_version,
        "python": package.python_version,
        "device": package.device,
        "machine": platform.machine(),
        "cpu_isa": package.cpu_isa.name,
        "march": package.cpu_isa.march,
        "cpu_features": list(cpu_features),
        "gpu": package.gpu,
        "build_assumptions": build_assumptions,
        "imports": list(package.imports),
        **(
            {
                "required_ops": [
                    {"op": r.op, "module": r.module, "requirement": r.requirement} for r in package.required_ops
                ]
            }
            if package.required_ops
            else {}
        ),
        "split_ops": list(package.split_ops),
        "dispatch": {
            "input": package.dispatch.input_name,
            "dim": package.dispatch.dim,
            "min": package.dispatch.lo,
            "max": package.dispatch.hi,
        },
        "sizes": [v.range.lo for v in package.exact_variants],
        "ranges": [[v.range.lo, v.range.hi] for v in package.range_variants],
        "pieces": [
            {
                "module": piece.module_name,
                "calls": piece.call_count,
                "inputs": list(piece.input_names),
                "kernels": [k.name for k in piece.kernels],
            }
            for piece in package.pieces
        ],
        "splitting_calls": package.num_split_calls,
        "state": {
            "mutated_inputs": list(package.state.mutated_inputs),
            "mutated_weights": list(package.state.mutated_weights),
            "writers": {name: list(ops) for name, ops in package.state.writers},
            "static_inputs": list(package.state.static_inputs),
            "pad_values": dict(package.state.pad_values),
        },
        **_tensor_parallel_manifest(package.tensor_parallel),
        "weights": {
            "embedded": package.weights_embedded,
            "file": weights_file,
            "tensors": {
                w.key: {
                    "dtype": str(package.weight_tensors[w.key].dtype),
                    "shape": list(package.weight_tensors[w.key].shape),
                    "checkpoint_key": checkpoint_key(w, package.checkpoint_prefix),
                }
                for w in package.weights
            },
        },
        # Binaries are built for this machine; their hashes are in binaries.json.
        "files": dict(sorted(hashes.items())),
    }


def _tensor_parallel_manifest(parallel: TensorParallel | None) -> dict:
    """The manifest's record of the split: per checkpoint key, the dim, this rank's shape
    and the full one (nothing for a package of the whole model)."""
    if parallel is None:
        return {}
    return {
        "tensor_parallel": {
            "world_size": parallel.world_size,
            "process_group": parallel.group_name,
            "collectives": {op: count for op, count in parallel.collectives},
            "shards": {
                shard.key: {
                    "dim": shard.dim,
                    "rank_shape": list(shard.rank_shape),
                    "full_shape": list(shard.full_shape(parallel.world_size)),
                }
                for shard in parallel.shards
            },
        }
    }
