"""The house's seams, checked on the source (nothing is transpiled): device names are
compared only inside transpiler/targets/, devices and CPU levels come from one table each,
and options are parsed where they enter. (The import layers: `lint-imports` in CI.)"""

from __future__ import annotations

import ast
import sys
import types

import pytest
from conftest import ROOT

from transpiler import options as parse
from transpiler.errors import TranspileError
from transpiler.ir import SizeRange
from transpiler.targets import DEVICES, TARGETS, get_target
from transpiler.targets.cpu_isa import CPU_ISAS, parse_cpu_isa

PACKAGE = ROOT / "transpiler"


def _device_names_used(path) -> list[str]:
    """Where a module compares with a device name or keys a table by one."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                elements = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                found += [
                    f"{path.name}:{node.lineno}: compares with {e.value!r}"
                    for e in elements
                    if isinstance(e, ast.Constant) and e.value in DEVICES
                ]
        if isinstance(node, ast.Dict):
            found += [
                f"{path.name}:{node.lineno}: a table keyed by {k.value!r}"
                for k in node.keys
                if isinstance(k, ast.Constant) and k.value in DEVICES
            ]
    return found


def test_no_device_name_is_compared_outside_the_targets():
    # transpiler/runtime/ is the emitted packages' code (copied into them), which asks torch
    # where tensors are at run time; it is not the transpiler's.
    modules = [p for p in PACKAGE.rglob("*.py") if not {"targets", "runtime"} & set(p.relative_to(PACKAGE).parts)]
    assert len(modules) > 20
    assert [line for path in modules for line in _device_names_used(path)] == []


def test_the_check_finds_a_device_comparison(tmp_path):
    branchy = tmp_path / "branchy.py"
    branchy.write_text('def f(device):\n    return 1 if device == "cuda" else {"cpu": 2}\n')
    assert _device_names_used(branchy) == ["branchy.py:2: compares with 'cuda'", "branchy.py:2: a table keyed by 'cpu'"]


def test_a_new_target_is_one_entry_in_the_table(monkeypatch):
    module = types.ModuleType("fake_rocm_target")

    class RocmTarget:
        name = "rocm"

    module.RocmTarget = RocmTarget
    monkeypatch.setitem(sys.modules, "fake_rocm_target", module)
    monkeypatch.setitem(TARGETS, "rocm", "fake_rocm_target:RocmTarget")
    assert isinstance(get_target("rocm"), RocmTarget)


def test_every_registered_target_answers_the_same_questions():
    for device in DEVICES:
        target = get_target(device)  # the CUDA target is looked up on a CPU machine too
        assert target.name == device
        assert target.kernel_type.piece_template.startswith("pieces/")
        for hook in (
            "check",
            "compile_variant",
            "inductor_patches",
            "fingerprint",
            "tuning_identity",
            "build_assumptions",
            "graphs_context",
            "extra_modules",
            "cpu_features",
            "init_context",
        ):
            assert callable(getattr(target, hook)), (device, hook)


def test_the_command_offers_the_tables_choices():
    from transpiler.cli import _parser

    actions = {action.dest: action for action in _parser()._actions}
    assert list(actions["device"].choices) == list(DEVICES)
    assert list(actions["cpu_isa"].choices) == list(CPU_ISAS)


def test_cpu_levels_come_from_one_table():
    assert parse_cpu_isa("avx512").march == "x86-64-v4" and parse_cpu_isa("avx512").simdlen == 512
    assert set(parse_cpu_isa("avx2").features) < set(parse_cpu_isa("avx512").features)
    assert parse_cpu_isa("native").features is None
    with pytest.raises(TranspileError, match="--cpu-isa sse2: choose one of avx2, avx512, native"):
        parse_cpu_isa("sse2")


def test_options_are_parsed_into_typed_values_where_they_enter():
    assert parse.parse_ranges("17-64, 1-16") == (SizeRange(1, 16), SizeRange(17, 64))
    assert parse.parse_ranges(None) is None
    assert parse.parse_sizes("8,1,8") == (1, 8)
    assert parse.parse_capture_sizes("4,2") == (4, 2)  # order and bounds: checked by the target
    assert parse.parse_names("a, b,,") == ("a", "b")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: parse.parse_ranges("1-16,10-64"), "--ranges: 1-16 and 10-64 overlap"),
        (lambda: parse.parse_ranges("1-16,20-64"), "--ranges: sizes 17-19 fall between 1-16 and 20-64"),
        (lambda: parse.parse_ranges("16-1"), "--ranges: '16-1' is not LO-HI with LO <= HI"),
        (lambda: parse.parse_sizes("1,x"), "--sizes: 'x' is not a whole number"),
        (lambda: parse.parse_capture_sizes("1,two"), "--capture-sizes: 'two' is not a whole number"),
        (lambda: parse.parse_weights("some"), "--weights some: choose embed or none"),
    ],
)
def test_bad_options_are_refused_in_one_line(call, message):
    with pytest.raises(TranspileError, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)
