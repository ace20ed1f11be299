"""Reference solutions and checkers for the exercises of 03_serving_with_vllm.ipynb (serving metrics).

tests/test_solutions_00_01_03.py runs every reference solution through its checker.
"""
from __future__ import annotations

import math
import random
from functools import partial

from utils.exercise import run_exercise as _run_exercise
from .client import RequestResult
from .sweep import cost_per_million_tokens

__all__ = ["ex1_tpot_ms", "check_ex1", "ex2_dollars_per_million", "check_ex2", "run_exercise"]


# ------------------------------------------------------------ exercise 1: TPOT as vLLM defines it
def ex1_tpot_ms(ttft_s: float, latency_s: float, output_tokens: int) -> float:
    """Time per output token after the first: (E2E latency - TTFT) / (output tokens - 1), in ms; NaN for a
    request with at most one output token (there is no 'after the first')."""
    if output_tokens <= 1:
        return math.nan
    return (latency_s - ttft_s) / (output_tokens - 1) * 1e3


def check_ex1(fn, cases: int = 300, seed: int = 0) -> int:
    rng = random.Random(seed)
    for i in range(cases):
        n = 1 if i == 0 else rng.randrange(1, 600)
        ttft = rng.uniform(0.005, 3.0)
        r = RequestResult(id=i, success=True, output_tokens=n, ttft_s=ttft,
                          latency_s=ttft + (n - 1) * rng.uniform(0.001, 0.2) + rng.uniform(0, 0.01))
        want = r.tpot_s * 1e3                                   # the benchmark client's own definition
        got = fn(r.ttft_s, r.latency_s, r.output_tokens)
        ok = (math.isnan(want) and math.isnan(got)) or math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
        assert ok, f"ttft {r.ttft_s:.4f} s, latency {r.latency_s:.4f} s, {n} tokens: expected {want} ms, got {got!r}"
    return cases


# ------------------------------------------------------------- exercise 2: dollars per million tokens
def ex2_dollars_per_million(tokens_per_s: float, dollars_per_hour: float) -> float:
    """What one million output tokens cost on a machine rented at `dollars_per_hour` that sustains
    `tokens_per_s` (inf if it produces nothing)."""
    if tokens_per_s <= 0:
        return math.inf
    return dollars_per_hour / (tokens_per_s * 3600) * 1e6


def check_ex2(fn, cases: int = 200, seed: int = 1) -> int:
    rng = random.Random(seed)
    for i in range(cases):
        tps = 0.0 if i == 0 else rng.uniform(1, 50_000)
        price = rng.uniform(0.1, 12.0)
        want, got = cost_per_million_tokens(tps, price), fn(tps, price)
        ok = (math.isinf(want) and math.isinf(got)) or math.isclose(got, want, rel_tol=1e-9)
        assert ok, f"{tps:.1f} tok/s at ${price:.2f}/hour: expected ${want:.4f} per 1M tokens, got {got!r}"
    return cases


# the checker cell: the learner's function, or the reference until it is written
run_exercise = partial(_run_exercise, source="utils/serving/solutions_03.py")
