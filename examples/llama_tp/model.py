"""A Llama-style decoder split across tensor-parallel ranks (vLLM's layout), serving from a KV cache.

forward(input_ids [1, T], positions [1, T], kv_cache, slot_mapping [T]) -> logits [1, T, vocab]

This file describes ONE rank. It asks torch.distributed for the world size N (1 when no
process group is initialised) and builds that rank's shards:

- q/k/v and gate/up are column-parallel: each rank holds 1/N of their output features
  (heads / FFN channels), so attention and SwiGLU run on the rank's own heads and channels;
- o_proj and down are row-parallel: 1/N of their input features, then an all-reduce sums
  the ranks' partial outputs;
- lm_head is split along the vocabulary and its logits all-gathered; the embedding is
  replicated (every rank holds it whole: one row per token is read, and no collective is
  needed to assemble it);
- RMSNorm weights and rotary tables are replicated.

Each sharded parameter says how it is split, `parameter.tp_dim` (vLLM's set_weight_attrs):
the transpiler records it and the package slices a full checkpoint with it. Nothing here
depends on the rank: every rank runs the same code on its own shards.

At world size 1 (no process group) the file is the full model: the eager reference, and
its state_dict() the full checkpoint. Attention is the serving example's op
(serving::attention, serving_ops.py is a link to examples/serving_llama/serving_ops.py):
each rank's cache holds its own kv heads, [layers, 2, slots + 1, kv_heads / N, head_dim].

LLAMA_TP_CONFIG picks the size (tiny, 1b, 8b), LLAMA_TP_DTYPE the dtype (float32,
bfloat16), LLAMA_TP_DEVICE where the weights are built (cpu, cuda).
"""

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_ops  # noqa: E402  (registers serving::attention)


@dataclass(frozen=True)
class Config:
    vocab: int = 256
    hidden: int = 64
    layers: int = 2
    heads: int = 8
    kv_heads: int = 4
    ffn: int = 128
    max_tokens: int = 64  # the most tokens one call takes
    cache_slots: int = 128  # positions the cache holds (one more slot is scratch)
    rope_theta: float = 10000.0


CONFIGS = {
    "tiny": Config(),
    # TinyLlama's shape (1.1B parameters).
    "1b": Config(vocab=32000, hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192, max_tokens=512, cache_slots=2048),
    # Llama-3-8B's shape (8.0B parameters).
    "8b": Config(vocab=128256, hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, max_tokens=512, cache_slots=2048),
}


def world_size() -> int:
    """Ranks the model is split across: the default process group's size, else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sharded(parameter: nn.Parameter, dim: int) -> nn.Parameter:
    """Mark a parameter as split along `dim` into world_size() equal contiguous blocks."""
    parameter.tp_dim = dim
    return parameter


def check_divisible(what: str, size: int, world: int) -> int:
    if size % world:
        raise ValueError(f"{what} ({size}) does not divide by the tensor-parallel size {world}")
    return size // world


class ColumnParallelLinear(nn.Module):
    """y = x W^T with W's output features split: each rank computes its slice of y."""

    def __init__(self, in_features: int, out_features: int, world: int):
        super().__init__()
        self.weight = sharded(nn.Parameter(torch.empty(check_divisible("out features", out_features, world), in_features)), 0)

    def forward(self, x):
        return F.linear(x, self.weight)


class RowParallelLinear(nn.Module):
    """y = x W^T with W's input features split: each rank's partial sum, all-reduced."""

    def __init__(self, in_features: int, out_features: int, world: int):
        super().__init__()
        self.world = world
        self.weight = sharded(nn.Parameter(torch.empty(out_features, check_divisible("in features", in_features, world))), 1)

    def forward(self, x):
        partial = F.linear(x, self.weight)
        if self.world == 1:
            return partial
        return funcol.all_reduce(partial, "sum", dist.group.WORLD)


