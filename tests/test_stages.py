"""The stages' typed hand-overs, unit by unit (nothing is transpiled): the compile stage's
deduplication of variants and kernels, and which templates make up __init__.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from transpiler.compiling import _unique_piece
from transpiler.emit import INIT_TEMPLATE, TENSOR_PARALLEL_INIT_TEMPLATE, init_templates
from transpiler.ir import CompiledVariant, SizeRange, TensorParallel, Variant
from transpiler.prepare import PieceGroup
from transpiler.targets import get_target
from transpiler.targets.cpu import CppKernel


def _variant(name: str, code: str, kernels: list[tuple[str, str]]) -> CompiledVariant:
    lo = int(name.rsplit("_", 1)[-1])
    return CompiledVariant(
        variant=Variant(name, SizeRange(lo, lo), static=True),
        canonical_code=code,
        function_source=f"def {name}(args): ...\n",
        kernels=[CppKernel(name=f"{name}_{k}", source=source, binary_path=f"/build/{k}.so") for k, source in kernels],
        runtime_names=[],
        module_names=[],
    )


def test_variants_with_the_same_code_are_emitted_once_and_kernels_shipped_once():
    group = PieceGroup(
        module_name="piece_0",
        input_names=("x",),
        instances=(SimpleNamespace(outputs=[1, 2]), SimpleNamespace(outputs=[1, 2])),
    )
    compiled = [
        _variant("size_1", "A", [("k0", "add"), ("k1", "mul")]),
        _variant("size_2", "B", [("k0", "add"), ("k1", "sub")]),
        _variant("size_3", "A", [("k0", "add"), ("k1", "mul")]),
    ]
    piece = _unique_piece(group, compiled)
    assert (piece.module_name, piece.input_names, piece.num_outputs, piece.call_count) == ("piece_0", ("x",), 2, 2)
    assert [v.alias_of for v in piece.variants] == [None, None, "size_1"]
    assert piece.variants[2].kernels == []  # bound to size_1's function: it ships nothing
    assert [(k.name, k.alias_of) for k in piece.kernels] == [
        ("size_1_k0", None),
        ("size_1_k1", None),
        ("size_2_k0", "size_1_k0"),
        ("size_2_k1", None),
    ]
    # The compile results themselves are left as they were (new objects are made).
    assert compiled[2].alias_of is None and len(compiled[2].kernels) == 2
    assert all(k.alias_of is None for v in compiled for k in v.kernels)


@pytest.mark.parametrize(
    "device, parallel, expected",
    [
        ("cpu", False, [INIT_TEMPLATE]),
        ("cpu", True, [INIT_TEMPLATE, TENSOR_PARALLEL_INIT_TEMPLATE]),
        ("cuda", False, [INIT_TEMPLATE, "targets/cuda/__init__.py.jinja"]),
        ("cuda", True, [INIT_TEMPLATE, TENSOR_PARALLEL_INIT_TEMPLATE, "targets/cuda/__init__.py.jinja"]),
    ],
)
def test_init_is_the_shared_template_with_block_extensions(device, parallel, expected):
    package = SimpleNamespace(tensor_parallel=TensorParallel(2, "g", (), ()) if parallel else None)
    assert init_templates(package, get_target(device)) == expected


def test_each_init_template_defines_load_at_most_once():
    from transpiler.templating import template_dir

    for name in (INIT_TEMPLATE, TENSOR_PARALLEL_INIT_TEMPLATE, "targets/cuda/__init__.py.jinja"):
        source = (template_dir() / name).read_text()
        assert source.count("def load(") <= 1, name
        assert "{% if tensor_parallel" not in source, name
