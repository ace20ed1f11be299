"""What speculative decoding should give, from two numbers: the acceptance probability α and the cost ratio c.

With i.i.d. acceptances of probability α, a step of γ drafts emits E = (1 - α^(γ+1)) / (1 - α) tokens
(Leviathan et al. 2023, eq. 1) and costs γ draft steps plus one target step, γc + 1 target-step units
(c = draft step time / target step time), so the wall-clock speed-up is E / (γc + 1) (their Theorem 3.8).
Two assumptions can fail and explain a gap: acceptances are correlated (easy spans come in runs), and
verifying γ+1 tokens costs more than one decode step (`verify_cost`, measured, relative to one step).
"""
from __future__ import annotations

import torch


def expected_tokens_per_step(alpha: float, gamma: int) -> float:
    if alpha >= 1:
        return gamma + 1.0
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def predicted_speedup(alpha: float, gamma: int, c: float, verify_cost: float = 1.0) -> float:
    """E(α, γ) / (γ c + verify_cost); verify_cost = 1 is the paper's formula."""
    return expected_tokens_per_step(alpha, gamma) / (gamma * c + verify_cost)


def best_gamma(alpha: float, c: float, max_gamma: int = 16, verify_cost: float = 1.0) -> tuple[int, float]:
    return max(((g, predicted_speedup(alpha, g, c, verify_cost)) for g in range(1, max_gamma + 1)),
               key=lambda t: t[1])


def alpha_from_logits(target_logits: torch.Tensor, draft_logits: torch.Tensor, temperature: float = 0.0) -> float:
    """α measured WITHOUT running the loop: both models read the same sequence (teacher forcing), position by
    position. Greedy: how often the argmaxes agree. Sampling: E[sum_v min(p, q)] = 1 - TV(p, q), the
    probability that one draft token is accepted (Leviathan et al., section 3.1)."""
    V = min(target_logits.shape[-1], draft_logits.shape[-1])
    t, d = target_logits[..., :V].float(), draft_logits[..., :V].float()
    if temperature == 0:
        return float((t.argmax(-1) == d.argmax(-1)).float().mean())
    p, q = torch.softmax(t / temperature, -1), torch.softmax(d / temperature, -1)
    return float(torch.minimum(p, q).sum(-1).mean())
