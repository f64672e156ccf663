"""The figures scripts/tp_bench.py and scripts/gpu_tp_check.py print: medians with ranges."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import tp_bench  # noqa: E402


def test_summary_is_median_min_max():
    assert tp_bench.summary([5.0, 1.0, 3.0, 100.0]) == (4.0, 1.0, 100.0)
    with pytest.raises(ValueError):
        tp_bench.summary([])


def test_cell_ratio_and_table():
    assert tp_bench.cell([10.4, 12.6, 11.0]) == "11 us (10-13)"
    assert tp_bench.ratio([20.0, 22.0], [10.0]) == "2.10x"
    table = tp_bench.markdown_table(["size", "time"], [[1, "3 us (2-4)"]])
    assert table == "| size | time |\n|---|---|\n| 1 | 3 us (2-4) |"
