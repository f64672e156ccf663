"""MODEL.py's `exports`: each name becomes one line of the package's __init__.py, or a
one-line refusal naming the export."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from transpiler.errors import TranspileError
from transpiler.exports import build_exports


def test_plain_data_functions_and_partials_become_lines():
    exports = build_exports(
        {
            "BLOCK_SIZE": 16,
            "LAYOUT": {"names": ("k", "v"), "dtype": torch.bfloat16, "scale": 0.5, "none": None, "list": [1]},
            "zeros": torch.zeros,
            "cache": functools.partial(torch.full, (2,), 1.0, dtype=torch.float16),
        },
        [],
    )
    assert exports.lines == (
        "BLOCK_SIZE = 16",
        "LAYOUT = {'names': ('k', 'v'), 'dtype': torch.bfloat16, 'scale': 0.5, 'none': None, 'list': [1]}",
        "cache = functools.partial(torch.full, (2,), 1.0, dtype=torch.float16)",
        "zeros = torch.zeros",
    )
    assert exports.modules == ("functools",)
    namespace = {"torch": torch, "functools": functools}
    for line in exports.lines:
        exec(line, namespace)
    assert namespace["cache"]().dtype == torch.float16 and namespace["LAYOUT"]["names"] == ("k", "v")


def test_functions_of_imported_modules_are_imported_by_name():
    exports = build_exports({"gcd": math.gcd}, ["math"])
    assert exports.lines == ("gcd = math.gcd",) and exports.modules == ("math",)


@pytest.mark.parametrize(
    "exports, message",
    [
        ({"gcd": math.gcd}, r"exports\['gcd'\] is a function of module math, which the package does not import"),
        ({"helper": lambda: 1}, r"exports\['helper'\] is .*not a module-level function"),
        ({"OBJECT": object()}, r"exports\['OBJECT'\] holds a object; an export is plain data"),
        ({"cache": functools.partial(torch.zeros, torch.ones(1))}, r"exports\['cache'\] holds a Tensor"),
        ({"_private": 1}, r"exports: '_private' is not a public Python name"),
        ({"class": 1}, r"exports: 'class' is not a public Python name"),
    ],
)
def test_bad_exports_are_refused_in_one_line(exports, message):
    with pytest.raises(TranspileError, match=message) as error:
        build_exports(exports, [])
    assert "\n" not in str(error.value)
