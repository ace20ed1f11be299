"""Reference solutions and checkers for the exercises of 06_prefix_caching_chunked_prefill.ipynb.

Each checker takes the learner's function, compares it with the course's implementation on many random cases,
and raises AssertionError with the first failing case. tests/test_prefix_cache.py runs every reference solution
through its checker.
"""
from __future__ import annotations

import random
from functools import partial

from utils.exercise import run_exercise as _run_exercise
from .chunked_prefill import StepCost, simulate
from .prefix_cache import PrefixCache

__all__ = ["ex1_hit_tokens", "check_ex1", "ex2_chunk_plan", "check_ex2", "ex3_largest_budget", "check_ex3",
           "run_exercise"]


# ---------------------------------------------------------------- exercise 1: vLLM's hit tokens for two prompts
def ex1_hit_tokens(first: list[int], second: list[int], block_size: int) -> int:
    """Tokens of `second` that hit the cache after `first` ran alone: whole common blocks, and never the last
    token of `second`."""
    common = 0
    for a, b in zip(first, second):
        if a != b:
            break
        common += 1
    blocks = min(common // block_size, (len(first)) // block_size, (len(second) - 1) // block_size)
    return blocks * block_size


def check_ex1(fn, cases: int = 300, seed: int = 0) -> int:
    rng = random.Random(seed)
    for _ in range(cases):
        bs = rng.choice([1, 2, 4, 8, 16])
        a = [rng.randrange(4) for _ in range(rng.randrange(1, 80))]
        cut = rng.randrange(0, len(a) + 1)
        b = a[:cut] + [rng.randrange(4) for _ in range(rng.randrange(0, 40))]
        if not b:
            b = [1]
        pc = PrefixCache(256, bs)
        want = pc.run_sequentially([a, b])[1]
        got = fn(a, b, bs)
        assert got == want, f"block_size={bs}, first={a}, second={b}: expected {want} hit tokens, got {got}"
    return cases


# ------------------------------------------------- exercise 2: the chunks of one long prompt among decodes
def ex2_chunk_plan(prompt_len: int, num_decodes: int, token_budget: int) -> list[int]:
    """Prefill tokens per step for one prompt arriving while `num_decodes` requests decode (decodes first)."""
    room = token_budget - num_decodes
    if room <= 0:
        raise ValueError("the decodes alone fill the budget: the prompt would never start")
    plan, left = [], prompt_len
    while left > 0:
        plan.append(min(room, left))
        left -= plan[-1]
    return plan


def check_ex2(fn, cases: int = 60, seed: int = 1) -> int:
    rng = random.Random(seed)
    for _ in range(cases):
        p, d = rng.randrange(1, 3000), rng.randrange(0, 64)
        b = rng.randrange(d + 1, d + 1200)
        trace = [(0.0, 1, 10_000) for _ in range(d)] + [(1.0, p, 1)]
        res = simulate(trace, policy="chunked", token_budget=max(b, d + 1), cost=StepCost(1.0, 0.0))
        want = [s.prefill_tokens for s in res.steps if s.start >= 1.0 and s.prefill_tokens]
        got = list(fn(p, d, max(b, d + 1)))
        assert got == want, f"prompt {p}, {d} decodes, budget {max(b, d + 1)}: expected {want}, got {got}"
    return cases


# --------------------------------------- exercise 3: the largest budget that keeps every step under an ITL target
def ex3_largest_budget(cost: StepCost, target_s: float, candidates) -> int | None:
    """The largest budget among `candidates` whose FULL step (budget tokens, no attention term) costs at most
    target_s; None if none does. A full step is the worst case a decoding request can be stuck behind."""
    ok = [b for b in candidates if cost(b) <= target_s]
    return max(ok) if ok else None


def check_ex3(fn, cases: int = 200, seed: int = 2) -> int:
    rng = random.Random(seed)
    for _ in range(cases):
        cost = StepCost(overhead=rng.uniform(1e-3, 2e-2), per_token=rng.uniform(1e-6, 1e-4))
        cands = sorted(rng.sample([2 ** k for k in range(6, 16)], rng.randrange(1, 8)))
        target = rng.uniform(5e-3, 0.3)
        want = None
        for b in cands:
            if cost.overhead + cost.per_token * b <= target:
                want = b
        got = fn(cost, target, cands)
        assert got == want, f"{cost}, target {target:.4f}s, candidates {cands}: expected {want}, got {got}"
    return cases


# the checker cell: the learner's function, or the reference until it is written
run_exercise = partial(_run_exercise, source="utils/kv/solutions_06.py")
