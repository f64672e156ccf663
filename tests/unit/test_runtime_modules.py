"""The package runtime (transpiler/runtime/) as the packages get it: copied verbatim, so
each module must be what black makes of it (the emitter formats every .py it writes), and
import nothing but torch, the standard library and its sibling modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import black
import pytest

from transpiler.runtime import MODULES, runtime_files
from transpiler.templating import BLACK_MODE

RUNTIME_DIR = Path(__file__).resolve().parents[2] / "transpiler" / "runtime"
ALLOWED_TOP_LEVEL = set(sys.stdlib_module_names) | {"torch"}


def test_every_module_of_the_folder_is_listed():
    assert sorted(MODULES) == sorted(p.name for p in RUNTIME_DIR.glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("name", MODULES)
def test_module_is_black_stable(name):
    source = runtime_files(name)[name]
    assert black.format_str(source, mode=BLACK_MODE) == source, f"run black on transpiler/runtime/{name}"


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_only_torch_and_its_siblings(name):
    tree = ast.parse(runtime_files(name)[name])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: a sibling, which the package ships beside it
                siblings = [node.module] if node.module else [alias.name for alias in node.names]
                assert node.level == 1 and all(f"{s}.py" in MODULES for s in siblings), (name, siblings)
                continue
            modules = [node.module]
        else:
            continue
        for module in modules:
            assert module.split(".")[0] in ALLOWED_TOP_LEVEL, (name, module)
            assert not module.startswith(("torch._dynamo", "torch._inductor")), (name, module)


def test_unknown_module_is_refused():
    with pytest.raises(ValueError, match="not a runtime module: stitch.py"):
        runtime_files("stitch.py")


def test_defining_the_attention_op_imports_neither_dynamo_nor_inductor():
    """transpile::sdpa is defined by importing transpiler.runtime.ops, as the package does."""
    code = (
        "import sys\n"
        "from transpiler import opaque_attention\n"
        "opaque_attention.register()\n"
        "import torch\n"
        "assert torch.ops.transpile.sdpa.default is not None\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'torch._inductor'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
