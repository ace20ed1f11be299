"""Shared test fixture: ragged sequences written into a paged KV cache whose block tables have holes."""
import torch

from utils.kv.block_manager import BlockManager
from utils.kv.paged_attention import PagedKVCache


def fill(cache, manager, seq_id, k, v, layer=0):
    """Allocate blocks for k.shape[0] tokens of seq_id and write K/V into their slots."""
    manager.allocate(seq_id, k.shape[0])
    cache.write(layer, torch.tensor(manager.slots(seq_id, 0, k.shape[0])), k, v)


def ragged_paged_case(heads, kv_heads, block_size, lens=(1, 7, 33, 20), d=16, num_blocks=64):
    """Random K/V for sequences of `lens` tokens, written through a BlockManager into one cache layer. A filler
    sequence is allocated first and freed after the second sequence, so later tables reuse scattered blocks.
    Returns (q [n, heads, d], cache, manager, ks, vs) with ks[i]/vs[i] the contiguous [len, kv_heads, d] truth."""
    manager = BlockManager(num_blocks=num_blocks, block_size=block_size)
    cache = PagedKVCache(1, num_blocks, block_size, kv_heads, d)
    manager.allocate(99, 40)
    ks, vs = [], []
    for i, n in enumerate(lens):
        ks.append(torch.randn(n, kv_heads, d))
        vs.append(torch.randn(n, kv_heads, d))
        fill(cache, manager, i, ks[-1], vs[-1])
        if i == 1:
            manager.free(99)
    return torch.randn(len(lens), heads, d), cache, manager, ks, vs
