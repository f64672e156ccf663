"""The figures scripts/gpu_bench.py computes: medians, ranges, best modes, ratios."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import gpu_bench as bench  # noqa: E402
import gpu_weights_read  # noqa: E402


def test_rounds_merge_into_one_summary_per_size():
    rounds = [
        {"eager": {"1": [10.0, 12.0, 11.0]}, "package": {"1": [5.0, 7.0]}},
        {"eager": {"1": [9.0]}, "package": {"1": [6.0]}},
    ]
    merged = bench.merge_rounds(rounds)
    assert merged["eager"][1] == {"median": 10.5, "min": 9.0, "max": 12.0, "n": 4}
    assert merged["package"][1] == {"median": 6.0, "min": 5.0, "max": 7.0, "n": 3}


def test_table_compares_best_package_with_best_compile_and_the_floor():
    summaries = {
        "torch.compile": {1: bench.summarize([400.0]), 128: bench.summarize([900.0])},
        "reduce-overhead": {1: bench.summarize([200.0]), 128: bench.summarize([1000.0])},
        "package": {1: bench.summarize([300.0]), 128: bench.summarize([800.0])},
        "package + full graphs": {1: bench.summarize([150.0])},
    }
    assert bench.best(summaries, 1, ["package", "package + full graphs"]) == ("package + full graphs", 150.0)
    lines = bench.table(summaries, floor_us=100.0)
    assert lines[0].startswith("| tokens | torch.compile | reduce-overhead | package | package + full graphs |")
    decode = next(line for line in lines if line.startswith("| 1 |"))
    assert "0.75x (package + full graphs / reduce-overhead)" in decode and decode.endswith("| 1.50x |")
    prefill = next(line for line in lines if line.startswith("| 128 |"))
    assert "0.89x (package / torch.compile)" in prefill and prefill.endswith("| - |")
    assert "| - |" in prefill  # no full-graph figure at 128


def test_weights_read_table_compares_with_the_slower_floor():
    rows = gpu_weights_read.table(
        {
            "package": [0.2, 0.4, 0.3],
            "previous": [0.9],
            "broken": [],
            "floor: read": [0.1, 0.2, 0.3],
            "floor: copy": [0.25],
        },
        size_bytes=3_000_000_000,
    )
    assert rows[2] == "| package | 300 (200-400) | 10.0 | 1.20x |"
    assert rows[3] == "| previous | 900 (900-900) | 3.3 | 3.60x |"
    assert rows[4] == "| broken | failed | | |"
    assert rows[5] == "| floor: read | 200 (100-300) | 15.0 |  |"


def test_tuned_package_columns_count_as_package_modes():
    summaries = {
        "reduce-overhead": {1: bench.summarize([200.0])},
        "package + full graphs": {1: bench.summarize([150.0])},
        "tuned package + full graphs": {1: bench.summarize([120.0])},
    }
    lines = bench.table(summaries, floor_us=100.0)
    assert lines[0].startswith("| tokens | reduce-overhead | package + full graphs | tuned package + full graphs |")
    decode = next(line for line in lines if line.startswith("| 1 |"))
    assert "0.60x (tuned package + full graphs / reduce-overhead)" in decode and decode.endswith("| 1.20x |")
