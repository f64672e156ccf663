"""The serving example's flattened batches over a paged cache, as the GPU scripts run them.

A step is S sequences flattened into T tokens (vLLM's layout; examples/serving_llama):
forward(input_ids [T], positions [T], kv_cache, slot_mapping [T], block_table [S, max_blocks],
seq_lens [S], query_start_loc [S + 1]). The benchmark's cases, at a config's sizes:

- `decode N`: one sequence adds N tokens after `cached` tokens (batch 1; N = 1 is the
  classic decode step);
- `decode Nx1`: N sequences add one token each, each after `cached` tokens (batched decode);
- `prefill N`: one sequence's N-token prompt on an empty cache.

Each sequence owns the blocks its length needs, one sequence after the other from block 0.
Only torch is needed (imported when called); tests/unit/test_gpu_scripts_dry_run.py builds
every case on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCK_SIZE = 16  # serving_ops.BLOCK_SIZE


@dataclass(frozen=True)
class Case:
    """One benchmark step: `sequences` sequences, each adding `new` tokens after `cached`."""

    label: str
    sequences: int
    new: int
    cached: int

    @property
    def tokens(self) -> int:
        return self.sequences * self.new

    @property
    def decode(self) -> bool:
        return self.cached > 0

    def blocks(self, block_size: int = BLOCK_SIZE) -> int:
        """Cache blocks the step's sequences hold."""
        return self.sequences * -(-(self.cached + self.new) // block_size)


def cases(decode_sizes=(1, 2, 8, 32, 64), prefill_sizes=(128, 512, 2048), cached: int = 128) -> list[Case]:
    """decode N (one sequence), decode Nx1 (N sequences, N > 1), prefill N."""
    listed = [Case(f"decode {n}", 1, n, cached) for n in decode_sizes]
    listed += [Case(f"decode {n}x1", n, 1, cached) for n in decode_sizes if n > 1]
    listed += [Case(f"prefill {n}", 1, n, 0) for n in prefill_sizes]
    return listed


def batch(
    case: Case,
    config,
    device="cpu",
    block_size: int = BLOCK_SIZE,
    seed: int = 0,
    blocks_per_sequence: int | None = None,
):
    """The forward's inputs but the cache: (input_ids, positions, slot_mapping, block_table,
    seq_lens, query_start_loc), int64 on `device`. Sequence s owns blocks
    s * blocks_per_sequence onwards (default: the blocks its length needs); give a later
    step's count to a prompt's prefill so that both use the same blocks."""
    import torch

    per_sequence = blocks_per_sequence or -(-(case.cached + case.new) // block_size)
    if per_sequence > config.max_blocks_per_seq:
        raise ValueError(
            f"{case.label}: a sequence of {case.cached + case.new} tokens needs {per_sequence} blocks, "
            f"more than the config's {config.max_blocks_per_seq}"
        )
    if case.tokens > config.max_tokens or case.sequences > config.max_seqs:
        raise ValueError(
            f"{case.label}: {case.tokens} tokens in {case.sequences} sequences exceed the config's "
            f"{config.max_tokens} tokens, {config.max_seqs} sequences"
        )
    positions = torch.arange(case.cached, case.cached + case.new).repeat(case.sequences)
    sequence = torch.arange(case.sequences).repeat_interleave(case.new)
    table = torch.full((case.sequences, config.max_blocks_per_seq), -1, dtype=torch.int64)
    table[:, :per_sequence] = torch.arange(case.sequences * per_sequence).view(case.sequences, per_sequence)
    slots = table[sequence, positions // block_size] * block_size + positions % block_size
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, config.vocab, (case.tokens,), generator=generator)
    seq_lens = torch.full((case.sequences,), case.cached + case.new, dtype=torch.int64)
    query_start_loc = torch.arange(case.sequences + 1) * case.new
    return tuple(t.to(device) for t in (input_ids, positions, slots, table, seq_lens, query_start_loc))


def forward_args(inputs, cache):
    """(input_ids, positions, kv_cache, slot_mapping, block_table, seq_lens, query_start_loc)."""
    input_ids, positions, *metadata = inputs
    return (input_ids, positions, cache, *metadata)


def kv_bytes_read(case: Case, config, itemsize: int) -> int:
    """Keys and values a step reads at least once: every layer's cache of each sequence up
    to its length (the attention kernels read each sequence's blocks once per KV head)."""
    return case.sequences * (case.cached + case.new) * config.layers * 2 * config.kv_heads * config.head_dim * itemsize
