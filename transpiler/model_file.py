"""Load MODEL.py and check its contract: `model`, `example_inputs`, optional
`dynamic_shapes` and `split_ops` at module level."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import TranspileError
from .fake_weights import parameters_as_fakes

# torch.export's `dynamic_shapes`: per input, a dict of dim -> Dim (or a tuple or list of
# them), or the same keyed by forward's argument names; None: every shape static.
DynamicShapes = dict[str, Any] | tuple[Any, ...] | list[Any] | None


@dataclass
class ModelFile:
    """MODEL.py's names, checked. Not frozen: a compile worker drops `model` once captured."""

    path: Path
    sha256: str
    model: torch.nn.Module | None
    example_inputs: tuple[torch.Tensor, ...]
    dynamic_shapes: DynamicShapes
    split_ops: tuple[str, ...] | None
    static_inputs: tuple[str, ...] | None = None  # inputs CUDA graphs use by reference (persistent state)
    pad_values: dict[str, int | float] | None = None  # input name -> the value padded positions take under CUDA graphs
    exports: dict[str, object] | None = None  # names the package re-exports (transpiler/exports.py)


def import_modules(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:
            raise TranspileError(
                f"--import {name}: {type(error).__name__}: {error}; make the module importable "
                "(it is looked up from MODEL.py's folder and the current sys.path)"
            ) from error


def load_model_file(path: str | Path, imports: list[str], fake_parameters: bool = False) -> ModelFile:
    """fake_parameters: build the model with parameters as fakes (fake_weights.py), for a
    package that ships none of their values."""
    path = Path(path)
    if not path.is_file():
        raise TranspileError(
            f"{path}: no such file; pass the path of a model.py that defines `model` and `example_inputs`"
        )
    source = path.read_bytes()
    folder = str(path.resolve().parent)
    # Sibling modules (custom ops, layers) import as they would next to the model.
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import_modules(imports)
    module_name = f"_transpile_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as error:
        raise TranspileError(f"{path}:{error.lineno}: syntax error: {error.msg}; fix the file and run again") from error
    # Registered while it runs, as an import would: dataclasses and pickling look it up.
    sys.modules[module_name] = module
    try:
        with parameters_as_fakes() if fake_parameters else contextlib.nullcontext():
            exec(code, module.__dict__)
    except TranspileError:  # raised by the transpiler's own checks while the file ran
        sys.modules.pop(module_name, None)
        raise
    except Exception as error:
        sys.modules.pop(module_name, None)
        if fake_parameters and _reads_fake_values(error):
            raise TranspileError(
                f"{path} reads a parameter's value while it builds the model ({type(error).__name__}); "
                "--weights none and --tensor-parallel build it without parameter values: compute such values "
                "from plain tensors (buffers may be), or transpile with --weights embed"
            ) from error
        raise TranspileError(
            f"{path} raised {type(error).__name__} when imported: {error}; run `python {path}` to see where"
        ) from error

    missing = [name for name in ("model", "example_inputs") if name not in module.__dict__]
    if missing:
        raise TranspileError(
            f"{path} does not define {' or '.join(f'`{n}`' for n in missing)}; "
            "define `model` (a torch.nn.Module) and `example_inputs` (a tuple of tensors) at module level"
        )
    model = module.model
    if not isinstance(model, torch.nn.Module):
        raise TranspileError(
            f"{path}: `model` is a {type(model).__name__}, not a torch.nn.Module; assign the module instance to `model`"
        )
    example_inputs = module.example_inputs
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in example_inputs):
        raise TranspileError(f"{path}: `example_inputs` must be a tuple of tensors (one per argument of forward)")
    split_ops = module.__dict__.get("split_ops")
    if split_ops is not None and (
        not isinstance(split_ops, (list, tuple)) or not all(isinstance(op, str) for op in split_ops)
    ):
        raise TranspileError(
            f'{path}: `split_ops` must be a list of op names such as "aten::scaled_dot_product_attention"'
        )
    static_inputs = module.__dict__.get("static_inputs")
    if static_inputs is not None and (
        not isinstance(static_inputs, (list, tuple)) or not all(isinstance(n, str) for n in static_inputs)
    ):
        raise TranspileError(f'{path}: `static_inputs` must be a tuple of input names such as ("kv_cache",)')
    pad_values = module.__dict__.get("pad_values")
    if pad_values is not None and (
        not isinstance(pad_values, dict)
        or not all(isinstance(k, str) and _is_pad_value(v) for k, v in pad_values.items())
    ):
        raise TranspileError(
            f'{path}: `pad_values` must map input names to numbers or "last", such as {{"slot_mapping": -1}}'
        )
    exports = module.__dict__.get("exports")
    if exports is not None and not isinstance(exports, dict):
        raise TranspileError(
            f'{path}: `exports` must be a dict of names the package re-exports, such as {{"BLOCK_SIZE": 16}}'
        )
    return ModelFile(
        path=path,
        sha256=hashlib.sha256(source).hexdigest(),
        model=model,
        example_inputs=tuple(example_inputs),
        dynamic_shapes=module.__dict__.get("dynamic_shapes"),
        split_ops=tuple(split_ops) if split_ops is not None else None,
        static_inputs=tuple(static_inputs) if static_inputs is not None else None,
        pad_values=dict(pad_values) if pad_values is not None else None,
        exports=dict(exports) if exports is not None else None,
    )


def _is_pad_value(value) -> bool:
    """A number, or "last" (CUDA-graph padding repeats the last valid entry)."""
    if value == "last":
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reads_fake_values(error: BaseException) -> bool:
    """Whether the error is torch refusing to give a fake tensor's value (`.item()`,
    `bool(tensor)`, `.tolist()`, `.numpy()`), somewhere in its chain."""
    from torch._subclasses.fake_tensor import DataDependentOutputException

    seen = 0
    while error is not None and seen < 8:
        if (
            isinstance(error, DataDependentOutputException)
            or "FakeTensor" in str(error)
            or "fake tensor" in str(error).lower()
        ):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False
