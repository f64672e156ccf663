"""Render the package: Jinja templates filled from the intermediate model, then black.

Returns file contents in memory (relative path -> bytes) plus the kernel binaries to
copy, so that nothing touches the output folder until everything has rendered.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path

from .ir import Package
from .runtime import runtime_files
from .templating import environment, format_python  # noqa: F401  (targets import format_python from here)
from .targets import get_target
from .weights_file import SafetensorsStream, file_sha256



@dataclass
class RenderedPackage:
    files: dict[str, bytes | SafetensorsStream]  # relative path -> content (deterministic); weights streamed
    binaries: dict[str, str | bytes]  # relative path -> built binary: a path to copy, or its bytes
    manifest: dict


_environment = environment


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def render(package: Package) -> RenderedPackage:
    env = _environment()
    common = {
        "name": package.name,
        "model_file": package.model_file,
        "dispatch_input": package.dispatch.input_name,
        "dispatch_dim": package.dispatch.dim,
    }
    python: dict[str, str] = {}
    text: dict[str, str] = {}
    binaries: dict[str, str | bytes] = {}  # a path to copy, or the content

    python["stitch.py"] = env.get_template("stitch.py.jinja").render(
        **common, stitch=package.stitch, imports=package.imports, ships_ops=package.ships_ops
    )
    python["dispatch.py"] = env.get_template("dispatch.py.jinja").render(**common, **_dispatch_context(package))
    python.update(runtime_files("runtime.py", *(["ops.py"] if package.ships_ops else [])))
    python["pieces/__init__.py"] = env.get_template("pieces/__init__.py.jinja").render(**common)
    tensor_parallel = _tensor_parallel_context(package)
    if tensor_parallel:
        python["distributed.py"] = env.get_template("distributed.py.jinja").render(**common, **tensor_parallel)
        python.update(runtime_files("distributed_runtime.py"))
    target = get_target(package.device)
    python.update(target.extra_modules(package, env, common))
    for piece in package.pieces:
        shipped = [k for k in piece.kernels if not k.alias_of]
        python[f"pieces/{piece.module_name}.py"] = env.get_template(target.piece_template()).render(
            **common,
            **target.piece_context(piece, shipped),
            piece=piece,
            variant_names=[v.variant.name for v in piece.variants],
            modules=sorted({m for v in piece.variants for m in v.module_names}),
            kernel_aliases=[k for k in piece.kernels if k.alias_of],
        )
        folder = f"kernels/{piece.module_name}"
        for kernel in shipped:
            kernel_text, kernel_binaries = target.kernel_files(folder, kernel)
            text.update(kernel_text)
            binaries.update(kernel_binaries)

    if package.tuning is not None:
        text["tuning.json"] = package.tuning  # the lockfile a later transpile replays

    files = {path: format_python(source, path).encode() for path, source in python.items()}
    files.update({path: source.encode() for path, source in text.items()})
    # --weights none: the file keeps only what no checkpoint holds (constants, non-persistent buffers).
    shipped_keys = {w.key for w in package.weights if package.weights_embedded or not w.user_supplied}
    shipped = {key: t for key, t in sorted(package.weight_tensors.items()) if key in shipped_keys}
    if shipped:
        # Streamed from the tensors themselves when written and hashed: no second copy.
        files["weights.safetensors"] = SafetensorsStream(shipped)
    features = target.cpu_features(package.cpu_isa)
    # Each file is hashed once (the weights file of a 1B model takes seconds).
    file_hashes = {path: file_sha256(data) for path, data in sorted(files.items())}
    # The fingerprint covers everything that decides behaviour; __init__.py prints it.
    fingerprint = _sha256(
        json.dumps(
            {
                "files": file_hashes,
                "torch": package.torch_version,
                "model": package.model_sha256,
                "cpu_features": features,
                "gpu": package.gpu,
                "capture_sizes": list(package.cuda_graphs.capture_sizes) if package.cuda_graphs else [],
            },
            sort_keys=True,
        ).encode()
    )
    init_source = env.get_template(target.init_template()).render(
        **common,
        **_init_context(package, fingerprint, features),
        **target.init_context(package),
        tensor_parallel=tensor_parallel,
    )
    files["__init__.py"] = format_python(init_source, "__init__.py").encode()
    file_hashes = {**file_hashes, "__init__.py": _sha256(files["__init__.py"])}

    manifest = {
        "format": 1,
        "name": package.name,
        "model": {"file": package.model_file, "sha256": package.model_sha256},
        "fingerprint": fingerprint,
        "torch": package.torch_version,
        "python": package.python_version,
        "device": package.device,
        "machine": platform.machine(),
        "cpu_isa": package.cpu_isa,
        "march": package.march,
        "cpu_features": list(features),
        "gpu": package.gpu,
        "build_assumptions": target.build_assumptions(),
        "imports": package.imports,
        **(
            {"required_ops": [{"op": r.op, "module": r.module, "requirement": r.requirement} for r in package.required_ops]}
            if package.required_ops
            else {}
        ),
        "split_ops": package.split_ops,
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
                "inputs": piece.input_names,
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
            "file": "weights.safetensors" if shipped else None,
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
        "files": dict(sorted(file_hashes.items())),
    }
    return RenderedPackage(files=files, binaries=binaries, manifest=manifest)


def _literal(value) -> str:
    return repr(value)


def _tensor_parallel_context(package: Package) -> dict | None:
    """What distributed.py and __init__.py print about a tensor-parallel package, or None."""
    parallel = package.tensor_parallel
    if parallel is None:
        return None
    return {
        "world_size": parallel.world_size,
        "group_name": parallel.group_name,
        "calls_collectives": bool(parallel.collectives),
        "collectives": ", ".join(f"{op} x{count}" for op, count in parallel.collectives) or "none",
        "collectives_literal": _literal(parallel.collectives),
        "shards": [
            {
                "key": shard.key,
                "dtype": shard.dtype,
                "shape_literal": _literal(shard.rank_shape),
                "dim_literal": _literal(shard.dim),
            }
            for shard in parallel.shards
        ],
    }


def _tensor_parallel_manifest(parallel) -> dict:
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


def _dispatch_context(package: Package) -> dict:
    rows = []
    for variant in package.variants:
        rows.append(
            {
                "constant": variant.name.upper(),
                "functions": [f"{piece.module_name}.{variant.name}" for piece in package.pieces],
                "size": variant.range.lo,
                "lo": variant.range.lo,
                "hi": 'float("inf")' if variant.range.hi is None else variant.range.hi,
                "static": variant.static,
            }
        )
    supported = [f"size {v.range.lo}" for v in package.exact_variants] + [
        v.range.label() for v in package.range_variants
    ]
    return {
        "piece_modules": [piece.module_name for piece in package.pieces],
        "rows": rows,
        "exact_rows": [r for r in rows if r["static"]],
        "range_rows": [r for r in rows if not r["static"]],
        "supported": ", ".join(supported),
    }


def _init_context(package: Package, fingerprint: str, features: tuple) -> dict:
    dispatch = package.dispatch
    state = package.state
    inputs = [
        {
            "name": spec.name,
            "dtype": spec.dtype,
            "shape_literal": _literal(spec.shape),
            "in_place": spec.name in state.mutated_inputs,
        }
        for spec in package.inputs
    ]
    return {
        "fingerprint": fingerprint,
        "dispatch_literal": _literal(
            {"input": dispatch.input_name, "dim": dispatch.dim, "min": dispatch.lo, "max": dispatch.hi}
        ),
        "sizes_literal": _literal(tuple(v.range.lo for v in package.exact_variants)),
        "ranges_literal": _literal(tuple((v.range.lo, v.range.hi) for v in package.range_variants)),
        "torch_version": package.torch_version,
        "python_version": package.python_version,
        "machine": platform.machine(),
        "cpu_isa": package.cpu_isa,
        "cpu_features_literal": _literal(tuple(features)),
        "weight_keys_literal": _literal(tuple(w.key for w in package.weights)),
        "replaceable_literal": _literal(tuple(w.key for w in package.weights if w.user_supplied)),
        "inputs": inputs,
        "device": package.device,
        "inputs_literal": "("
        + "".join(f"({spec.name!r}, {spec.dtype}, {spec.shape!r}), " for spec in package.inputs)
        + ")",
        "input_names": [spec.name for spec in package.inputs],
        "mutated_inputs_literal": _literal(state.mutated_inputs),
        "mutated_weights_literal": _literal(state.mutated_weights),
        "weight_specs": [
            "("
            + ", ".join(
                [
                    repr(w.key),
                    repr(checkpoint_key(w, package.checkpoint_prefix)),
                    str(package.weight_tensors[w.key].dtype),
                    repr(tuple(package.weight_tensors[w.key].shape)),
                ]
            )
            + ")"
            for w in package.weights
        ],
        "weights_embedded": package.weights_embedded,
        "custom_op_splitting_ops": _literal(tuple(package.custom_op_splitting_ops)) if package.custom_op_splitting_ops else "",
        "mutated_weights": bool(state.mutated_weights),
        "required_ops": [_literal((r.op, r.module, r.requirement)) for r in package.required_ops],
        "op_imports_literal": _literal(tuple(package.imports)),
        "state_lines": state_lines(state),
        "export_modules": package.exports.modules if package.exports else (),
        "export_lines": package.exports.lines if package.exports else (),
    }


def checkpoint_key(weight, prefix: str) -> str | None:
    """The name a checkpoint gives a weight: its state-dict key less --checkpoint-prefix;
    None for tensors only the package supplies."""
    if not weight.user_supplied:
        return None
    return weight.key[len(prefix):] if prefix and weight.key.startswith(prefix) else weight.key


def state_lines(state) -> list[str]:
    """One docstring line per input or buffer written in place: what writes it."""
    lines = []
    for name, ops in state.writers:
        kind = "input" if name in state.mutated_inputs else "buffer"
        lines.append(f"{kind} {name}: written by {', '.join(ops)}")
    return lines
