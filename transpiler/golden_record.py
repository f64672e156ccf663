"""Re-render a package's model-specific files from what the package records, with no
compile and no GPU: how the CUDA golden (generated/cuda/, made on a GPU) follows a change of
the package runtime or of the CUDA-graph data template (`scripts/regen-goldens --cuda-from-record`).

What the GPU decided (the pieces, the kernels and their launch data, stitch.py, dispatch.py,
the weights) is kept as recorded. Re-rendered from the record:
- the verbatim runtime modules the package ships: copied from transpiler/runtime/;
- cudagraphs.py: rendered by the CUDA target's own renderer (transpiler/cudagraphs.py) from
  the tables the recorded cudagraphs.py holds (INPUTS, DISPATCH_INPUT, CAPTURE_SIZES, ...);
- the kernel sources' file names (an older tool wrote them as kernels/<piece>/<name>.py);
- manifest.json's file hashes, and the fingerprint (the formula of emit.render, from the
  manifest's torch, model, CPU features and GPU, and the recorded capture sizes), which
  __init__.py prints: its FINGERPRINT line is the only line of __init__.py that changes.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

from .cudagraphs import CudaGraphInput, CudaGraphsContext, render_source, sizes_literal
from .errors import TranspileError
from .manifest import fingerprint_of
from .runtime import runtime_files
from .targets.cuda import KERNEL_SOURCE_SUFFIX
from .templating import format_python

# Runtime modules each kind of package ships (beside runtime.py, which every one does).
CUDA_MODULES = ("cuda_runtime.py", "cudagraphs_runtime.py")
GRAPH_TABLES = (
    "INPUTS",
    "DISPATCH_INPUT",
    "DISPATCH_DIM",
    "OUTPUT_DISPATCH_DIMS",
    "CAPTURE_SIZES",
    "MUTATED_INPUTS",
    "MUTATED_WEIGHTS",
    "PAD_BY_DEFAULT",
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(manifest: dict, file_hashes: dict, capture_sizes: list) -> str:
    """The package's fingerprint, as emit.render computes it (manifest.fingerprint_of), from
    the manifest: every file but __init__.py, torch, the model, the CPU features, the GPU
    and the capture sizes."""
    hashes = {path: digest for path, digest in sorted(file_hashes.items()) if path != "__init__.py"}
    return fingerprint_of(
        hashes,
        manifest["torch"],
        manifest["model"]["sha256"],
        manifest["cpu_features"],
        manifest["gpu"],
        list(capture_sizes),
    )


def _value(node: ast.expr):
    """A recorded table's value: literals, torch.<dtype> names, InputSpec(...) rows and
    *range(...) (how sizes_literal writes a long run of sizes)."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
        return f"torch.{node.attr}"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "InputSpec":
        return tuple(_value(arg) for arg in node.args)
    if isinstance(node, ast.Tuple):
        items = []
        for element in node.elts:
            if isinstance(element, ast.Starred):
                items.extend(_value(element.value))
            else:
                items.append(_value(element))
        return tuple(items)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        return list(range(*(_value(arg) for arg in node.args)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand)
    if isinstance(node, ast.Constant):
        return node.value
    raise TranspileError(f"recorded cudagraphs.py: cannot read {ast.unparse(node)}; regenerate the golden on a GPU")


def graph_tables(source: str) -> dict:
    """The CUDA-graph tables a recorded cudagraphs.py assigns at module level."""
    tables = {}
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id in GRAPH_TABLES:
            tables[target.id] = _value(node.value)
    missing = [name for name in GRAPH_TABLES if name not in tables]
    if missing:
        raise TranspileError(f"recorded cudagraphs.py lacks {', '.join(missing)}; regenerate the golden on a GPU")
    return tables


def graphs_context(name: str, tables: dict) -> CudaGraphsContext:
    """The context emit.py renders cudagraphs.py from, rebuilt from the recorded tables."""
    rows = []
    for row in tables["INPUTS"]:
        input_name, dtype, shape, dim = row[:4]
        static = row[4] if len(row) > 4 else False
        pad = row[5] if len(row) > 5 else None
        # A dim sized by a count of its own (sequences): its extra rows and maximum rows.
        rows_literal = f", {row[6]!r}, {row[7]!r}" if len(row) > 6 else ""
        rows.append(
            CudaGraphInput(
                name=input_name,
                dtype=dtype,
                shape_literal=repr(tuple(shape)),
                padded_dim_literal=repr(dim),
                static=bool(static),
                pad_literal=repr(pad),
                rows_literal=rows_literal,
            )
        )
    sizes = tuple(tables["CAPTURE_SIZES"])
    dispatch_input = tables["DISPATCH_INPUT"]
    return CudaGraphsContext(
        name=name,
        dispatch_input_index=dispatch_input,
        dispatch_input_name=rows[dispatch_input].name,
        dispatch_dim=tables["DISPATCH_DIM"],
        capture_sizes=sizes,
        capture_sizes_literal=sizes_literal(sizes),
        largest_capture_size=sizes[-1] if sizes else None,
        inputs=tuple(rows),
        output_dispatch_dims_literal=repr(tuple(tables["OUTPUT_DISPATCH_DIMS"])),
        pad_by_default=bool(tables["PAD_BY_DEFAULT"]),
        mutated_weight_indices_literal=repr(tuple(tables["MUTATED_WEIGHTS"])),
        mutated_input_names_literal=repr(tuple(tables["MUTATED_INPUTS"])),
    )


def rerender_cuda_package(root: Path) -> list[str]:
    """Bring a recorded CUDA package up to this tool's runtime and data templates, in place.
    Returns the files written (relative paths), in order; the others are left as they are."""
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise TranspileError(f"{root} holds no manifest.json; point at a package the transpiler wrote")
    manifest = json.loads(manifest_path.read_text())
    # What is re-rendered from the record: the CUDA-graph tables, which only a CUDA package has.
    if not (root / "cudagraphs.py").is_file():
        raise TranspileError(f"{root} is a {manifest.get('device')} package; regenerate CPU goldens by transpiling")
    if "tensor_parallel" in manifest:
        raise TranspileError(f"{root} is tensor parallel, which re-rendering from the record does not cover")
    name = manifest["name"]
    graph_source = (root / "cudagraphs.py").read_text()
    tables = graph_tables(graph_source)

    modules = ["runtime.py", *(["ops.py"] if (root / "ops.py").is_file() else []), *CUDA_MODULES]
    rendered = {path: source.encode() for path, source in runtime_files(*modules).items()}
    graphs = render_source(graphs_context(name, tables))
    rendered["cudagraphs.py"] = format_python(graphs, "cudagraphs.py").encode()

    hashes = dict(manifest["files"])
    renamed = [path for path in sorted(hashes) if path.startswith("kernels/") and path.endswith(".py")]
    for path in renamed:
        rendered[path.removesuffix(".py") + KERNEL_SOURCE_SUFFIX] = (root / path).read_bytes()
        del hashes[path]
    for path, data in rendered.items():
        hashes[path] = sha256(data)
    new_fingerprint = fingerprint(manifest, hashes, list(tables["CAPTURE_SIZES"]))
    init = (root / "__init__.py").read_text()
    line = f'FINGERPRINT = "{manifest["fingerprint"]}"'
    if init.count(line) != 1:
        raise TranspileError(f"{root}/__init__.py does not print the manifest's fingerprint once; regenerate on a GPU")
    rendered["__init__.py"] = init.replace(line, f'FINGERPRINT = "{new_fingerprint}"').encode()
    hashes["__init__.py"] = sha256(rendered["__init__.py"])

    written = []
    for path, data in sorted(rendered.items()):
        target = root / path
        if not target.is_file() or target.read_bytes() != data:
            target.write_bytes(data)
            written.append(path)
    for path in renamed:
        (root / path).unlink()
    manifest["files"] = dict(sorted(hashes.items()))
    manifest["fingerprint"] = new_fingerprint
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if manifest_path.read_text() != text:
        manifest_path.write_text(text)
        written.append("manifest.json")
    return written
