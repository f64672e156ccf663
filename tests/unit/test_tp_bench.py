"""The figures scripts/tp_bench.py and scripts/gpu_tp_check.py print: medians with ranges
(scripts/harness.py's, as every script's)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import harness  # noqa: E402


def test_summary_is_median_min_max():
    assert harness.median_min_max([5.0, 1.0, 3.0, 100.0]) == (4.0, 1.0, 100.0)
    with pytest.raises(ValueError):
        harness.median_min_max([])


def test_cell_ratio_and_table():
    assert harness.format_us([10.4, 12.6, 11.0]) == "11 us (10-13)"
    split, inside = harness.summarize([20.0, 22.0])["median"], harness.summarize([10.0])["median"]
    assert harness.format_ratio(harness.ratio(split, inside)) == "2.10x"
    table = harness.markdown_table(["size", "time"], [[1, "3 us (2-4)"]])
    assert table == "| size | time |\n|---|---|\n| 1 | 3 us (2-4) |"