class ParallelLMHead(nn.Module):
    """Logits over the vocabulary, split by rows of the vocabulary and all-gathered."""

    def __init__(self, hidden: int, vocab: int, world: int):
        super().__init__()
        self.world = world
        self.weight = sharded(nn.Parameter(torch.empty(check_divisible("vocab", vocab, world), hidden)), 0)

    def forward(self, x):
        logits = F.linear(x, self.weight)  # [T, vocab / N]
        if self.world == 1:
            return logits
        gathered = funcol.all_gather_tensor(logits, 0, dist.group.WORLD)  # [N * T, vocab / N], rank order
        # Rank r's block holds vocabulary rows r * vocab / N onwards: put them side by side.
        # (Gathering along dim -1 directly chunks by a symbolic size, which pins T at export.)
        return gathered.view(self.world, x.shape[0], -1).transpose(0, 1).reshape(x.shape[0], -1)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config: Config, layer: int, world: int):
        super().__init__()
        self.layer = layer
        self.head_dim = config.hidden // config.heads
        self.heads = check_divisible("heads", config.heads, world)  # this rank's
        self.kv_heads = check_divisible("kv heads", config.kv_heads, world)
        self.q_proj = ColumnParallelLinear(config.hidden, config.heads * self.head_dim, world)
        self.k_proj = ColumnParallelLinear(config.hidden, config.kv_heads * self.head_dim, world)
        self.v_proj = ColumnParallelLinear(config.hidden, config.kv_heads * self.head_dim, world)
        self.o_proj = RowParallelLinear(config.heads * self.head_dim, config.hidden, world)

    def forward(self, x, cos, sin, kv_cache, slots, visible):
        tokens = x.shape[0]
        q = rotate(self.q_proj(x).view(tokens, self.heads, self.head_dim), cos, sin)
        k = rotate(self.k_proj(x).view(tokens, self.kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(tokens, self.kv_heads, self.head_dim)
        out = torch.ops.serving.attention(q, k, v, kv_cache, slots, visible, self.layer)
        return self.o_proj(out.reshape(tokens, self.heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, config: Config, layer: int, world: int):
        super().__init__()
        self.input_norm = RMSNorm(config.hidden)
        self.attn = Attention(config, layer, world)
        self.post_norm = RMSNorm(config.hidden)
        self.gate = ColumnParallelLinear(config.hidden, config.ffn, world)
        self.up = ColumnParallelLinear(config.hidden, config.ffn, world)
        self.down = RowParallelLinear(config.ffn, config.hidden, world)

    def forward(self, x, cos, sin, kv_cache, slots, visible):
        x = x + self.attn(self.input_norm(x), cos, sin, kv_cache, slots, visible)
        h = self.post_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Decoder(nn.Module):
    def __init__(self, config: Config, world: int):
        super().__init__()
        self.config = config
        head_dim = config.hidden // config.heads
        self.embed = nn.Embedding(config.vocab, config.hidden)  # replicated
        self.layers = nn.ModuleList(Block(config, i, world) for i in range(config.layers))
        self.norm = RMSNorm(config.hidden)
        self.lm_head = ParallelLMHead(config.hidden, config.vocab, world)
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_ids, positions, kv_cache, slot_mapping):
        x = self.embed(input_ids[0])  # one sequence: [T, hidden]
        flat_positions = positions[0]
        angles = flat_positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)[:, None, :]  # [T, 1, head_dim]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        # Once per forward (a compiled piece): where each token writes, what each token sees.
        slots, visible = serving_ops.cache_slots_and_mask(slot_mapping, flat_positions, kv_cache.shape[2])
        for layer in self.layers:
            x = layer(x, cos, sin, kv_cache, slots, visible)
        return self.lm_head(self.norm(x)).unsqueeze(0)


def new_kv_cache(config: Config, dtype=torch.float32, device="cpu", world: int = 1):
    """An empty cache of one rank: [layers, 2 (keys, values), slots + 1 scratch, kv_heads / N, head_dim]."""
    head_dim = config.hidden // config.heads
    kv_heads = check_divisible("kv heads", config.kv_heads, world)
    return torch.zeros(config.layers, 2, config.cache_slots + 1, kv_heads, head_dim, dtype=dtype, device=device)


def build(config: Config, dtype=torch.float32, seed: int = 0, world: int = 1, device="cpu") -> Decoder:
    """The model of one rank of `world`; at world 1, with `seed`, the full model."""
    torch.manual_seed(seed)
    with torch.device(device):
        decoder = Decoder(config, world)
        for parameter in decoder.parameters():
            # Small weights keep bf16 activations in range at any depth.
            nn.init.normal_(parameter, std=0.02) if parameter.dim() > 1 else nn.init.ones_(parameter)
    return decoder.to(dtype).eval()


CONFIG = CONFIGS[os.environ.get("LLAMA_TP_CONFIG", "tiny")]
DTYPE = getattr(torch, os.environ.get("LLAMA_TP_DTYPE", "float32"))
WORLD = world_size()
model = build(CONFIG, DTYPE, world=WORLD, device=os.environ.get("LLAMA_TP_DEVICE", "cpu"))

_prompt = 8
example_inputs = (
    torch.randint(0, CONFIG.vocab, (1, _prompt), generator=torch.Generator().manual_seed(0)),
    torch.arange(_prompt).unsqueeze(0),
    new_kv_cache(CONFIG, DTYPE, world=WORLD),
    torch.arange(_prompt),
)
_tokens = torch.export.Dim("tokens", min=1, max=CONFIG.max_tokens)
dynamic_shapes = ({1: _tokens}, {1: _tokens}, None, {0: _tokens})
split_ops = ["serving::attention"]
# Under CUDA graphs, padded tokens get slot -1: the op writes them to the scratch slot.
pad_values = {"slot_mapping": -1}
