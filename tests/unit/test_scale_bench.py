"""scripts/scale_bench.py's figures: configurations, parameter counts, the process tree,
the tables and the targets. Nothing here transpiles."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "serving_llama"))
import scale_bench  # noqa: E402


def test_configs_by_name_and_depth():
    scale = scale_bench.parse_config("1b:32")
    assert scale.base == "1b" and scale.layers == 32 and scale.fields["hidden"] == 2048
    assert scale_bench.parse_config("8b").fields == {**scale_bench.CONFIGS["8b"]}
    assert scale_bench.CONFIGS["8b"]["layers"] == 32 and scale_bench.CONFIGS["8b"]["ffn"] == 14336
    with pytest.raises(argparse.ArgumentTypeError, match="unknown configuration"):
        scale_bench.parse_config("70b")
    with pytest.raises(argparse.ArgumentTypeError, match="LAYERS must be"):
        scale_bench.parse_config("1b:x")


@pytest.mark.parametrize("name", ["tiny", "1b:1", "8b:1"])
def test_parameter_count_matches_the_decoder(name):
    from llama import Config, Decoder

    fields = scale_bench.parse_config(name).fields
    with torch.device("meta"):
        decoder = Decoder(Config(**fields))
    assert scale_bench.parameter_count(fields) == sum(p.numel() for p in decoder.parameters())


def test_named_sizes_are_the_usual_ones():
    assert 1.0e9 < scale_bench.parameter_count(scale_bench.CONFIGS["1b"]) < 1.2e9
    assert 7.5e9 < scale_bench.parameter_count(scale_bench.CONFIGS["8b"]) < 8.1e9


def test_process_tree_from_stat_lines():
    lines = {
        10: "10 (python) S 1 10 10 0",
        11: "11 (python -c (spawn)) R 10 10 10 0",  # a name with spaces and parentheses
        12: "12 (worker) S 11 10 10 0",
        13: "13 (other) S 1 13 13 0",
    }
    parents = scale_bench.parent_pids(lines)
    assert parents == {10: 1, 11: 10, 12: 11, 13: 1}
    assert scale_bench.descendants(10, parents) == {10, 11, 12}
    assert scale_bench.descendants(13, parents) == {13}


def test_the_tree_sampler_sees_this_process():
    sampler = scale_bench.TreeSampler(os.getpid())
    sampler.start()
    sampler.stopped.wait(0.3)
    sampler.stopped.set()
    sampler.join()
    assert sampler.peak_total_kib > 0


def test_plan_skips_embedding_weights_over_the_limit():
    scales = [scale_bench.parse_config(c) for c in ("tiny", "8b")]
    runs, skipped = scale_bench.plan(scales, ["none", "embed"], [1, 2], "bfloat16", max_embed_gb=4)
    assert [(s.label, w, j) for s, w, j in runs] == [
        ("tiny", "none", 1),
        ("tiny", "none", 2),
        ("tiny", "embed", 1),
        ("tiny", "embed", 2),
        ("8b", "none", 1),
        ("8b", "none", 2),
    ]
    assert len(skipped) == 1 and skipped[0].startswith("8b --weights embed: 16.1 GB")


def _run(wall, parent_gib, tree_gib, worker_gib=0.0, stages=None):
    kib = 2**20
    return {
        "wall_s": wall,
        "stages": stages or {"capture": wall / 4, "compile": wall / 2},
        "parent_peak_kib": parent_gib * kib,
        "worker_peak_kib": worker_gib * kib,
        "tree_peak_kib": tree_gib * kib,
    }


def test_tables_and_targets():
    scales = {c: scale_bench.parse_config(c) for c in ("1b", "8b", "1b:2", "1b:32")}
    key = scale_bench.run_key
    runs = {
        key("1b", "none", 1): [_run(40.0, 1.0, 1.0), _run(44.0, 1.1, 1.1)],
        key("1b", "none", 2): [_run(25.0, 1.0, 1.8, 0.7)],
        key("1b", "embed", 1): [_run(50.0, 2.4, 2.4)],
        key("8b", "none", 1): [_run(48.0, 1.5, 1.5)],
        key("1b:2", "none", 1): [_run(20.0, 0.5, 0.5)],
        key("1b:32", "none", 1): [_run(30.0, 1.5, 1.5, stages={"capture": 10.0, "compile": 15.0, "export": 1.0})],
    }
    table = scale_bench.results_table(runs, scales, "bfloat16").splitlines()
    assert table[0] == (
        "| config | layers | params | weights | -j | wall s | capture s | compile s | export s | "
        "parent peak RSS GiB | largest worker GiB | all processes GiB (sampled) | weights GiB |"
    )
    assert (
        table[2]
        == "| 1b | 16 | 1.10B | none | 1 | 42.0 (40.0-44.0) | 10.5 (10.0-11.0) | 21.0 (20.0-22.0) | n/a | 1.05 (1.00-1.10) | - | 1.05 (1.00-1.10) | 2.06 |"
    )
    assert table[3].startswith("| 1b | 16 | 1.10B | none | 2 | 25.0 |") and "| 0.70 | 1.80 |" in table[3]
    targets = {row[0]: row[1:] for row in scale_bench.target_rows(runs, scales, "bfloat16")}
    assert targets["8b / 1b transpile time, --weights none -j 1 <= 1.3x"] == ["1.14x", "met"]
    assert targets["8b peak RSS, all processes, --weights none -j 1 < 2.0 GiB"] == ["1.50 GiB", "met"]
    assert targets["1b:32 / 1b:2 transpile time, --weights none -j 1 <= 1.2x"] == ["1.50x", "missed"]
    assert targets["1b --weights embed -j 1: parent peak RSS <= 1.2x the weights"] == [
        "1.17x (over --weights none: 0.66x)",
        "met",
    ]
    assert targets["1b --weights none: -j 2 >= 1.5x faster than -j 1"] == ["1.68x", "met"]
    assert not any("embed -j 2" in name for name in targets)  # no -j 2 embed run: no row


def test_small_weights_have_no_embedding_rss_target():
    scales = {"tiny": scale_bench.parse_config("tiny")}
    runs = {scale_bench.run_key("tiny", "embed", 1): [_run(10.0, 0.4, 0.4)]}
    assert scale_bench.target_rows(runs, scales, "float32") == []
    assert "| tiny | 2 | 0.11M | embed | 1 | 10.0 |" in scale_bench.results_table(runs, scales, "float32")
