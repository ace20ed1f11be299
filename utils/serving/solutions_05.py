"""Reference solutions and checkers for the exercises of 05_runtime_comparison.ipynb.

Each checker takes the learner's function, runs it on many cases with known answers, and raises AssertionError
with the first failing case. tests/test_engines_05.py runs every reference solution through its checker.
"""
from __future__ import annotations

import math
import os
import random
import tempfile

__all__ = ["ex1_first_divergence", "check_ex1", "ex2_cheapest_under_slo", "check_ex2", "ex3_is_gguf", "check_ex3",
           "run_exercise"]


# ------------------------------------------------ exercise 1: where do two engines' greedy outputs part?
def ex1_first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where `a` and `b` differ; the shorter length if one is a prefix of the other;
    None if they are identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_ex1(fn, cases: int = 300, seed: int = 0) -> int:
    rng = random.Random(seed)
    fixed = [([], [], None), ([1], [1], None), ([1, 2], [1, 3], 1), ([5], [6], 0), ([1, 2, 3], [1, 2], 2)]
    for a, b, want in fixed:
        got = fn(a, b)
        assert got == want, f"a={a}, b={b}: expected {want}, got {got}"
    for _ in range(cases):
        a = [rng.randrange(3) for _ in range(rng.randrange(0, 20))]
        b = a[:rng.randrange(0, len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(0, 5))]
        want = ex1_first_divergence(a, b)
        got = fn(a, b)
        assert got == want, f"a={a}, b={b}: expected {want}, got {got}"
    return cases + len(fixed)


# ------------------------------------------------ exercise 2: the cheapest engine that meets a latency SLO
def ex2_cheapest_under_slo(rows: list[dict], dollars_per_hour: float, tpot_slo_ms: float) -> tuple[str, float] | None:
    """rows: {"engine", "concurrency", "output_throughput" (tok/s), "p99_tpot_ms"}. Among rows whose p99 TPOT is
    within the SLO, the (engine, $ per 1M output tokens) with the lowest cost; None if no row qualifies."""
    ok = [r for r in rows if r["p99_tpot_ms"] <= tpot_slo_ms and r["output_throughput"] > 0]
    if not ok:
        return None
    best = max(ok, key=lambda r: r["output_throughput"])
    return best["engine"], dollars_per_hour / (best["output_throughput"] * 3600) * 1e6


def check_ex2(fn, cases: int = 200, seed: int = 1) -> int:
    rng = random.Random(seed)
    assert fn([], 1.0, 100.0) is None, "no rows: expected None"
    for _ in range(cases):
        rows = [{"engine": f"e{i}", "concurrency": rng.choice([1, 4, 8]), "output_throughput": rng.uniform(1, 500),
                 "p99_tpot_ms": rng.uniform(5, 200)} for i in range(rng.randrange(1, 8))]
        price, slo = rng.choice([0.1, 1.0, 3.5]), rng.uniform(10, 150)
        want, got = ex2_cheapest_under_slo(rows, price, slo), fn(rows, price, slo)
        if want is None:
            assert got is None, f"no row meets p99 TPOT <= {slo:.1f} ms; expected None, got {got}"
            continue
        assert got is not None and got[0] == want[0] and math.isclose(got[1], want[1], rel_tol=1e-6), (
            f"SLO {slo:.1f} ms at ${price}/h, rows={rows}: expected {want}, got {got}")
    return cases + 1


# ------------------------------------------------ exercise 3: can llama.cpp read this file?
def ex3_is_gguf(path) -> bool:
    """True if `path` is a file that starts with the GGUF magic bytes b"GGUF"; False for folders, missing paths
    and other formats."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def check_ex3(fn) -> int:
    with tempfile.TemporaryDirectory() as d:
        cases = {"model.gguf": (b"GGUF\x03\x00\x00\x00", True),
                 "renamed.bin": (b"GGUF" + bytes(8), True),            # the content decides, not the name
                 "model.safetensors": (b"\x08\x00\x00\x00\x00\x00\x00\x00{}", False),
                 "fake.gguf": (b"GGML" + bytes(8), False),
                 "empty.gguf": (b"", False), "short.gguf": (b"GG", False)}
        for name, (data, want) in cases.items():
            p = os.path.join(d, name)
            with open(p, "wb") as f:
                f.write(data)
            got = fn(p)
            assert got is want, f"{name} starting with {data[:8]!r}: expected {want}, got {got}"
        assert fn(d) is False, "a folder is not a GGUF file: expected False"
        assert fn(os.path.join(d, "missing.gguf")) is False, "a missing path: expected False"
    return len(cases) + 2


def run_exercise(check, fn) -> None:
    """Notebook helper: run a checker and print one line (the checker's AssertionError says what failed)."""
    n = check(fn)
    print(f"all {n} cases pass")
