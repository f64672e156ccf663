"""Turn Inductor's wrapper module into one standalone function of an emitted piece module.

Inductor's output imports its own runtime, compiles kernels when imported and defines
`call(args)`. We keep `call`, renamed after its variant, and rewrite with libcst:
- kernel globals get the variant's prefix (several variants share one module);
- `argN_1` become the piece's input names, so the code reads like the model;
- `extern_kernels.mm(...)` becomes the torch function it stands for (`torch.mm`);
and check that every other global it reads is one the package runtime provides.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m
from libcst.metadata import MetadataWrapper, ScopeProvider

from .errors import TranspileError

# Names Inductor's `call` may read that the emitted runtime module defines.
RUNTIME_NAMES = frozenset(
    {
        "aten",
        "assert_alignment",
        "assert_size_stride",
        "device",
        "empty_strided",
        "empty_strided_cpu",
        "inductor_ops",
        "reinterpret_tensor",
    }
)
MODULE_NAMES = frozenset({"torch", "math"})
_BUILTINS = frozenset(dir(builtins))


@dataclass
class RewrittenCall:
    function_source: str
    kernel_sources: dict[str, str]  # original kernel name -> C++ source
    runtime_names: list[str]  # names to import from the package runtime
    module_names: list[str]  # modules to import (torch, math)


def _kernel_definitions(module: cst.Module) -> dict[str, str]:
    """`name = async_compile.cpp_pybinding(argtypes, '''source''')` at module level."""
    kernels = {}
    pattern = m.Assign(
        targets=[m.AssignTarget(target=m.Name())],
        value=m.Call(func=m.Attribute(value=m.Name("async_compile"), attr=m.Name("cpp_pybinding"))),
    )
    for statement in module.body:
        if not m.matches(statement, m.SimpleStatementLine(body=[pattern])):
            continue
        assign = statement.body[0]
        name = assign.targets[0].target.value
        source_node = assign.value.args[1].value
        kernels[name] = ast.literal_eval(module.code_for_node(source_node))
    return kernels


def _find_call(module: cst.Module) -> cst.FunctionDef:
    found = []

    class Finder(cst.CSTVisitor):
        def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
            if node.name.value == "call":
                found.append(node)
            return False

        def visit_ClassDef(self, node: cst.ClassDef) -> bool:
            return True

    module.visit(Finder())
    if len(found) != 1:
        raise TranspileError(f"unexpected Inductor output: {len(found)} `call` functions")
    return found[0]


def _argument_names(call: cst.FunctionDef) -> list[str]:
    """The names in `arg0_1, arg1_1 = args`, the first statement of `call`."""
    for statement in call.body.body:
        if m.matches(statement, m.SimpleStatementLine(body=[m.Assign(value=m.Name("args"))])):
            target = statement.body[0].targets[0].target
            if isinstance(target, cst.Name):
                return [target.value]
            return [element.value.value for element in target.elements]
    return []  # a piece without inputs


class _Renamer(cst.CSTTransformer):
    def __init__(self, names: dict[str, str], extern: dict[str, str]):
        self.names = names
        self.extern = extern

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
        new = self.names.get(updated.value)
        return updated.with_changes(value=new) if new else updated

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute):
        if m.matches(updated, m.Attribute(value=m.Name("extern_kernels"))):
            return cst.parse_expression(self.extern[updated.attr.value])
        return updated


def _extern_kernel_path(name: str) -> str:
    """The public torch name of `extern_kernels.<name>`, so the package needs no Inductor."""
    import torch
    from torch._inductor.select_algorithm import extern_kernels

    target = getattr(extern_kernels, name, None)
    for prefix, namespace in (("torch", torch), ("torch.nn.functional", torch.nn.functional)):
        if target is not None and getattr(namespace, getattr(target, "__name__", ""), None) is target:
            return f"{prefix}.{target.__name__}"
    raise TranspileError(
        f"Inductor used extern kernel `extern_kernels.{name}`, which has no public torch equivalent; "
        "add the op to the splitting ops (--split-ops) to keep it out of compiled pieces"
    )


def _global_reads(function: cst.FunctionDef) -> set[str]:
    """Names the function reads but never assigns: what its module must provide."""
    scopes = set(MetadataWrapper(cst.Module(body=[function])).resolve(ScopeProvider).values())
    reads, assigned = set(), {function.name.value}
    for scope in scopes:
        if scope is None or type(scope).__name__ == "GlobalScope":
            continue
        assigned |= {assignment.name for assignment in scope.assignments}
        reads |= {access.node.value for access in scope.accesses if isinstance(access.node, cst.Name)}
    return reads - assigned


def rewrite_call(source_code: str, function_name: str, input_names: list[str], kernel_prefix: str) -> RewrittenCall:
    module = cst.parse_module(source_code)
    kernel_sources = _kernel_definitions(module)
    call = _find_call(module)

    arguments = _argument_names(call)
    if len(arguments) != len(input_names):
        raise TranspileError(
            f"unexpected Inductor output: `call` takes {len(arguments)} arguments, the piece has {len(input_names)}"
        )
    existing = {n.value for n in m.findall(call, m.Name())}
    renames = {k: f"{kernel_prefix}{k}" for k in kernel_sources}
    for old, new in zip(arguments, input_names):
        # Keep Inductor's name where the readable one is taken inside `call`.
        if new not in existing or new == old:
            renames[old] = new
    extern = {
        a.attr.value: _extern_kernel_path(a.attr.value)
        for a in m.findall(call, m.Attribute(value=m.Name("extern_kernels")))
    }
    renamed = call.visit(_Renamer(renames, extern))
    self_params = [p for p in renamed.params.params if p.name.value != "self"]
    function = renamed.with_changes(
        name=cst.Name(function_name),
        params=renamed.params.with_changes(params=self_params),
        leading_lines=[],
        decorators=[],
    )

    reads = _global_reads(function)
    prefixed_kernels = {f"{kernel_prefix}{k}" for k in kernel_sources}
    unknown = sorted(reads - RUNTIME_NAMES - MODULE_NAMES - _BUILTINS - prefixed_kernels)
    if unknown:
        raise TranspileError(
            f"Inductor's output uses {', '.join(unknown)}, which the emitted runtime does not provide; "
            "add the op that needs it to the splitting ops (--split-ops)"
        )
    return RewrittenCall(
        function_source=cst.Module(body=[function]).code,
        kernel_sources=kernel_sources,
        runtime_names=sorted(reads & RUNTIME_NAMES),
        module_names=sorted(reads & MODULE_NAMES),
    )
