"""The GPU scripts on the CPU: each one's --dry-run parses its arguments and builds the
paged serving inputs it would run on the GPU (tiny config), running them through the eager
model, whose reference op checks every batch's metadata (scripts/serving_batches.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import serving_batches


@pytest.mark.parametrize(
    "script, arguments, printed",
    [
        ("gpu_bench", ["--dry-run"], "prefill 2048: 2048 tokens in 1 sequences"),
        ("gpu_state_check", ["--dry-run"], "mixed"),
        ("gpu_cold_start", ["--dry-run"], "4 paths compile; first call: logits (8, 256)"),
        ("gpu_profile_decode", ["--dry-run", "1", "8", "64x1"], "decode 64x1: logits (64, 256)"),
        ("gpu_paged_attention_check", ["--dry-run"], "ok   fp32 mixed + 5 padded tokens + 3 padded sequences"),
    ],
)
def test_dry_run(script, arguments, printed, tmp_path, monkeypatch, capsys):
    module = __import__(script)
    scratch = [] if script == "gpu_paged_attention_check" else [str(tmp_path)]  # it takes no scratch folder
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *scratch, *arguments])
    assert module.main() in (0, None)
    assert printed in capsys.readouterr().out


def test_cases_cover_decode_batched_decode_and_prefill():
    cases = {case.label: case for case in serving_batches.cases()}
    assert list(cases) == [
        "decode 1",
        "decode 2",
        "decode 8",
        "decode 32",
        "decode 64",
        "decode 2x1",
        "decode 8x1",
        "decode 32x1",
        "decode 64x1",
        "prefill 128",
        "prefill 512",
        "prefill 2048",
    ]
    assert (cases["decode 64x1"].tokens, cases["decode 64x1"].sequences) == (64, 64)
    assert (cases["decode 64"].tokens, cases["decode 64"].sequences) == (64, 1)


def test_a_batch_is_vllms_layout():
    class Config:
        vocab, max_tokens, max_seqs, max_blocks_per_seq = 100, 64, 8, 4

    case = serving_batches.Case("decode 3x1", 3, 1, 20)  # 3 sequences of 21 tokens: 2 blocks each
    _, positions, slots, table, lens, starts = serving_batches.batch(case, Config)
    assert positions.tolist() == [20, 20, 20]
    assert table.tolist() == [[0, 1, -1, -1], [2, 3, -1, -1], [4, 5, -1, -1]]
    assert slots.tolist() == [1 * 16 + 4, 3 * 16 + 4, 5 * 16 + 4]
    assert lens.tolist() == [21, 21, 21] and starts.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="needs 6 blocks, more than the config's 4"):
        serving_batches.batch(serving_batches.Case("decode 1", 1, 1, 80), Config)
