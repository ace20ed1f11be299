"""A paged KV-cache block manager: the bookkeeping half of PagedAttention (Kwon et al., SOSP 2023).

The KV cache is cut into fixed-size *blocks* of `block_size` token slots. A sequence owns a *block table*:
the list of physical block ids that hold its tokens, in order. Token `i` of a sequence lives in
block `table[i // block_size]` at offset `i % block_size`, i.e. in the flat *slot*
`table[i // block_size] * block_size + i % block_size` of the cache tensors.

Why this shape:
  * a sequence grows one block at a time, so at most `block_size - 1` slots per sequence are ever idle
    (instead of reserving max_len slots up front);
  * blocks need not be adjacent, so freed memory is always reusable (no external fragmentation);
  * a block can be shared by several sequences (reference counts), e.g. the prompt of n parallel samples.
    A shared block is read-only: the first sequence that writes into a shared, partly filled block gets
    its own copy (copy-on-write).

This module only does bookkeeping (ints and lists); the tensors live in `utils.paged_attention`.
Style after nano-vllm's block_manager.py.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


class OutOfBlocksError(RuntimeError):
    """No free block is left: the caller should wait, preempt a sequence, or use a bigger cache."""


class BlockAllocator:
    """Physical blocks: a free list plus a reference count per block."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"need num_blocks > 0 and block_size > 0, got {num_blocks}, {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free_ids: deque[int] = deque(range(num_blocks))   # FIFO: freed blocks are reused last
        self.ref_count = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self.free_ids)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_ids)

    def allocate(self) -> int:
        if not self.free_ids:
            raise OutOfBlocksError(f"all {self.num_blocks} KV blocks are in use")
        block = self.free_ids.popleft()
        self.ref_count[block] = 1
        return block

    def share(self, block: int) -> int:
        """One more owner for `block` (fork / prefix reuse)."""
        if self.ref_count[block] <= 0:
            raise ValueError(f"block {block} is free; cannot share it")
        self.ref_count[block] += 1
        return block

    def release(self, block: int) -> None:
        """One owner fewer; the block returns to the free list when nobody holds it."""
        if self.ref_count[block] <= 0:
            raise ValueError(f"block {block} is already free (double free)")
        self.ref_count[block] -= 1
        if self.ref_count[block] == 0:
            self.free_ids.append(block)


@dataclass
class BlockTable:
    """One sequence's view of the cache: its blocks in order and how many tokens it holds."""
    blocks: list[int] = field(default_factory=list)
    num_tokens: int = 0


class BlockManager:
    """Block tables for many sequences on top of one BlockAllocator."""

    def __init__(self, num_blocks: int, block_size: int):
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.block_size = block_size
        self.tables: dict[int, BlockTable] = {}

    # ------------------------------------------------------------------------------ queries
    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)            # ceil division

    def can_allocate(self, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) <= self.allocator.num_free

    def slot(self, seq_id: int, position: int) -> int:
        """Flat slot index of token `position` of a sequence (block id * block_size + offset)."""
        table = self.tables[seq_id]
        block = table.blocks[position // self.block_size]
        return block * self.block_size + position % self.block_size

    def slots(self, seq_id: int, start: int, end: int) -> list[int]:
        return [self.slot(seq_id, p) for p in range(start, end)]

    @property
    def num_used_blocks(self) -> int:
        return self.allocator.num_used

    def used_tokens(self) -> int:
        """Token slots that hold data (shared blocks counted once)."""
        seen, total = set(), 0
        for t in self.tables.values():
            for i, b in enumerate(t.blocks):
                if b not in seen:
                    seen.add(b)
                    total += min(self.block_size, t.num_tokens - i * self.block_size)
        return total

    # ---------------------------------------------------------------------------- lifecycle
    def allocate(self, seq_id: int, num_tokens: int) -> BlockTable:
        """Blocks for a new sequence's prompt of `num_tokens` tokens (all or nothing)."""
        if seq_id in self.tables:
            raise ValueError(f"sequence {seq_id} already has blocks")
        if not self.can_allocate(num_tokens):
            raise OutOfBlocksError(f"sequence {seq_id} needs {self.blocks_needed(num_tokens)} blocks, "
                                   f"{self.allocator.num_free} free")
        table = BlockTable([self.allocator.allocate() for _ in range(self.blocks_needed(num_tokens))], num_tokens)
        self.tables[seq_id] = table
        return table

    def append_slot(self, seq_id: int) -> tuple[int, tuple[int, int] | None]:
        """Make room for one more token of `seq_id`; return (its slot, copy) where copy is None or
        (src_block, dst_block): the caller must copy that block's KV before writing (copy-on-write)."""
        table = self.tables[seq_id]
        pos, copy = table.num_tokens, None
        if pos % self.block_size == 0:                        # last block full (or no block): open a new one
            table.blocks.append(self.allocator.allocate())
        else:
            last = table.blocks[-1]
            if self.allocator.ref_count[last] > 1:            # shared and partly filled: copy before writing
                new = self.allocator.allocate()
                self.allocator.release(last)
                table.blocks[-1] = new
                copy = (last, new)
        table.num_tokens += 1
        return self.slot(seq_id, pos), copy

    def fork(self, parent_id: int, child_id: int) -> BlockTable:
        """The child shares every block of the parent (no copy now; copy-on-write later)."""
        if child_id in self.tables:
            raise ValueError(f"sequence {child_id} already has blocks")
        parent = self.tables[parent_id]
        child = BlockTable([self.allocator.share(b) for b in parent.blocks], parent.num_tokens)
        self.tables[child_id] = child
        return child

    def free(self, seq_id: int) -> None:
        for b in reversed(self.tables.pop(seq_id).blocks):   # reversed: tail blocks come back first
            self.allocator.release(b)

    def block_table_tensor(self, seq_ids, pad: int = 0):
        """[len(seq_ids), max_blocks] int64 tensor of block ids (padded with `pad`, masked by length later)."""
        import torch
        rows = [self.tables[s].blocks for s in seq_ids]
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
