"""The figures scripts/gpu_bench.py computes: medians, ranges, best modes, ratios."""

import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "scripts" / "gpu_bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


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
