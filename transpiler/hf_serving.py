"""Any supported Hugging Face decoder in serving form: a flattened batch over a paged KV cache.

    from transpiler.hf_serving import serving_model_file
    globals().update(serving_model_file("path/to/folder"))   # in a MODEL.py of one's own

builds the transformers model from FOLDER/config.json (and its safetensors weights when the
folder has them; else random weights from a fixed seed), routes every attention call of
the decoder through `serving::paged_attention` by registering it in transformers'
AttentionInterface (the layer index from the attention module's `layer_idx`), and returns
what a MODEL.py defines: `model` (whose forward is the serving layout:
input_ids [T], positions [T], kv_cache, slot_mapping [T], block_table [S, max_blocks],
seq_lens [S], query_start_loc [S + 1] -> logits [T, vocab]), `example_inputs`,
`dynamic_shapes`, `split_ops`, `pad_values` and `exports` (BLOCK_SIZE, new_kv_cache).
The model wraps the transformers one as `decoder`, so transpile with
`--checkpoint-prefix decoder.` and the package loads the model's own checkpoint folder.

The op comes from the serving example's `serving_ops` module (on sys.path; transpile with
`--import serving_ops`): the package imports it as it imports any --import module.

Supported: Llama, Qwen2, Qwen3, Mistral, Phi3, Gemma2 and Gemma3 (text), with their
sliding windows and attention logit soft-capping (the op supports both). Anything else is
refused in one line naming what is missing.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from .errors import TranspileError

ATTENTION_NAME = "transpile_paged"
SUPPORTED = ("gemma2", "gemma3_text", "llama", "mistral", "phi3", "qwen2", "qwen3")
METADATA = ("kv_cache", "slot_mapping", "block_table", "seq_lens", "query_start_loc")


def _ops():
    try:
        import serving_ops
    except ImportError as error:
        raise TranspileError(
            "hf_serving needs the paged attention op (serving_ops, examples/serving_llama/serving_ops.py) on "
            "sys.path; pass --import serving_ops with its folder on PYTHONPATH"
        ) from error
    return serving_ops


def paged_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None, softcap=None, **kwargs
):
    """transformers' attention signature: query [1, heads, T, dim], key and value
    [1, kv_heads, T, dim]; the serving metadata arrive as keyword arguments of the model's
    forward. Returns [1, T, heads, dim], as transformers' own attention functions do."""
    missing = [name for name in METADATA if kwargs.get(name) is None]
    if missing:
        raise ValueError(
            f"{ATTENTION_NAME} attention needs {', '.join(missing)}; call the serving forward (hf_serving.PagedDecoder)"
        )
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # [T, heads, dim]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = torch.ops.serving.paged_attention(
        q,
        k,
        v,
        *(kwargs[name] for name in METADATA),
        module.layer_idx,
        float(scale),
        int(sliding_window) if sliding_window else -1,
        float(softcap) if softcap else 0.0,
    )
    return out.unsqueeze(0), None


def register_attention() -> None:
    """Register the paged attention under ATTENTION_NAME (no mask function: transformers then
    builds no mask, as for vLLM's backends)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)


def _check_model_type(model_type) -> None:
    if model_type not in SUPPORTED:
        raise TranspileError(
            f"model_type {model_type!r} is not supported by --hf: its attention has no paged serving form here "
            f"(supported: {', '.join(SUPPORTED)})"
        )


def check_config(config) -> None:
    """Refuse, in one line, what the paged forward cannot run exactly."""
    model_type = getattr(config, "model_type", None)
    _check_model_type(model_type)
    if getattr(config, "use_bidirectional_attention", False):
        raise TranspileError(
            f"{model_type}: bidirectional attention (use_bidirectional_attention) is not supported by the paged op, which is causal"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise TranspileError(f"{model_type}: encoder-decoder models are not supported; the paged op serves decoders")


def load_config(folder: str | Path):
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise TranspileError(
            f"{folder}: no config.json; pass a folder holding the model's config.json (and its safetensors)"
        )
    try:
        raw = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as error:
        raise TranspileError(f"{folder / 'config.json'}: not JSON ({error.msg} at line {error.lineno})") from error
    from transformers import AutoConfig

    _check_model_type(raw.get("model_type"))  # before AutoConfig, whose own error is long
    config = AutoConfig.from_pretrained(folder)
    check_config(config)
    return config


class PagedDecoder(torch.nn.Module):
    """A transformers causal LM with the flattened-batch serving forward: the base model's
    hidden states, then the output head. With tied embeddings the head is the embedding
    matrix itself and the model keeps no `lm_head` (a checkpoint of a tied model has no
    lm_head.weight, and the package loads the checkpoint's own keys)."""

    def __init__(self, decoder: torch.nn.Module):
        super().__init__()
        text_config = decoder.config.get_text_config()
        self.tied = bool(getattr(text_config, "tie_word_embeddings", False))
        self.final_softcap = float(getattr(text_config, "final_logit_softcapping", None) or 0.0)
        if self.tied:
            decoder.lm_head = torch.nn.Identity()
        self.decoder = decoder

    def forward(self, input_ids, positions, kv_cache, slot_mapping, block_table, seq_lens, query_start_loc):
        hidden = self.decoder.model(
            input_ids=input_ids[None],
            position_ids=positions[None],
            use_cache=False,
            kv_cache=kv_cache,
            slot_mapping=slot_mapping,
            block_table=block_table,
            seq_lens=seq_lens,
            query_start_loc=query_start_loc,
        ).last_hidden_state[0]
        if self.tied:
            logits = torch.nn.functional.linear(hidden, self.decoder.model.embed_tokens.weight)
        else:
            logits = self.decoder.lm_head(hidden)
        if self.final_softcap:  # Gemma's final logit soft-capping, as its CausalLM forward does
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits


def build_model(config, dtype=torch.float32, weights: str | Path | None = None, seed: int = 0) -> PagedDecoder:
    """The causal LM of `config` on the paged attention; weights from a folder of
    safetensors (the model's own checkpoint), else random from `seed`."""
    from transformers import AutoModelForCausalLM

    check_config(config)
    _ops()
    register_attention()
    config._attn_implementation = ATTENTION_NAME
    torch.manual_seed(seed)
    decoder = AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION_NAME, dtype=dtype)
    if weights is not None:
        from safetensors.torch import load_file

        files = sorted(Path(weights).glob("*.safetensors"))
        state = {}
        for file in files:
            state.update(load_file(file))
        missing, unexpected = decoder.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in _tied_keys(decoder)]
        if missing or unexpected:
            raise TranspileError(
                f"{weights}: the checkpoint {'lacks ' + missing[0] if missing else 'has an unexpected ' + unexpected[0]}"
                f" ({len(missing)} missing, {len(unexpected)} unexpected); pass the folder of this config's checkpoint"
            )
    return PagedDecoder(decoder.eval())


