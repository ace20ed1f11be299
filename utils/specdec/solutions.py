"""Reference solutions of 04_speculative_decoding's exercises, and the checkers the notebook runs on yours.
Each checker raises AssertionError with a hint when an answer is wrong, and returns a short summary when right."""
from __future__ import annotations

import torch

from .stats import chisquare_test
from .theory import expected_tokens_per_step


# ---- Exercise 1: the expected number of tokens per step and the best γ ----------------------------------
def expected_tokens(alpha: float, gamma: int) -> float:
    """E[tokens per target forward] = 1 + α + α² + ... + α^γ."""
    return sum(alpha ** i for i in range(gamma + 1))


def best_gamma(alpha: float, c: float, max_gamma: int = 16) -> int:
    """The γ in 1..max_gamma that maximises E(α, γ) / (γc + 1)."""
    return max(range(1, max_gamma + 1), key=lambda g: expected_tokens(alpha, g) / (g * c + 1))


def check_expected_tokens(fn_expected, fn_best) -> str:
    for a in (0.0, 0.3, 0.6, 0.8, 0.95):
        for g in (1, 2, 4, 8):
            got, want = fn_expected(a, g), expected_tokens_per_step(a, g)
            assert abs(got - want) < 1e-9, f"expected_tokens({a}, {g}) = {got}, want {want}: count the bonus token"
    cases = {(0.8, 0.05): None, (0.6, 0.3): None, (0.9, 0.0): 16, (0.5, 1.0): 1}
    for (a, c), want in cases.items():
        want = want or best_gamma(a, c)
        got = fn_best(a, c)
        assert got == want, f"best_gamma(alpha={a}, c={c}) = {got}, want {want}"
    return "correct: E(α, γ) and the best γ match the formula"


# ---- Exercise 2: one rejection-sampling position ----------------------------------------------------------
def sample_one_position(p: torch.Tensor, q: torch.Tensor, generator: torch.Generator) -> int:
    """Draw x ~ q, accept it with probability min(1, p(x)/q(x)), else draw from norm(max(0, p - q))."""
    x = int(torch.multinomial(q, 1, generator=generator))
    if float(torch.rand(1, generator=generator)) * float(q[x]) < float(p[x]):
        return x
    residual = (p - q).clamp_min(0)
    return int(torch.multinomial(residual / residual.sum(), 1, generator=generator))


def check_sample_one_position(fn, n: int = 4000) -> str:
    p = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05])
    q = torch.tensor([0.1, 0.4, 0.1, 0.1, 0.3])
    g = torch.Generator().manual_seed(0)
    counts = [0] * 5
    for _ in range(n):
        counts[int(fn(p, q, g))] += 1
    r = chisquare_test(counts, p.tolist())
    assert r["p_value"] > 1e-4, (f"your samples do not follow p (chi-square p-value {r['p_value']:.2g}, counts "
                                 f"{counts}, expected {[round(n * float(x)) for x in p]}): check the acceptance "
                                 f"ratio and that a rejection draws from max(0, p - q), renormalised")
    return f"correct: {n} samples follow p (chi-square p-value {r['p_value']:.3f})"


# ---- Exercise 3: n-gram prompt lookup --------------------------------------------------------------------
def prompt_lookup(tokens: list[int], k: int, n: int) -> list[int]:
    """The k tokens after the most recent earlier occurrence of the last n tokens ([] when none)."""
    if len(tokens) <= n:
        return []
    pattern = tokens[-n:]
    for j in range(len(tokens) - n - 1, -1, -1):
        if tokens[j:j + n] == pattern:
            return tokens[j + n:j + n + k]
    return []


def check_prompt_lookup(fn) -> str:
    cases = [(([1, 2, 3, 4, 1, 2], 2, 2), [3, 4]), (([1, 2, 3, 4, 1, 2], 9, 2), [3, 4, 1, 2]),
             (([5, 6, 7], 3, 1), []), (([1, 9, 1, 8, 1], 1, 1), [8]), (([3, 3, 3], 2, 2), [3])]
    for (tokens, k, n), want in cases:
        got = list(fn(list(tokens), k, n))
        assert got == want, f"prompt_lookup({tokens}, k={k}, n={n}) = {got}, want {want} (most recent match first)"
    return "correct: n-gram lookup proposes what followed the most recent match"
