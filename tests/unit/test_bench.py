"""scripts/bench.py's own logic: options, the steady-state table (thread counts and packages
built elsewhere), the stitch.py rewrites, package sizes and the report. Nothing here transpiles."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench  # noqa: E402
import harness  # noqa: E402


def test_options_of_threads_and_other_packages(tmp_path):
    assert bench.thread_counts_option("1,2") == [1, 2] and bench.thread_counts_option("0") == [0]
    for bad in ("x", "-1", "0,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.thread_counts_option(bad)
    (tmp_path / "tiny_llama").mkdir()
    with pytest.raises(argparse.ArgumentTypeError, match="no package there"):
        bench.package_option(f"before={tmp_path / 'tiny_llama'}")
    (tmp_path / "tiny_llama" / "__init__.py").write_text("")
    assert bench.package_option(f"before={tmp_path / 'tiny_llama'}") == ("before", tmp_path / "tiny_llama")
    with pytest.raises(argparse.ArgumentTypeError, match="LABEL=DIR"):
        bench.package_option(str(tmp_path))
    assert bench.thread_env(2) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"} and bench.thread_env(0) == {}
    assert bench.threads_note([1, 2]) == "OMP_NUM_THREADS=1 and 2 in every measured process (--threads)"


def _steady(variants, threads, medians):
    """A steady section: medians[label][size] = list of per-process medians."""
    return {
        "sizes": [1, 256],
        "variants": variants,
        "threads": threads,
        "median_us": {
            label: {str(s): bench.stats(v) for s, v in by_size.items()} for label, by_size in medians.items()
        },
        "method": "m",
    }


def test_steady_table_with_one_thread_count_keeps_the_usual_columns():
    section = _steady(
        ["eager", "compile", "package"],
        [1],
        {
            "eager": {1: [400.0], 256: [3000.0]},
            "compile": {1: [200.0], 256: [2000.0]},
            "package": {1: [100.0, 90.0, 120.0], 256: [1000.0]},
        },
    )
    header, rows = bench.steady_table(section)
    assert header == ["size", "eager", "torch.compile (dynamic)", "package", "package/compile", "package/eager"]
    assert rows[0] == ["1", "400 us", "200 us", "100 us (90.0\u2013120)", "0.50x", "0.25x"]
    assert rows[1][-2:] == ["0.50x", "0.33x"]


def test_steady_table_across_thread_counts_and_another_commits_package():
    label = bench.steady_label
    threads = [1, 2]
    assert label("package", 2, threads) == "package @2t" and label("package", 1, [1]) == "package"
    section = _steady(
        ["package", "package:before"],
        threads,
        {
            label("package", 1, threads): {1: [110.0], 256: [2000.0]},
            label("package:before", 1, threads): {1: [100.0], 256: [1600.0]},
            label("package", 2, threads): {1: [150.0], 256: [1000.0]},
            label("package:before", 2, threads): {1: [120.0], 256: [1250.0]},
        },
    )
    header, rows = bench.steady_table(section)
    assert header == ["size", "threads", "package", "package:before", "package/package:before"]
    assert [row[:2] + row[-1:] for row in rows] == [
        ["1", "1", "1.10x"],
        ["1", "2", "1.25x"],
        ["256", "1", "1.25x"],
        ["256", "2", "0.80x"],
    ]
    # Only the first thread count's package and torch.compile feed the targets; here there is no compile.
    assert bench.targets({"sections": {"steady": section}}) == []


def test_targets_compare_package_with_compile_per_size():
    section = _steady(
        ["compile", "package"], [1], {"compile": {1: [200.0], 256: [2000.0]}, "package": {1: [150.0], 256: [2100.0]}}
    )
    rows = bench.targets({"sections": {"steady": section}})
    assert [row[2] for row in rows] == ["met", "missed"]
    assert rows[0][1] == "package 150 us vs compile 200 us: 0.75x"


STITCH = """def forward(weights, x):
    a = variant.piece_0([x, weights[0]])
    del x
    b = variant.piece_1([a])
    del a
    return b
"""


def test_stitch_rewrites(tmp_path):
    (tmp_path / "stitch.py").write_text(STITCH)
    assert bench.strip_dels(tmp_path) == 2
    assert "del" not in (tmp_path / "stitch.py").read_text()
    (tmp_path / "stitch.py").write_text(STITCH)
    assert bench.release_before_call(tmp_path) == 2
    rewritten = (tmp_path / "stitch.py").read_text()
    assert "_args = [x, weights[0]]\n    del x\n    a = variant.piece_0(_args)" in rewritten
    namespace = {
        "variant": type(
            "V", (), {"piece_0": staticmethod(lambda args: sum(args)), "piece_1": staticmethod(lambda args: -args[0])}
        )
    }
    exec(rewritten, namespace)
    assert namespace["forward"]([2], 3) == -5  # the same result as before the rewrite


def test_package_stats_by_kind(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "weights.safetensors").write_bytes(b"w" * 10)
    (tmp_path / "kernels" / "k.so").write_bytes(b"s" * 5)
    (tmp_path / "kernels" / "k.cpp").write_bytes(b"c" * 3)
    (tmp_path / "__init__.py").write_bytes(b"p" * 2)
    (tmp_path / "manifest.json").write_bytes(b"{}")
    stats = bench.package_stats(tmp_path)
    assert stats == {
        "bytes": 22,
        "files": 5,
        "bytes_by_kind": {"weights": 10, "kernel .so": 5, "kernel .cpp": 3, ".py": 2, "other": 2},
    }


def test_report_of_a_steady_only_run():
    results = {
        "header": {
            "date": "d",
            "machine": {"cpu_model": "CPU X", "cpus": 2, "cores": 2},
            "platform": "p",
            "torch": "t",
            "python": "3.11",
            "threads_note": bench.threads_note([1]),
            "model": "m.py",
            "ranges": "1-16",
            "sizes": "1",
            "repeats": 3,
            "quick": True,
            "command": "bench.py m.py",
        },
        "sections": {"steady": _steady(["package"], [1], {"package": {1: [100.0], 256: [900.0]}})},
        "errors": {},
        "total_seconds": 12.0,
        "setup": {},
    }
    markdown = bench.render_markdown(results)
    assert "- machine: CPU X, 2 cores / 2 CPUs; p" in markdown
    assert "| size | package |\n|---|---|\n| 1 | 100 us |\n| 256 | 900 us |" in markdown
    assert harness.markdown_table(["target", "measured", "status"], []) in markdown
