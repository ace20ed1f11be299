"""A goodness-of-fit test that needs no scipy: Pearson's chi-square with its own survival function.

chi2_sf(x, k) = Q(k/2, x/2), the regularized upper incomplete gamma function, computed by its power series
(x < a + 1) or Lentz's continued fraction (Numerical Recipes, 3rd ed., section 6.2). Checked in the tests
against closed forms (k = 2: exp(-x/2)), textbook critical values, and scipy where scipy is installed.
"""
from __future__ import annotations

import math


def regularized_gamma_q(a: float, x: float, eps: float = 1e-15, max_iter: int = 10_000) -> float:
    """Q(a, x) = Γ(a, x) / Γ(a), for a > 0, x >= 0."""
    if a <= 0:
        raise ValueError(f"a must be > 0, got {a}")
    if x < 0:
        raise ValueError(f"x must be >= 0, got {x}")
    if x == 0:
        return 1.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:                               # P by its series, Q = 1 - P
        term = total = 1.0 / a
        ap = a
        for _ in range(max_iter):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * eps:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300                               # Q by the continued fraction (modified Lentz)
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, max_iter):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < eps:
            break
    return math.exp(log_prefix) * h


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square with df degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return regularized_gamma_q(df / 2, max(0.0, x) / 2)


def chisquare_test(observed, expected_probs, min_expected: float = 5.0) -> dict:
    """Pearson's test of counts against exact probabilities. Cells whose expected count is below
    `min_expected` are pooled into one cell (the chi-square approximation needs ~5 per cell)."""
    obs = [float(o) for o in observed]
    probs = [float(p) for p in expected_probs]
    if len(obs) != len(probs):
        raise ValueError(f"{len(obs)} observed cells but {len(probs)} probabilities")
    n = sum(obs)
    total_p = sum(probs)
    if n <= 0 or abs(total_p - 1) > 1e-4:
        raise ValueError(f"need samples (got {n}) and probabilities that sum to 1 (got {total_p:.6f})")
    cells, pool_o, pool_e = [], 0.0, 0.0
    for o, p in zip(obs, probs):
        e = n * p / total_p
        if e >= min_expected:
            cells.append((o, e))
        else:
            pool_o, pool_e = pool_o + o, pool_e + e
    if pool_e > 0 or pool_o > 0:
        if pool_e == 0:                        # observations where the target has probability 0: impossible
            return {"statistic": math.inf, "df": max(1, len(cells)), "p_value": 0.0, "cells": len(cells) + 1,
                    "n": int(n), "impossible_observations": int(pool_o)}
        cells.append((pool_o, pool_e))
    if len(cells) < 2:
        raise ValueError("fewer than 2 cells after pooling: take more samples")
    stat = sum((o - e) ** 2 / e for o, e in cells)
    df = len(cells) - 1
    return {"statistic": stat, "df": df, "p_value": chi2_sf(stat, df), "cells": len(cells), "n": int(n)}


def tv_distance(p, q) -> float:
    """Total variation distance 0.5 * sum |p - q| between two distributions on the same cells."""
    sp, sq = sum(p), sum(q)
    return 0.5 * sum(abs(a / sp - b / sq) for a, b in zip(p, q))
