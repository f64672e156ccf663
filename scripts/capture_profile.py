"""Where capture time goes, per stage, for the serving decoder at a given config and depth:
building the model (fake parameters, as --weights none does), torch.export, the
transpiler's own checks of the export, splitting and grouping into unique pieces.

    SERVING_DTYPE=bfloat16 python scripts/capture_profile.py 1b 8b      # configs of examples/serving_llama
    python scripts/capture_profile.py 1b:2 1b:32                        # the 1B width at 2 and 32 layers

Prints one row per config: seconds per stage, the number of pieces and unique pieces, and
torch.export's share of the capture.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL = ROOT / "examples" / "serving_llama" / "model.py"


def profile(spec: str) -> dict:
    import torch

    from transpiler import capture, opaque_attention
    from transpiler.dedupe import group_pieces
    from transpiler.model_file import load_model_file
    from transpiler.split import split_graph

    name, _, layers = spec.partition(":")
    sys.path.insert(0, str(MODEL.parent))
    import llama

    if layers:  # a config of that width and this depth, under its own name
        llama.CONFIGS[spec] = dataclasses.replace(llama.CONFIGS[name], layers=int(layers))
    os.environ["SERVING_CONFIG"] = spec
    times = {}
    started = time.perf_counter()
    model_file = load_model_file(MODEL, ["serving_ops"], fake_parameters=True)
    times["build"] = time.perf_counter() - started

    exported = {}
    real_export = torch.export.export

    def timed_export(*args, **kwargs):
        begun = time.perf_counter()
        try:
            return real_export(*args, **kwargs)
        finally:
            exported["seconds"] = exported.get("seconds", 0.0) + time.perf_counter() - begun

    torch.export.export = timed_export
    begun = time.perf_counter()
    try:
        captured = capture.export_model(model_file, "cpu", opaque_attention=False)
    finally:
        torch.export.export = real_export
    times["export"] = exported["seconds"]
    times["checks"] = time.perf_counter() - begun - exported["seconds"]
    begun = time.perf_counter()
    pieces = split_graph(captured.graph_module, [*model_file.split_ops, opaque_attention.OP])
    times["split"] = time.perf_counter() - begun
    begun = time.perf_counter()
    groups = group_pieces(pieces)
    times["group"] = time.perf_counter() - begun
    total = sum(times.values())
    return {
        "config": spec,
        **{k: round(v, 2) for k, v in times.items()},
        "total": round(total, 2),
        "export_share": f"{times['export'] / total:.0%}",
        "pieces": sum(not p.is_split for p in pieces),
        "unique": len(groups),
    }


if __name__ == "__main__":
    import json
    import subprocess

    if len(sys.argv) == 2 and sys.argv[1].startswith("--one="):
        print(json.dumps(profile(sys.argv[1][len("--one=") :])))
        sys.exit(0)
    # One fresh process per config: imports and caches of one do not flatter the next.
    for spec in sys.argv[1:]:
        result = subprocess.run([sys.executable, __file__, f"--one={spec}"], capture_output=True, text=True, check=True)
        print(result.stdout.strip().splitlines()[-1])
