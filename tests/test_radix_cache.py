"""The radix-tree prefix cache (SGLang's RadixAttention bookkeeping): token-level reuse, splits, LRU leaves."""
import pytest

from utils.kv.prefix_cache import PrefixCache
from utils.kv.radix_cache import RadixCache


def test_token_level_reuse_vs_blocks():
    a = list(range(20))
    b = a[:13] + [99, 98, 97]                                  # diverges mid-block (block 4 -> token 13)
    rc, pc = RadixCache(1000), PrefixCache(100, 4)
    assert rc.run_sequentially([a, b]) == [0, 13]
    assert pc.run_sequentially([a, b]) == [0, 12]


def test_never_the_last_token():
    rc = RadixCache(100)
    assert rc.run_sequentially([[1, 2, 3], [1, 2, 3]]) == [0, 2]


def test_split_keeps_both_branches():
    rc = RadixCache(100)
    rc.run_sequentially([[1, 2, 3, 4, 5], [1, 2, 3, 9, 9]])
    assert rc.match([1, 2, 3, 4, 5, 0], record=False)[0] == 5
    assert rc.match([1, 2, 3, 9, 9, 0], record=False)[0] == 5
    assert rc.num_cached_tokens == 7                          # 1 2 3 shared + 4 5 + 9 9


def test_lru_leaf_eviction_and_locks():
    rc = RadixCache(10)
    rc.run_sequentially([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    assert rc.num_cached_tokens == 10
    rc.run_sequentially([[11, 12, 13]])                      # evicts the least recently used leaf
    assert rc.match([1, 2, 3, 4, 5, 0], record=False)[0] == 0
    assert rc.match([6, 7, 8, 9, 10, 0], record=False)[0] == 5
    n, node = rc.match([6, 7, 8, 9, 10, 0], record=False)
    rc.lock(node)
    rc.evict(100)
    assert rc.match([6, 7, 8, 9, 10, 0], record=False)[0] == 5   # locked: survived
    rc.unlock(node)
    with pytest.raises(MemoryError, match="free"):
        rc.lock(node)
        rc.insert(list(range(100, 120)))


def test_bad_input():
    with pytest.raises(ValueError):
        RadixCache(0)
    with pytest.raises(ValueError, match="context"):
        RadixCache(100, max_model_len=4).match([1, 2, 3, 4, 5])
