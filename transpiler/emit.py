"""Render the package: one builder per emitted file, each filling its Jinja template from
the Package (ir.py), then black; the weights; then the manifest and hashes (manifest.py).

Returns file contents in memory (relative path -> bytes) plus the kernel binaries to
copy, so that nothing touches the output folder until everything has rendered.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import jinja2

from . import manifest as manifest_step
from .ir import Package, UniquePiece
from .manifest import checkpoint_key
from .runtime import runtime_files
from .targets import Target, get_target
from .templating import environment, format_python
from .weights_file import SafetensorsStream

# The template every __init__.py starts from, and its extension for a package that is one
# rank of N; the target's own extensions (Target.init_templates) go over them.
INIT_TEMPLATE = "__init__.py.jinja"
TENSOR_PARALLEL_INIT_TEMPLATE = "tensor_parallel/__init__.py.jinja"
WEIGHTS_FILE = "weights.safetensors"


@dataclass
class RenderedPackage:
    files: dict[str, bytes | SafetensorsStream]  # relative path -> content (deterministic); weights streamed
    binaries: dict[str, str | bytes]  # relative path -> built binary: a path to copy, or its bytes
    manifest: dict


def render(package: Package, target: Target | None = None) -> RenderedPackage:
    target = target or get_target(package.device)
    env = environment()
    common = common_context(package)
    python: dict[str, str] = {}  # path -> source before black
    text: dict[str, str] = {}
    binaries: dict[str, str | bytes] = {}  # a path to copy, or the content

    python["stitch.py"] = stitch_module(env, package, common)
    python["dispatch.py"] = dispatch_module(env, package, common)
    # The package runtime: modules of the tool (transpiler/runtime/), copied verbatim.
    python.update(runtime_files("runtime.py", *(["ops.py"] if package.ships_ops else [])))
    python["pieces/__init__.py"] = env.get_template("pieces/__init__.py.jinja").render(**common)
    if package.tensor_parallel:
        python["distributed.py"] = env.get_template("distributed.py.jinja").render(
            **common, **tensor_parallel_context(package)
        )
        python.update(runtime_files("distributed_runtime.py"))
    python.update(target.extra_modules(package, env, common))
    for piece in package.pieces:
        python[f"pieces/{piece.module_name}.py"] = piece_module(env, piece, target, common)
        kernel_text, kernel_binaries = kernel_files(piece)
        text.update(kernel_text)
        binaries.update(kernel_binaries)
    if package.tuning is not None:
        text["tuning.json"] = package.tuning  # the lockfile a later transpile replays

    files = {path: format_python(source, path).encode() for path, source in python.items()}
    files.update({path: source.encode() for path, source in text.items()})
    weights = weights_file(package)
    if weights is not None:
        files[WEIGHTS_FILE] = weights

    features = target.cpu_features(package.cpu_isa)
    hashes = manifest_step.file_hashes(files)
    fingerprint = manifest_step.fingerprint(package, hashes, features)
    files["__init__.py"] = format_python(
        init_module(env, package, target, common, fingerprint, features), "__init__.py"
    ).encode()
    hashes["__init__.py"] = manifest_step.sha256(files["__init__.py"])
    manifest = manifest_step.build_manifest(
        package,
        fingerprint,
        features,
        target.build_assumptions(),
        WEIGHTS_FILE if weights is not None else None,
        hashes,
    )
    return RenderedPackage(files=files, binaries=binaries, manifest=manifest)


def common_context(package: Package) -> dict:
    """What every template may print."""
    return {
        "name": package.name,
        "model_file": package.model_file,
        "dispatch_input": package.dispatch.input_name,
        "dispatch_dim": package.dispatch.dim,
    }


# --- one builder per file -----------------------------------------------------------


def stitch_module(env: jinja2.Environment, package: Package, common: dict) -> str:
    """stitch.py: the forward, calling pieces and splitting ops in the model's order."""
    return env.get_template("stitch.py.jinja").render(
        **common, stitch=package.stitch, imports=list(package.imports), ships_ops=package.ships_ops
    )


