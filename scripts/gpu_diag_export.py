#!/usr/bin/env python3
"""Diagnose a torch.export failure of the HF Llama example on this machine (cpu and cuda):
prints where the guard that violates the dynamic constraint was added.

    bash scripts/gpu-run.sh scripts/gpu_diag_export.py
"""

import io
import logging
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from transpiler import opaque_attention  # noqa: E402
from transpiler.model_file import load_model_file  # noqa: E402


def attempt(device: str, route: bool) -> None:
    model_file = load_model_file(ROOT / "examples" / "hf_llama" / "model.py", [])
    model = model_file.model.eval().to(device)
    inputs = tuple(t.to(device) for t in model_file.example_inputs)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("torch.fx.experimental.symbolic_shapes").addHandler(handler)
    torch._logging.set_logs(dynamic=logging.DEBUG)
    try:
        with torch.no_grad(), opaque_attention.routed(route):
            program = torch.export.export(model, inputs, dynamic_shapes=model_file.dynamic_shapes, strict=False)
        ops = sorted(
            {str(n.target) for n in program.graph.nodes if "sdpa" in str(n.target) or "attention" in str(n.target)}
        )
        print(f"{device} route={route}: OK {ops}")
    except Exception as error:
        print(f"{device} route={route}: FAIL {str(error)[:600]}")
        lines = [line for line in stream.getvalue().splitlines() if "guard added" in line or "eval" in line]
        for line in lines[-15:]:
            print("   ", line[:400])
    finally:
        torch._logging.set_logs()
        logging.getLogger("torch.fx.experimental.symbolic_shapes").removeHandler(handler)


def main() -> int:
    import transformers

    print(torch.__version__, transformers.__version__)
    import inspect

    from transformers.integrations import sdpa_attention

    source = inspect.getsource(sdpa_attention.sdpa_attention_forward)
    print("sdpa call site:", [line.strip() for line in source.splitlines() if "scaled_dot_product" in line])
    for device in ("cpu", "cuda"):
        for route in (False, True):
            try:
                attempt(device, route)
            except Exception:
                traceback.print_exc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
