"""The hash-chained prefix cache: hashing, hit accounting as vLLM counts it, ref counts, LRU eviction,
clear errors; and the exercise solutions of notebook 06 through their checkers."""
import random

import pytest

from utils.kv.prefix_cache import (PrefixCache, OutOfBlocksError, block_hashes, check_block_size,
                                   check_prompt_fits, vllm_hit_tokens)
from utils.kv import solutions_06 as sol


def test_hash_depends_on_the_whole_prefix():
    a = block_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4)
    b = block_hashes([9, 2, 3, 4, 5, 6, 7, 8], 4)
    assert len(a) == 2 and a[0] != b[0] and a[1] != b[1]     # same tokens in block 1, different parent
    assert block_hashes([1, 2, 3, 4, 5, 6, 7], 4) == a[:1]     # a partial block has no hash


@pytest.mark.parametrize("bad", [0, 3, 12, 100, -16, 16.0, True])
def test_block_size_must_be_power_of_two(bad):
    with pytest.raises(ValueError, match="power of two"):
        check_block_size(bad)
    with pytest.raises(ValueError, match="power of two"):
        PrefixCache(8, bad)


def test_prompt_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="max_model_len"):
        check_prompt_fits(9000, 8192)
    pc = PrefixCache(64, 4, max_model_len=16)
    with pytest.raises(ValueError, match="context"):
        pc.allocate("x", list(range(17)))
    assert pc.stats.requests == 0 and pc.num_free_blocks == 64


def test_hits_are_whole_blocks_and_never_the_last_token():
    pc = PrefixCache(32, 4)
    p = list(range(12))                                        # exactly 3 blocks
    assert pc.run_sequentially([p]) == [0]
    assert pc.run_sequentially([p]) == [8]                     # 12 cached but one token must be computed
    assert pc.run_sequentially([p + [99]]) == [12]
    assert pc.run_sequentially([p[:6] + [77] * 6]) == [4]      # diverges mid-block 2: only block 1 hits
    assert pc.stats.queries == 12 + 12 + 13 + 12 and pc.stats.hits == 24
    assert vllm_hit_tokens(3, 12, 4) == 8 and vllm_hit_tokens(3, 13, 4) == 12


def test_ref_counts_and_sharing():
    pc = PrefixCache(16, 4)
    pc.allocate("a", list(range(10)))                          # 3 blocks, 2 full
    hit = pc.allocate("b", list(range(9)) + [50])
    assert hit == 8
    shared = pc.seqs["a"].table.blocks[:2]
    assert pc.seqs["b"].table.blocks[:2] == shared
    assert all(pc.allocator.ref_count[x] == 2 for x in shared)
    assert pc.num_free_blocks == 16 - 4
    pc.free("a")
    assert all(pc.allocator.ref_count[x] == 1 for x in shared)
    pc.free("b")
    assert pc.num_free_blocks == 16 and pc.num_cached_blocks == 2   # free, but still cached
    assert pc.usage() == 0.0


def test_lru_eviction_order_and_tail_first():
    pc = PrefixCache(4, 2)                                     # 4 blocks of 2 tokens
    a, b = [1, 2, 3, 4, 5], [6, 7, 8, 9, 10]                  # 3 blocks each (2 full)
    pc.run_sequentially([a])
    pc.run_sequentially([b])                                  # needs 3 blocks: evicts a's tail first
    assert pc.stats.evictions >= 1
    assert pc.match(a + [0]) == pc.match(a + [0])[:1] and len(pc.match(a + [0])) <= 1
    assert len(pc.match(b + [0])) == 2                         # the most recent request is fully cached


def test_free_cached_block_is_touched_back():
    pc = PrefixCache(8, 2)
    pc.run_sequentially([[1, 2, 3, 4, 5]])
    before = pc.num_free_blocks
    pc.allocate("x", [1, 2, 3, 4, 9])
    assert pc.seqs["x"].table.blocks[:2] == pc.match([1, 2, 3, 4, 0])
    assert pc.num_free_blocks == before - 3
    with pytest.raises(ValueError):
        pc.allocate("x", [1])


def test_out_of_blocks_is_clear():
    pc = PrefixCache(2, 2)
    pc.allocate("a", [1, 2, 3])
    with pytest.raises(OutOfBlocksError, match="free"):
        pc.allocate("b", [4, 5, 6])


def test_generated_tokens_are_cached_too():
    pc = PrefixCache(32, 4)
    prompt, gen = [1, 2, 3, 4, 5, 6], [7, 8, 9]               # KV of 7 and 8 is computed, 9 is not
    pc.run_sequentially([(prompt, gen)], keep_generated=True)
    assert pc.run_sequentially([prompt + gen + [10]]) == [8]


def test_null_block_reserved_like_vllm():
    pc = PrefixCache(5, 2, reserve_null_block=True)
    assert pc.num_blocks == 4 and pc.num_free_blocks == 4


def test_random_against_bruteforce():
    rng = random.Random(3)
    for _ in range(50):
        bs = rng.choice([1, 2, 4, 8])
        pc = PrefixCache(10_000, bs)                           # no eviction: hits = longest cached common prefix
        seen = []
        for _ in range(6):
            base = rng.choice(seen) if seen and rng.random() < 0.7 else []
            p = base[:rng.randrange(0, len(base) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(1, 30))]
            best = 0
            for q in seen:
                c = 0
                while c < min(len(p), len(q)) and p[c] == q[c]:
                    c += 1
                best = max(best, min(c // bs, len(q) // bs))
            want = min(best, (len(p) - 1) // bs) * bs
            assert pc.run_sequentially([p]) == [want]
            seen.append(p)


@pytest.mark.parametrize("check, ref", [(sol.check_ex1, sol.ex1_hit_tokens), (sol.check_ex2, sol.ex2_chunk_plan),
                                        (sol.check_ex3, sol.ex3_largest_budget)])
def test_reference_solutions_pass_their_checkers(check, ref):
    assert check(ref) > 0


def test_checkers_catch_wrong_answers():
    with pytest.raises(AssertionError):
        sol.check_ex1(lambda a, b, bs: 0)
    with pytest.raises(AssertionError):
        sol.check_ex2(lambda p, d, b: [p])
    with pytest.raises(AssertionError):
        sol.check_ex3(lambda c, t, cands: max(cands))


def test_run_exercise_falls_back_to_reference(capsys):
    def todo(*a):
        raise NotImplementedError
    assert sol.run_exercise(sol.check_ex1, todo, sol.ex1_hit_tokens) is False
    assert "reference solution passes" in capsys.readouterr().out


def test_uncached_first_reuses_partial_blocks_before_evicting():
    # 5 blocks of 2 tokens; a and b = 1 full + 1 partial block each, then c needs 3 blocks. Tail-first only: the
    # partial blocks sit behind a's cached block, so c evicts it; uncached_first: c takes the partial ones first.
    a, b, c = [1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11]
    old, new = PrefixCache(5, 2), PrefixCache(5, 2, uncached_first=True)
    assert old.run_sequentially([a, b, c]) == new.run_sequentially([a, b, c]) == [0, 0, 0]
    assert old.stats.evictions == 1 and new.stats.evictions == 0
    assert old.run_sequentially([a]) == [0] and new.run_sequentially([a]) == [2]