def dispatch_module(env: jinja2.Environment, package: Package, common: dict) -> str:
    """dispatch.py: the runtime size -> the variant's functions."""
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
    return env.get_template("dispatch.py.jinja").render(
        **common,
        piece_modules=[piece.module_name for piece in package.pieces],
        rows=rows,
        exact_rows=[r for r in rows if r["static"]],
        range_rows=[r for r in rows if not r["static"]],
        supported=", ".join(supported),
    )


def piece_module(env: jinja2.Environment, piece: UniquePiece, target: Target, common: dict) -> str:
    """pieces/piece_N.py: one function per variant, and what loads its kernels; the kind
    of kernel (Target.kernel_type) names the template and what it imports."""
    kernel_type = target.kernel_type
    shipped = [k for k in piece.kernels if not k.alias_of]
    return env.get_template(kernel_type.piece_template).render(
        **common,
        **kernel_type.piece_context(piece, shipped),
        piece=piece,
        variant_names=[v.variant.name for v in piece.variants],
        modules=sorted({m for v in piece.variants for m in v.module_names}),
        kernel_aliases=[k for k in piece.kernels if k.alias_of],
    )


def kernel_files(piece: UniquePiece) -> tuple[dict[str, str], dict[str, str | bytes]]:
    """kernels/piece_N/: each shipped kernel's files (its source, its binary)."""
    text: dict[str, str] = {}
    binaries: dict[str, str | bytes] = {}
    for kernel in piece.kernels:
        if not kernel.alias_of:
            kernel_text, kernel_binaries = kernel.files(f"kernels/{piece.module_name}")
            text.update(kernel_text)
            binaries.update(kernel_binaries)
    return text, binaries


def weights_file(package: Package) -> SafetensorsStream | None:
    """weights.safetensors, streamed from the tensors themselves when written and hashed (no
    second copy); with --weights none only what no checkpoint holds (constants,
    non-persistent buffers); None when nothing is left to ship."""
    shipped_keys = {w.key for w in package.weights if package.weights_embedded or not w.user_supplied}
    shipped = {key: t for key, t in sorted(package.weight_tensors.items()) if key in shipped_keys}
    if not shipped:
        return None
    return SafetensorsStream(shipped)


def init_templates(package: Package, target: Target) -> list[str]:
    """__init__.py's templates, innermost first: the shared one, its tensor-parallel
    extension for a package that is one rank of N, then the target's own."""
    return [
        INIT_TEMPLATE,
        *([TENSOR_PARALLEL_INIT_TEMPLATE] if package.tensor_parallel else []),
        *target.init_templates,
    ]


def init_module(
    env: jinja2.Environment, package: Package, target: Target, common: dict, fingerprint: str, features: tuple
) -> str:
    """__init__.py: the constants load() checks, CompiledModel and load(). Rendered last:
    it prints the fingerprint of every other file."""
    templates = init_templates(package, target)
    return env.get_template(templates[-1]).render(
        **common,
        **init_context(package, fingerprint, features),
        **target.init_context(package),
        tensor_parallel=tensor_parallel_context(package) if package.tensor_parallel else None,
        parent_template=templates[-2] if len(templates) > 1 else None,
    )


# --- contexts -------------------------------------------------------------------------


def _literal(value) -> str:
    return repr(value)


def tensor_parallel_context(package: Package) -> dict:
    """What distributed.py and __init__.py print about a tensor-parallel package."""
    parallel = package.tensor_parallel
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


def init_context(package: Package, fingerprint: str, features: tuple) -> dict:
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
        "cpu_isa": package.cpu_isa.name,
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
        "custom_op_splitting_ops": _literal(tuple(package.custom_op_splitting_ops))
        if package.custom_op_splitting_ops
        else "",
        "mutated_weights": bool(state.mutated_weights),
        "required_ops": [_literal((r.op, r.module, r.requirement)) for r in package.required_ops],
        "op_imports_literal": _literal(tuple(package.imports)),
        "state_lines": state_lines(package),
        "export_modules": package.exports.modules if package.exports else (),
        "export_lines": package.exports.lines if package.exports else (),
    }


def state_lines(package: Package) -> list[str]:
    """One docstring line per input or buffer written in place: what writes it."""
    state = package.state
    lines = []
    for name, ops in state.writers:
        kind = "input" if name in state.mutated_inputs else "buffer"
        lines.append(f"{kind} {name}: written by {', '.join(ops)}")
    return lines
