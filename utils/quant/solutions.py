"""Reference solutions of the 02_quantization_deep_dive exercises (try them yourself first)."""
from __future__ import annotations

import torch


def asym_groupwise(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    rows, cols = w.shape
    wg = w.float().reshape(rows, cols // group_size, group_size)
    lo = wg.amin(-1, keepdim=True).clamp(max=0)
    hi = wg.amax(-1, keepdim=True).clamp(min=0)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp(min=1e-12)
    zero = torch.round(-lo / scale).clamp(0, qmax)
    q = torch.clamp(torch.round(wg / scale) + zero, 0, qmax)
    return ((q - zero) * scale).reshape(rows, cols).to(w.dtype)


def bits_per_weight(bits: int, group_size: int, scale_bits: int, zero_bits: int) -> float:
    return bits + (scale_bits + zero_bits) / group_size


def allocate(errors: dict, sizes: dict, avg_bits: float) -> dict:
    """Greedy: start everyone at the narrowest width, then repeatedly buy the upgrade with the largest error
    drop per extra bit that still fits the budget."""
    widths = sorted(next(iter(errors.values())))
    choice = {n: widths[0] for n in errors}
    budget = avg_bits * sum(sizes.values())
    while True:
        left = budget - sum(choice[n] * sizes[n] for n in choice)
        best = None
        for n in errors:
            for b in widths:
                extra = (b - choice[n]) * sizes[n]
                if b > choice[n] and extra <= left:
                    gain = (errors[n][choice[n]] - errors[n][b]) / extra
                    if best is None or gain > best[0]:
                        best = (gain, n, b)
        if best is None:
            return choice
        choice[best[1]] = best[2]
