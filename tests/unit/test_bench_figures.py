"""The figures scripts/gpu_bench.py computes: medians, ranges, best modes, ratios."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import gpu_bench as bench  # noqa: E402
import gpu_weights_read  # noqa: E402


def test_rounds_merge_into_one_summary_per_case():
    rounds = [
        {"eager": {"decode 1": [10.0, 12.0, 11.0]}, "package": {"decode 1": [5.0, 7.0]}},
        {"eager": {"decode 1": [9.0]}, "package": {"decode 1": [6.0]}},
    ]
    merged = bench.merge_rounds(rounds)
    assert merged["eager"]["decode 1"] == {"median": 10.5, "min": 9.0, "max": 12.0, "n": 4}
    assert merged["package"]["decode 1"] == {"median": 6.0, "min": 5.0, "max": 7.0, "n": 3}


def test_table_compares_best_package_with_best_compile_and_the_floor():
    summaries = {
        "torch.compile": {"decode 1": bench.summarize([400.0]), "prefill 128": bench.summarize([900.0])},
        "reduce-overhead": {"decode 1": bench.summarize([200.0]), "prefill 128": bench.summarize([1000.0])},
        "package": {"decode 1": bench.summarize([300.0]), "prefill 128": bench.summarize([800.0])},
        "package + full graphs": {"decode 1": bench.summarize([150.0])},
    }
    assert bench.best(summaries, "decode 1", ["package", "package + full graphs"]) == ("package + full graphs", 150.0)
    lines = bench.table(summaries, {"decode 1": 100.0})
    assert lines[0].startswith("| case | torch.compile | reduce-overhead | package | package + full graphs |")
    decode = next(line for line in lines if line.startswith("| decode 1 |"))
    assert "0.75x (package + full graphs / reduce-overhead)" in decode and decode.endswith("| 100 us | 1.50x |")
    prefill = next(line for line in lines if line.startswith("| prefill 128 |"))
    assert "0.89x (package / torch.compile)" in prefill and prefill.endswith("| - | - |")
    assert lines.index(decode) < lines.index(prefill)  # the cases' order


def test_the_floor_adds_the_keys_and_values_a_step_reads():
    import serving_batches

    class Config:
        layers, kv_heads, head_dim = 2, 4, 8

    floors = bench.floors(weight_bytes=1_000_000, bandwidth=1e9, config=Config, itemsize=2)
    # decode 8x1: 8 sequences of 129 tokens, 2 layers x (keys, values) x 4 heads x 8 x 2 bytes
    assert floors["decode 8x1"] == (1_000_000 + 8 * 129 * 2 * 2 * 4 * 8 * 2) / 1e9 * 1e6
    assert floors["decode 1"] < floors["decode 8"] < floors["decode 8x1"]
    assert "prefill 128" not in floors
    assert serving_batches.Case("decode 8x1", 8, 1, 128).blocks() == 8 * 9


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
        "reduce-overhead": {"decode 1": bench.summarize([200.0])},
        "package + full graphs": {"decode 1": bench.summarize([150.0])},
        "tuned package + full graphs": {"decode 1": bench.summarize([120.0])},
    }
    lines = bench.table(summaries, {"decode 1": 100.0})
    assert lines[0].startswith("| case | reduce-overhead | package + full graphs | tuned package + full graphs |")
    decode = next(line for line in lines if line.startswith("| decode 1 |"))
    assert "0.60x (tuned package + full graphs / reduce-overhead)" in decode and decode.endswith("| 1.20x |")
