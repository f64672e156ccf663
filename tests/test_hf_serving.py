"""Hugging Face decoders in serving form (transpiler/hf_serving.py): sequences batched over
the paged cache through the engine loop equal transformers' own greedy `generate` on each
sequence alone (eager attention), tokens and logits, for every supported architecture
(tiny configs, random weights); Gemma2 and Gemma3 with sliding windows shorter than the
prompts, Gemma2 with attention logit soft-capping. One architecture is transpiled (its
package against generate, from the model's own checkpoint folder); others are refused in
one line."""

from __future__ import annotations

import copy
import importlib.util
import sys

import pytest
import torch
from conftest import EXAMPLE_PATHS, ROOT, imported_package, run_cli, transpile_once

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(ROOT / "examples" / "serving_llama"))  # serving_ops: the paged op
from transpiler import hf_serving  # noqa: E402
from transpiler.errors import TranspileError  # noqa: E402

TINY = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
)
CONFIGS = {
    "llama": dict(TINY),
    "qwen2": dict(TINY),
    "qwen3": dict(TINY),
    "mistral": dict(TINY, sliding_window=8),
    "phi3": dict(TINY, pad_token_id=0, sliding_window=8),
    "gemma2": dict(
        TINY,
        sliding_window=8,
        attn_logit_softcapping=1.0,
        final_logit_softcapping=0.5,
        initializer_range=0.3,
        query_pre_attn_scalar=8,
    ),
    "gemma3_text": dict(
        TINY, sliding_window=8, layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=8
    ),
}
# (prompt length, arrival step): past the sliding window and the block size.
ARRIVALS = [(5, 0), (20, 0), (11, 2), (1, 3)]
NEW_TOKENS = 12


def _engine():
    spec = importlib.util.spec_from_file_location(
        "hf_serving_engine", ROOT / "examples" / "serving_llama" / "engine.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _config(model_type):
    return transformers.AutoConfig.for_model(model_type, **CONFIGS[model_type])


def _generate(reference, prompt, new_tokens):
    """transformers' greedy generate on one sequence: its tokens and the logits of each step."""
    with torch.no_grad():
        result = reference.generate(
            torch.tensor([prompt]),
            max_new_tokens=new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
            eos_token_id=None,
        )
    return result.sequences[0, len(prompt) :].tolist(), torch.cat(result.logits)


def _reference(model):
    """The same weights under transformers' eager attention."""
    config = copy.deepcopy(model.decoder.config)
    config._attn_implementation = "eager"
    reference = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    missing, unexpected = reference.load_state_dict(model.decoder.state_dict(), strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if model.tied else set())  # tied: the embedding
    return reference.eval()


def _serve(forward, cache, block_size, prompts):
    engine = _engine()
    runner = engine.Engine(forward, cache, block_size, max_blocks_per_seq=8, chunk=8)
    pending = sorted(((step, i) for i, (_, step) in enumerate(ARRIVALS)), reverse=True)
    while pending or runner.has_work():
        while pending and pending[-1][0] <= runner.steps:
            _, i = pending.pop()
            runner.add(engine.Request(f"seq{i}", prompts[i], NEW_TOKENS))
        runner.step()
    return runner.finished


def _check_against_generate(finished, reference, prompts):
    for i, prompt in enumerate(prompts):
        tokens, logits = _generate(reference, prompt, NEW_TOKENS)
        assert finished[f"seq{i}"].output == tokens, f"seq{i}: tokens differ from generate"
        torch.testing.assert_close(torch.stack(finished[f"seq{i}"].logits), logits, rtol=0, atol=1e-4)


def _prompts(vocab):
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(1, vocab, (length,), generator=generator).tolist() for length, _ in ARRIVALS]


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_batched_paged_forward_equals_generate(model_type):
    config = _config(model_type)
    model = hf_serving.build_model(config, seed=3)
    shape = hf_serving.cache_shape(config)
    import serving_ops

    cache = serving_ops.new_kv_cache(32, **shape)
    prompts = _prompts(config.vocab_size)
    finished = _serve(model, cache, serving_ops.BLOCK_SIZE, prompts)
    _check_against_generate(finished, _reference(model), prompts)


def test_transpiled_hf_package_loads_its_checkpoint_and_equals_generate(shared_dir, tmp_path):
    """Gemma2 (sliding window, soft-capping, tied embeddings) through a package made by
    `transpile --hf FOLDER --weights none`, loading the model's own checkpoint folder."""
    folder = shared_dir / "hf-gemma2"
    if not (folder / "config.json").exists():
        folder.mkdir(exist_ok=True)
        config = _config("gemma2")
        built = hf_serving.build_model(config, seed=4)
        built.decoder.save_pretrained(folder)  # config.json and model.safetensors, the checkpoint's own keys
    # transpile --hf FOLDER (implies --import serving_ops and --checkpoint-prefix decoder.)
    out = transpile_once(
        shared_dir,
        "hf_gemma2",
        [
            "--hf",
            str(folder),
            "--name",
            "hf_gemma2",
            "--ranges",
            "1-16,17-128",
            "--weights",
            "none",
        ],
    )
    eager = hf_serving.build_model(hf_serving.load_config(folder), weights=folder)
    with imported_package(out, "hf_gemma2", EXAMPLE_PATHS) as package:
        package_model = package.load(weights=folder)
        prompts = _prompts(128)
        finished = _serve(package_model, package.new_kv_cache(32), package.BLOCK_SIZE, prompts)
        _check_against_generate(finished, _reference(eager), prompts)


def test_hf_command_refuses_an_unsupported_folder_in_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    assert run_cli(["--hf", str(tmp_path), "-o", str(tmp_path / "out"), "--name", "gpt"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("transpile: error: model_type 'gpt2' is not supported by --hf") and "\n" not in error
    assert not (tmp_path / "out").exists()
    assert run_cli([str(tmp_path / "model.py"), "--hf", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert "pass MODEL.py or --hf FOLDER (one of them)" in capsys.readouterr().err


def test_unsupported_architectures_and_features_are_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    with pytest.raises(TranspileError, match="model_type 'gpt2' is not supported by --hf: .* \\(supported: gemma2, "):
        hf_serving.load_config(tmp_path)
    config = transformers.AutoConfig.for_model(
        "gemma3_text", **CONFIGS["gemma3_text"], use_bidirectional_attention=True
    )
    with pytest.raises(TranspileError, match="bidirectional attention"):
        hf_serving.build_model(config)
    with pytest.raises(TranspileError, match="no config.json"):
        hf_serving.load_config(tmp_path / "missing")
