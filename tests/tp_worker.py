"""One rank of the tensor-parallel test (tests/test_tensor_parallel.py starts N of them).

    python tp_worker.py SPEC.json RANK

SPEC: {"world_size", "store" (a file for the gloo rendezvous), "model" (examples/llama_tp/
model.py), "paths" (folders to import from), "packages" (names to run), "checkpoint_file",
"checkpoint_folder", "rank_file" (a pattern with {rank}), "steps" (tokens per call)}.

Prints one line, `RESULT {json}`: per package, the decode loop's largest errors against
the unsplit model run eagerly (logits, and this rank's slice of the KV cache); whether
the weights sliced from a safetensors file, a safetensors folder and this rank's own
file equal those sliced from the state dict; the message of a wrong-size group; and the
compiler modules loaded in the process.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys

import torch


def load_reference(model_path: str):
    """The model file at world size 1 (before any process group exists): the full model."""
    spec = importlib.util.spec_from_file_location("llama_tp_reference", model_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode_loop(model, reference, steps, rank: int, world: int) -> dict:
    """The package and the unsplit eager model over the same calls, each on its own cache."""
    config = reference.CONFIG
    cache = reference.new_kv_cache(config, world=world)
    eager_cache = reference.new_kv_cache(config)
    kv_heads = config.kv_heads // world
    generator = torch.Generator().manual_seed(0)  # the same tokens on every rank
    position, logits_error, cache_error = 0, 0.0, 0.0
    for tokens in steps:
        input_ids = torch.randint(0, config.vocab, (1, tokens), generator=generator)
        positions = torch.arange(position, position + tokens).unsqueeze(0)
        with torch.no_grad():
            expected = reference.model(input_ids, positions, eager_cache, positions[0].clone())
        actual = model(input_ids, positions, cache, positions[0].clone())
        assert actual.shape == expected.shape, (actual.shape, expected.shape)
        logits_error = max(logits_error, (actual - expected).abs().max().item())
        # This rank holds kv heads rank * kv_heads onwards; the scratch slot (last) aside.
        mine = eager_cache[:, :, :-1, rank * kv_heads : (rank + 1) * kv_heads]
        cache_error = max(cache_error, (cache[:, :, :-1] - mine).abs().max().item())
        position += tokens
    return {"logits": logits_error, "cache": cache_error, "cache_written": cache.abs().sum().item() > 0}


def same_weights(a, b) -> bool:
    return len(a.weights) == len(b.weights) and all(torch.equal(x, y) for x, y in zip(a.weights, b.weights))


def main() -> int:
    spec = json.loads(open(sys.argv[1]).read())
    rank, world = int(sys.argv[2]), spec["world_size"]
    sys.path[:0] = spec["paths"]
    reference = load_reference(spec["model"])
    full_state = reference.model.state_dict()

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{spec['store']}", rank=rank, world_size=world)
    result = {"rank": rank, "packages": {}}
    for name in spec["packages"]:
        package = importlib.import_module(name)
        model = package.load(weights=full_state)
        entry = {"rank": model.rank, "decode": decode_loop(model, reference, spec["steps"], rank, world)}
        if name == spec["packages"][0]:
            entry["from_file"] = same_weights(model, package.load(weights=spec["checkpoint_file"]))
            entry["from_folder"] = same_weights(model, package.load(weights=spec["checkpoint_folder"]))
            from safetensors.torch import save_file

            rank_file = spec["rank_file"].format(rank=rank)
            save_file(model.state_dict(), rank_file)
            entry["from_rank_file"] = same_weights(model, package.load(rank_weights=rank_file))
            entry["from_rank_state_dict"] = same_weights(model, package.load(rank_weights=model.state_dict()))
            # A group of another size: every rank makes it, rank 0 tries it.
            single = dist.new_group([0])
            if rank == 0:
                try:
                    package.load(weights=full_state, process_group=single)
                    entry["wrong_group"] = None
                except ValueError as error:
                    entry["wrong_group"] = str(error)
        result["packages"][name] = entry
    # In the whole process: the eager reference never calls a collective, the package calls the ops.
    result["compiler_modules"] = sorted(
        m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor", "transpiler"))
    )
    dist.barrier()
    dist.destroy_process_group()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
