"""Every benchmark and GPU script imports on a CPU machine (their CUDA work runs only when
called): a renamed or missing helper of scripts/harness.py fails here, not on the lent GPU."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

MODULES = [
    "harness",
    "bench",
    "bench_worker",
    "scale_bench",
    "tp_bench",
    "gpu_bench",
    "gpu_check",
    "gpu_cold_start",
    "gpu_state_check",
    "gpu_weights_read",
    "gpu_profile_decode",
    "gpu_tp_check",
    "serving_batches",
    "serving_throughput",
    "gpu_capture_time",
    "gpu_paged_attention_check",
    "capture_profile",
    "gpu_matvec",
]


@pytest.mark.parametrize("name", MODULES)
def test_script_imports(name):
    module = importlib.import_module(name)
    assert callable(getattr(module, "main", None)) or name in (
        "harness",
        "bench_worker",
        "serving_batches",
        "capture_profile",
    )


def test_every_python_script_is_listed():
    # gpu_diag_export runs torch.export on import (a diagnosis, not a benchmark).
    listed = set(MODULES) | {"gpu_diag_export"}
    assert {path.stem for path in SCRIPTS.glob("*.py")} == listed
