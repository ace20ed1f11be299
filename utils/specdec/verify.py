"""The verification step, on probability tensors only (no model): what makes speculative decoding exact.

Shapes: `draft` holds k proposed token ids; `q` is [k, V], the drafter's distribution at each of them (one-hot
for a deterministic drafter such as n-gram lookup); `p` is [k+1, V], the target's distribution after the prefix
and after each draft token (the extra row gives the bonus token when all k are accepted).

Exact rule (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023): draft i is accepted with probability
min(1, p_i(x_i) / q_i(x_i)); at the first rejection the token is drawn from norm(max(0, p_i - q_i)). Then every
emitted token is distributed exactly as the target's own sample would be.
Two deliberately WRONG rules exist so a statistical test can be shown to catch them:
  "no_ratio"    accept every draft token (the output follows q, not p)
  "resample_p"  correct acceptance test, but a rejection resamples from p instead of the residual
                (tokens the draft over-proposes come out too often)
"""
from __future__ import annotations

import torch


class SpecDecError(ValueError):
    """Bad input to the speculative decoder (mismatched tokenizers, γ < 1, a missing model piece)."""


VERIFY_MODES = ("exact", "no_ratio", "resample_p")


def check_gamma(gamma) -> int:
    """γ (draft tokens per step) must be an integer >= 1."""
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise SpecDecError(f"gamma (draft tokens per step) must be an integer >= 1, got {gamma!r}. "
                           "gamma=1 drafts one token per target forward; typical values are 2-8.")
    return gamma


def _leading_true(mask: torch.Tensor) -> int:
    """How many entries at the start of a 1-D bool tensor are True."""
    if mask.numel() == 0:
        return 0
    return int(torch.cumprod(mask.to(torch.int64), 0).sum())


def greedy_verify(draft: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, int]:
    """Greedy acceptance: keep the longest prefix of `draft` equal to the target's argmax, then emit the
    target's own argmax at the first disagreement (or after the last draft: the bonus token).
    Returns (number of draft tokens accepted, the token the target adds)."""
    best = target_logits.argmax(dim=-1)                      # [k+1]
    k = draft.numel()
    n = _leading_true(draft.to(best.device) == best[:k])
    return n, int(best[n])


def rejection_verify(draft: torch.Tensor, q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None = None,
                     mode: str = "exact") -> tuple[int, int]:
    """Speculative sampling's acceptance (see the module docstring). Returns (accepted, next token)."""
    if mode not in VERIFY_MODES:
        raise SpecDecError(f"mode must be one of {VERIFY_MODES}, got {mode!r}")
    k = draft.numel()
    if p.shape[0] != k + 1 or (k and q.shape[0] != k):
        raise SpecDecError(f"shapes: {k} draft tokens need q [{k}, V] and p [{k + 1}, V]; got q {tuple(q.shape)}, "
                           f"p {tuple(p.shape)}")
    if k:
        idx = torch.arange(k, device=p.device)
        d = draft.to(p.device)
        px, qx = p[idx, d], q[idx, d]
        if mode == "no_ratio":
            accept = torch.ones(k, dtype=torch.bool, device=p.device)
        else:
            u = torch.rand(k, generator=generator, device=p.device, dtype=p.dtype)
            accept = u * qx < px                             # u < p/q without dividing by a tiny q
        n = _leading_true(accept)
    else:
        n = 0
    if n < k:
        if mode == "resample_p":
            residual = p[n]
        else:
            residual = (p[n] - q[n]).clamp_min(0)
            if float(residual.sum()) <= 0:                   # p == q here: rejection had probability 0
                residual = p[n]
        token = torch.multinomial(residual / residual.sum(), 1, generator=generator)
    else:
        token = torch.multinomial(p[k], 1, generator=generator)   # all accepted: the bonus token from p
    return n, int(token)