def _tied_keys(decoder) -> set[str]:
    return {"lm_head.weight"} if getattr(decoder.config, "tie_word_embeddings", False) else set()


def cache_shape(config) -> dict:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return {"layers": config.num_hidden_layers, "kv_heads": kv_heads, "head_dim": head_dim}


def serving_model_file(
    folder: str | Path, dtype=torch.float32, max_tokens: int = 128, max_seqs: int = 128, max_blocks_per_seq: int = 8
) -> dict:
    """What a MODEL.py defines, for the model in `folder`."""
    folder = Path(folder)
    config = load_config(folder)
    has_weights = any(folder.glob("*.safetensors"))
    model = build_model(config, dtype, folder if has_weights else None)
    ops = _ops()
    block = ops.BLOCK_SIZE
    shape = cache_shape(config)
    table = torch.full((3, max_blocks_per_seq), -1)
    table[0, :2], table[1, 0], table[2, 0] = torch.tensor([0, 1]), 2, 3
    positions = torch.tensor([3, 4, 5, 6, 7, 9, 0, 1])
    owner = torch.tensor([0, 0, 0, 0, 0, 1, 2, 2])
    example_inputs = (
        torch.randint(0, config.vocab_size, (8,), generator=torch.Generator().manual_seed(0)),
        positions,
        ops.new_kv_cache(8, dtype, **shape),
        table[owner, positions // block] * block + positions % block,
        table,
        torch.tensor([8, 10, 2]),
        torch.tensor([0, 5, 6, 8]),
    )
    tokens = torch.export.Dim("tokens", min=1, max=max_tokens)
    seqs = torch.export.Dim("seqs", min=1, max=max_seqs)
    blocks = torch.export.Dim("blocks", min=1, max=1 << 24)
    return {
        "model": model,
        "config": config,
        "example_inputs": example_inputs,
        "dynamic_shapes": ({0: tokens}, {0: tokens}, {2: blocks}, {0: tokens}, {0: seqs}, {0: seqs}, {0: seqs + 1}),
        "split_ops": ["serving::paged_attention"],
        # CUDA graphs: padded tokens write nothing, padded sequences have no tokens.
        "pad_values": {"slot_mapping": -1, "block_table": 0, "seq_lens": 0, "query_start_loc": "last"},
        "exports": {"BLOCK_SIZE": block, "new_kv_cache": functools.partial(ops.new_kv_cache, **shape)},
    }


def load_hf_model_file(folder: str | Path, imports: list[str]):
    """`transpile --hf FOLDER`: the ModelFile of the folder's decoder in serving form."""
    import hashlib

    from .model_file import ModelFile, import_modules

    folder = Path(folder)
    import_modules(imports)
    namespace = serving_model_file(folder)
    return ModelFile(
        path=folder / "config.json",
        sha256=hashlib.sha256((folder / "config.json").read_bytes()).hexdigest(),
        model=namespace["model"],
        example_inputs=namespace["example_inputs"],
        dynamic_shapes=namespace["dynamic_shapes"],
        split_ops=namespace["split_ops"],
        pad_values=namespace["pad_values"],
        exports=namespace["exports"],
    )
