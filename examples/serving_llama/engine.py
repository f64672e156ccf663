"""A small continuous-batching engine over a paged KV cache (greedy sampling).

Not part of any package: it drives any forward with the serving layout,
forward(input_ids [T], positions [T], kv_cache, slot_mapping [T], block_table [S, max_blocks],
        seq_lens [S], query_start_loc [S + 1]) -> logits [T, vocab]
(a transpiled package, or the eager model). Each step:

1. requests that arrived wait until the cache has blocks for their prompt;
2. running sequences that have all their tokens in the cache decode one token each;
   sequences still in prefill add a chunk of their prompt (at most `chunk` tokens), while
   the step's token budget lasts;
3. each sequence gets the blocks its new tokens need, and one forward runs them all;
4. a sequence whose chunk ends its known tokens samples the next one (argmax of the last
   row's logits); one that has its `max_new_tokens` leaves and frees its blocks, which the
   next request reuses.

    engine = Engine(model, cache, block_size=package.BLOCK_SIZE, max_blocks_per_seq=8)
    engine.add(Request("a", prompt=[5, 17, 42], max_new_tokens=32))
    while engine.has_work():
        engine.step()
    engine.finished["a"].output  # the generated tokens
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Request:
    name: str
    prompt: list[int]
    max_new_tokens: int
    output: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # the row each output token was sampled from
    blocks: list[int] = field(default_factory=list)
    cached: int = 0  # tokens whose keys and values are in the cache

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    def done(self) -> bool:
        return len(self.output) >= self.max_new_tokens


class BlockAllocator:
    """Free blocks of the cache; the last freed is handed out first (reuse shows at once)."""

    def __init__(self, num_blocks: int):
        self.free = list(range(num_blocks - 1, -1, -1))

    def allocate(self, count: int) -> list[int]:
        if count > len(self.free):
            raise RuntimeError(f"out of cache blocks: {count} wanted, {len(self.free)} free")
        return [self.free.pop() for _ in range(count)]

    def release(self, blocks: list[int]) -> None:
        self.free.extend(reversed(blocks))


@dataclass(frozen=True)
class Chunk:
    """One sequence's part of a step: its new tokens, their first position, its blocks."""

    tokens: list[int]
    start: int
    blocks: list[int]


def build_batch(chunks: list[Chunk], block_size: int, max_blocks_per_seq: int, device="cpu"):
    """The forward's inputs after the cache (and input_ids, positions) for these chunks:
    (input_ids, positions, slot_mapping, block_table, seq_lens, query_start_loc)."""
    input_ids, positions, slots, starts, lens, table = [], [], [], [0], [], []
    for chunk in chunks:
        for offset, token in enumerate(chunk.tokens):
            position = chunk.start + offset
            input_ids.append(token)
            positions.append(position)
            slots.append(chunk.blocks[position // block_size] * block_size + position % block_size)
        starts.append(starts[-1] + len(chunk.tokens))
        lens.append(chunk.start + len(chunk.tokens))
        table.append(chunk.blocks + [-1] * (max_blocks_per_seq - len(chunk.blocks)))

    def tensor(values):
        return torch.tensor(values, dtype=torch.int64, device=device)

    return tensor(input_ids), tensor(positions), tensor(slots), tensor(table), tensor(lens), tensor(starts)


class Engine:
    def __init__(self, forward, kv_cache, block_size: int, max_blocks_per_seq: int, max_tokens: int = 128,
                 max_seqs: int = 128, chunk: int = 16):
        self.forward, self.kv_cache = forward, kv_cache
        self.block_size, self.max_blocks_per_seq = block_size, max_blocks_per_seq
        self.max_tokens, self.max_seqs, self.chunk = max_tokens, max_seqs, chunk
        self.allocator = BlockAllocator(kv_cache.shape[2])
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.finished: dict[str, Request] = {}
        self.steps = 0

    def add(self, request: Request) -> None:
        needed = -(-(len(request.prompt) + request.max_new_tokens) // self.block_size)
        if needed > self.max_blocks_per_seq:
            raise ValueError(
                f"request {request.name}: {len(request.prompt)} + {request.max_new_tokens} tokens need {needed} blocks, "
                f"more than a sequence's {self.max_blocks_per_seq}"
            )
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _blocks_for(self, request: Request, length: int) -> None:
        needed = -(-length // self.block_size) - len(request.blocks)
        if needed > 0:
            request.blocks += self.allocator.allocate(needed)

    def step(self) -> list[Chunk]:
        """Schedule, run one forward, sample; returns the step's chunks."""
        # Admit waiting requests while their prompt's blocks are free.
        while self.waiting and len(self.running) < self.max_seqs:
            request = self.waiting[0]
            if -(-len(request.prompt) // self.block_size) > len(self.allocator.free):
                break
            self.running.append(self.waiting.pop(0))
        budget = self.max_tokens
        scheduled: list[tuple[Request, Chunk]] = []
        # Decodes first (one token each), then prefill chunks, within the token budget.
        ordered = sorted(self.running, key=lambda r: r.cached < len(r.prompt))
        for request in ordered:
            if budget == 0:
                break
            todo = request.tokens[request.cached :]
            take = todo[: min(len(todo), budget, self.chunk)]
            self._blocks_for(request, request.cached + len(take))
            scheduled.append((request, Chunk(take, request.cached, list(request.blocks))))
            budget -= len(take)
        if not scheduled:
            return []
        chunks = [chunk for _, chunk in scheduled]
        batch = build_batch(chunks, self.block_size, self.max_blocks_per_seq, self.kv_cache.device)
        input_ids, positions, *metadata = batch
        with torch.no_grad():
            logits = self.forward(input_ids, positions, self.kv_cache, *metadata)
        ends = batch[5][1:] - 1  # each chunk's last row
        for (request, chunk), end in zip(scheduled, ends.tolist()):
            request.cached += len(chunk.tokens)
            if request.cached == len(request.tokens):  # the chunk reached the newest token: sample
                row = logits[end]
                request.logits.append(row.clone())
                request.output.append(int(row.argmax()))
            if request.done():
                self.running.remove(request)
                self.allocator.release(request.blocks)
                self.finished[request.name] = request
        self.steps += 1
        return chunks


def generate_alone(forward, kv_cache, prompt: list[int], max_new_tokens: int, block_size: int,
                   max_blocks_per_seq: int) -> Request:
    """One sequence on its own cache: the whole prompt in one call, then one token a call."""
    request = Request("alone", list(prompt), max_new_tokens)
    request.blocks = list(range(-(-(len(prompt) + max_new_tokens) // block_size)))
    while not request.done():
        chunk = Chunk(request.tokens[request.cached :], request.cached, request.blocks)
        input_ids, positions, *metadata = build_batch([chunk], block_size, max_blocks_per_seq, kv_cache.device)
        with torch.no_grad():
            logits = forward(input_ids, positions, kv_cache, *metadata)
        request.cached += len(chunk.tokens)
        request.logits.append(logits[-1].clone())
        request.output.append(int(logits[-1].argmax()))
    return request
