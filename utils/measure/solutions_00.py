"""Reference solutions and checkers for the exercises of 00_START_HERE.ipynb (the memory wall, in numbers).

tests/test_solutions_00_01_03.py runs every reference solution through its checker.
"""
from __future__ import annotations

import math
import random
from functools import partial

from utils.exercise import run_exercise as _run_exercise

__all__ = ["ex1_decode_ceiling_tok_s", "check_ex1", "ex2_critical_batch", "check_ex2", "run_exercise"]


# ----------------------------------------------- exercise 1: the batch-1 decode ceiling set by bandwidth
def ex1_decode_ceiling_tok_s(n_params: float, bytes_per_param: float, kv_bytes_per_token: float, context: int,
                             bandwidth_bytes_s: float) -> float:
    """Tokens/s at batch 1 if a step only had to stream its bytes once: every weight, plus the KV cache of
    the `context` tokens so far, at `bandwidth_bytes_s`."""
    step_bytes = n_params * bytes_per_param + kv_bytes_per_token * context
    return bandwidth_bytes_s / step_bytes


def check_ex1(fn, cases: int = 200, seed: int = 0) -> int:
    rng = random.Random(seed)
    named = [(8.03e9, 2, 131072, 0, 4.8e12), (8.03e9, 1, 131072, 4096, 4.8e12), (1.35e8, 2, 23040, 512, 4.0e12)]
    for i in range(cases):
        args = named[i] if i < len(named) else (
            rng.uniform(1e8, 7e10), rng.choice([0.5, 1, 2, 4]), rng.uniform(1e3, 4e5), rng.randrange(0, 32769),
            rng.uniform(5e10, 8e12))
        want, got = ex1_decode_ceiling_tok_s(*args), fn(*args)
        assert math.isclose(got, want, rel_tol=1e-6), (
            f"n_params={args[0]:.3g}, bytes/param={args[1]}, KV bytes/token={args[2]:.0f}, context={args[3]}, "
            f"bandwidth={args[4]:.3g} B/s: expected {want:.4g} tok/s, got {got!r}")
    return cases


# ----------------------------------- exercise 2: the batch at which decode stops being memory-bound
def ex2_critical_batch(ridge_flop_per_byte: float, bytes_per_param: float) -> int:
    """The smallest batch B whose decode step (2 FLOPs per weight per sequence, each weight read once,
    KV ignored) reaches the ridge point: 2*B / bytes_per_param >= ridge."""
    return max(1, math.ceil(ridge_flop_per_byte * bytes_per_param / 2 - 1e-9))


def check_ex2(fn, cases: int = 200, seed: int = 1) -> int:
    rng = random.Random(seed)
    for i in range(cases):
        ridge = rng.uniform(1, 600) if i else 189.1              # case 0: the H200 ridge measured in section 2
        bpp = rng.choice([0.5, 1, 2, 4])
        want, got = ex2_critical_batch(ridge, bpp), fn(ridge, bpp)
        assert got == want, f"ridge {ridge:.2f} FLOP/byte, {bpp} bytes/param: expected batch {want}, got {got!r}"
        # the answer must be the first batch at or above the ridge, by the definition itself
        assert 2 * want / bpp >= ridge - 1e-6 and (want == 1 or 2 * (want - 1) / bpp < ridge)
    return cases


# the checker cell: the learner's function, or the reference until it is written
run_exercise = partial(_run_exercise, source="utils/measure/solutions_00.py")
