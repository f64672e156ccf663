"""Names MODEL.py asks the package to re-export (`exports = {...}` at module level).

A serving package's caller needs a few things beside the forward: the cache's block size,
a function that makes an empty cache of the right shape. MODEL.py names them in a dict;
each value becomes one line of the package's __init__.py:

- plain data (None, bool, int, float, str, torch.dtype; tuples, lists and dicts of them):
  its literal, `BLOCK_SIZE = 16`;
- a function of an importable module the package imports anyway (one named by --import),
  or of torch: `new_kv_cache = serving_ops.new_kv_cache`;
- functools.partial of such a function with plain-data arguments:
  `new_kv_cache = functools.partial(serving_ops.new_kv_cache, layers=2, kv_heads=2, head_dim=16)`.

Anything else is refused in one line naming the export: the package may import only torch,
its own modules and the --import modules.
"""

from __future__ import annotations

import functools
import importlib
import keyword
from dataclasses import dataclass

import torch

from .errors import TranspileError


@dataclass(frozen=True)
class Exports:
    modules: tuple[str, ...]  # modules the lines refer to (imported by __init__.py)
    lines: tuple[str, ...]  # `NAME = value`, one per export, sorted by name
    names: tuple[str, ...]


def plain_literal(value, where: str) -> str:
    """The Python literal of plain data, deterministic (dicts in their insertion order)."""
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return f'float("{value}")'
        return repr(value)
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, tuple):
        items = [plain_literal(v, where) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(plain_literal(v, where) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{plain_literal(k, where)}: {plain_literal(v, where)}" for k, v in value.items()) + "}"
    raise TranspileError(
        f"exports[{where!r}] holds a {type(value).__name__}; an export is plain data (numbers, strings, "
        "dtypes, tuples, lists, dicts), a function of an --import module, or functools.partial of one"
    )


def _function_path(function, where: str, allowed_modules: set[str]) -> tuple[str, str]:
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", "")
    if module is None or "<" in qualname or not callable(function):
        raise TranspileError(
            f"exports[{where!r}] is {function!r}, not a module-level function; define it at the top level of an --import module"
        )
    if module != "torch" and not module.startswith("torch.") and module not in allowed_modules:
        raise TranspileError(
            f"exports[{where!r}] is a function of module {module}, which the package does not import; "
            f"define it in a module passed with --import (the package imports only torch and those)"
        )
    # The shortest path that finds this very function again (torch's builtins have a
    # qualname of their C class, torch._VariableFunctionsClass.full, and a name, full).
    imported = importlib.import_module(module)
    for path in dict.fromkeys([function.__name__, qualname]):
        target = imported
        for part in path.split("."):
            target = getattr(target, part, None)
        if target is function:
            return module, f"{module}.{path}"
    raise TranspileError(
        f"exports[{where!r}]: {module}.{qualname} does not name this function; export it by its module-level name"
    )


def build_exports(exports: dict | None, imports: list[str]) -> Exports:
    if not exports:
        return Exports((), (), ())
    modules: set[str] = set()
    lines = []
    for name in sorted(exports):
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise TranspileError(f"exports: {name!r} is not a public Python name; use names such as BLOCK_SIZE")
        value = exports[name]
        if isinstance(value, functools.partial):
            module, path = _function_path(value.func, name, set(imports))
            modules |= {"functools", module.split(".")[0] if module.startswith("torch") else module}
            arguments = [plain_literal(a, name) for a in value.args]
            arguments += [f"{key}={plain_literal(v, name)}" for key, v in value.keywords.items()]
            lines.append(f"{name} = functools.partial({', '.join([path, *arguments])})")
        elif callable(value) and not isinstance(value, torch.dtype):
            module, path = _function_path(value, name, set(imports))
            modules.add(module.split(".")[0] if module.startswith("torch") else module)
            lines.append(f"{name} = {path}")
        else:
            lines.append(f"{name} = {plain_literal(value, name)}")
    return Exports(tuple(sorted(modules - {"torch"})), tuple(lines), tuple(sorted(exports)))
