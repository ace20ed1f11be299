"""Reference solutions and checkers for the exercises of 01_kv_cache_paged_attention.ipynb.

tests/test_solutions_00_01_03.py runs every reference solution through its checker.
"""
from __future__ import annotations

import math
import random
from functools import partial
from types import SimpleNamespace

from utils.exercise import run_exercise as _run_exercise
from utils.measure.memory import kv_cache_bytes_for

from .block_manager import BlockAllocator

__all__ = ["ex1_kv_bytes_per_token", "check_ex1", "ex2_paged_blocks_and_waste", "check_ex2", "run_exercise"]


# ------------------------------------------------------- exercise 1: KV bytes per token from a config
def ex1_kv_bytes_per_token(config, bytes_per_element: int = 2) -> int:
    """K and V, for every layer and every KV head (GQA: fewer KV heads than query heads), head_dim wide."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * bytes_per_element


def _random_config(rng):
    heads = rng.choice([8, 12, 14, 16, 24, 32, 40, 64])
    kv = rng.choice([h for h in (1, 2, 4, 8, heads) if heads % h == 0])
    hd = rng.choice([64, 80, 96, 128, 256])
    cfg = SimpleNamespace(num_hidden_layers=rng.randrange(2, 96), num_attention_heads=heads,
                          num_key_value_heads=kv, hidden_size=heads * hd)
    if rng.random() < 0.3:                # some configs state head_dim, and it differs from hidden / heads
        cfg.head_dim = rng.choice([64, 128, 256])
    return cfg


def check_ex1(fn, cases: int = 300, seed: int = 0) -> int:
    rng = random.Random(seed)
    for _ in range(cases):
        cfg = _random_config(rng)
        want = kv_cache_bytes_for(cfg, 1, "bf16")            # the course's own calculator
        got = fn(cfg)
        assert got == want, f"{vars(cfg)}: expected {want:.0f} bytes per token (bf16), got {got!r}"
    return cases


# -------------------------------------- exercise 2: blocks a paged allocator needs, and what it wastes
def ex2_paged_blocks_and_waste(seq_lens: list[int], block_size: int) -> tuple[int, int]:
    """(blocks, wasted token slots) for sequences of these lengths: each needs ceil(len / block_size)
    blocks; only the last block of each can be partly empty."""
    blocks = sum(math.ceil(n / block_size) for n in seq_lens)
    return blocks, blocks * block_size - sum(seq_lens)


def check_ex2(fn, cases: int = 200, seed: int = 1) -> int:
    rng = random.Random(seed)
    for _ in range(cases):
        bs = rng.choice([1, 2, 8, 16, 32, 128])
        lens = [rng.randrange(1, 700) for _ in range(rng.randrange(1, 12))]
        alloc = BlockAllocator(sum(math.ceil(n / bs) for n in lens) + 1, bs)   # the real allocator
        used = 0
        for n in lens:
            used += len([alloc.allocate() for _ in range(math.ceil(n / bs))])
        want = (used, used * bs - sum(lens))
        got = tuple(fn(lens, bs))
        assert got == want, f"lengths {lens}, block size {bs}: expected (blocks, waste) = {want}, got {got!r}"
    return cases


# the checker cell: the learner's function, or the reference until it is written
run_exercise = partial(_run_exercise, source="utils/kv/solutions_01.py")
