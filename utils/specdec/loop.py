"""The draft-verify loop for any pair of causal LMs that share a tokenizer.

One step: the drafter proposes up to γ tokens; the target runs ONE forward over [last token, d_1 .. d_k] with
its KV cache (k+1 positions, so k+1 next-token distributions); the verifier keeps n <= k drafts and adds one
token of the target's own (a correction, or a bonus when all k pass). The target cache then holds K/V for the
k rejected-or-not drafts: `rollback` crops it to the accepted length so the next step never attends to a
rejected token. Every step emits between 1 and γ+1 tokens, and never more target forwards than plain decoding.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .drafters import check_causal_lm
from .verify import SpecDecError, check_gamma, greedy_verify, rejection_verify


def rollback(cache, keep: int) -> int:
    """Crop a transformers cache to its first `keep` positions (the accepted prefix). Returns tokens removed."""
    have = cache.get_seq_length()
    if keep < 0 or keep > have:
        raise SpecDecError(f"cannot roll a cache of {have} tokens back to {keep}")
    if have > keep:
        cache.crop(-(have - keep))        # negative = remove that many (transformers 4.x and 5.x agree on this)
        if cache.get_seq_length() != keep:
            raise RuntimeError(f"cache rollback failed: {cache.get_seq_length()} tokens left, expected {keep}")
    return have - keep


@dataclass
class SpecStats:
    """Counters in vLLM's sense plus the conditional acceptance per draft position."""
    gamma: int
    steps: int = 0                    # target verification forwards (one per step)
    drafts: int = 0                   # steps that proposed >= 1 token (vLLM: num_drafts)
    draft_tokens: int = 0             # proposed tokens (vLLM: num_draft_tokens)
    accepted_tokens: int = 0          # accepted drafts (vLLM: num_accepted_tokens)
    emitted: int = 0                  # tokens output (accepted + one per step)
    accepted_per_pos: list[int] = field(default_factory=list)   # vLLM: num_accepted_tokens_per_pos
    checked_per_pos: list[int] = field(default_factory=list)    # position i was examined (all before accepted)
    draft_s: float = 0.0
    verify_s: float = 0.0

    def __post_init__(self):
        self.accepted_per_pos = self.accepted_per_pos or [0] * self.gamma
        self.checked_per_pos = self.checked_per_pos or [0] * self.gamma

    def record(self, k: int, n: int, kept: int | None = None) -> None:
        self.steps += 1
        self.emitted += n + 1 if kept is None else kept
        if k:
            self.drafts += 1
            self.draft_tokens += k
            self.accepted_tokens += n
            for i in range(min(n + 1, k)):        # positions 0..n were examined (n rejected unless n == k)
                self.checked_per_pos[i] += 1
            for i in range(n):
                self.accepted_per_pos[i] += 1

    @property
    def alpha(self) -> float:
        """Per-token acceptance probability (Leviathan's α): accepted / examined draft tokens."""
        checked = sum(self.checked_per_pos)
        return self.accepted_tokens / checked if checked else float("nan")

    @property
    def alpha_per_pos(self) -> list[float]:
        """P(draft at position i accepted | positions before it accepted)."""
        return [a / c if c else float("nan") for a, c in zip(self.accepted_per_pos, self.checked_per_pos)]

    @property
    def acceptance_rate(self) -> float:
        """vLLM's 'draft acceptance rate': accepted / proposed tokens (counts never-examined positions too)."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else float("nan")

    @property
    def tokens_per_step(self) -> float:
        """Mean tokens emitted per target forward (the accepted drafts + the target's own token)."""
        return self.emitted / self.steps if self.steps else float("nan")

    @property
    def mean_accepted_length(self) -> float:
        """vLLM's 'mean acceptance length': 1 + accepted / drafts, over steps that drafted."""
        return 1 + self.accepted_tokens / self.drafts if self.drafts else float("nan")

    def as_dict(self) -> dict:
        return {"gamma": self.gamma, "steps": self.steps, "drafts": self.drafts, "draft_tokens": self.draft_tokens,
                "accepted_tokens": self.accepted_tokens, "emitted": self.emitted, "alpha": self.alpha,
                "alpha_per_pos": self.alpha_per_pos, "acceptance_rate": self.acceptance_rate,
                "tokens_per_step": self.tokens_per_step, "accepted_per_pos": list(self.accepted_per_pos),
                "checked_per_pos": list(self.checked_per_pos)}


@dataclass
class SpecResult:
    tokens: list[int]                 # the new tokens (prompt excluded)
    stats: SpecStats
    seconds: float


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _target_forward(model, ids: list[int], cache, keep: int):
    x = torch.tensor([ids], device=model.device)
    return model(input_ids=x, past_key_values=cache, use_cache=True, logits_to_keep=keep).logits[0].float()


def _prefill(model, prompt: list[int]):
    from transformers import DynamicCache
    cache = DynamicCache()
    if len(prompt) > 1:                       # the cache holds all but the last token: each step feeds it
        _target_forward(model, prompt[:-1], cache, 1)
    return cache


def _check_prompt(prompt_ids) -> list[int]:
    ids = prompt_ids.tolist() if hasattr(prompt_ids, "tolist") else list(prompt_ids)
    if ids and isinstance(ids[0], list):
        if len(ids) != 1:
            raise SpecDecError(f"one prompt at a time (batch 1); got a batch of {len(ids)}")
        ids = ids[0]
    if not ids:
        raise SpecDecError("the prompt is empty: give at least one token id")
    return [int(t) for t in ids]


def _one_hot_rows(draft: list[int], V: int, device) -> torch.Tensor:
    q = torch.zeros(len(draft), V, device=device)
    q[torch.arange(len(draft)), torch.tensor(draft)] = 1.0
    return q


def _fit_width(q: torch.Tensor, V: int) -> torch.Tensor:
    """Draft and target may pad their vocabularies differently: align q to the target's width."""
    if q.shape[-1] == V:
        return q
    if q.shape[-1] > V:
        return q[:, :V]
    return torch.nn.functional.pad(q, (0, V - q.shape[-1]))


def _sampling_setup(dev, temperature: float, seed, generator, eos_token_id):
    """A seeded generator when sampling (unless one is given) and the end-of-sequence ids as a set."""
    if generator is None and temperature > 0:
        generator = torch.Generator(device=dev)
        generator.manual_seed(0 if seed is None else seed)
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or [])
    return generator, eos


@torch.no_grad()
def speculative_generate(target, drafter, prompt_ids, gamma: int = 4, max_new_tokens: int = 32,
                         temperature: float = 0.0, seed: int | None = 0, eos_token_id=None, mode: str = "exact",
                         generator: torch.Generator | None = None, profile: bool = False) -> SpecResult:
    """Generate with draft-verify steps. temperature 0: greedy acceptance (output == target's greedy output);
    temperature > 0: rejection sampling (output ~ target's sampling distribution). `mode` selects the verifier
    (see verify.VERIFY_MODES; only "exact" is correct). profile=True times draft and verify separately."""
    check_causal_lm(target, "target model")
    gamma = check_gamma(gamma)
    if max_new_tokens < 1:
        raise SpecDecError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise SpecDecError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    prompt = _check_prompt(prompt_ids)
    dev = target.device
    generator, eos = _sampling_setup(dev, temperature, seed, generator, eos_token_id)
    drafter.reset()
    stats = SpecStats(gamma)
    _sync(dev)
    t_start = time.perf_counter()
    cache = _prefill(target, prompt)
    tokens, new = list(prompt), []
    while len(new) < max_new_tokens:
        k = min(gamma, max_new_tokens - len(new))            # never draft past the requested length
        t0 = time.perf_counter()
        draft, q = drafter.propose(tokens, k, temperature, generator)
        draft = list(draft)[:k]
        if profile:
            _sync(dev)
            t1 = time.perf_counter()
            stats.draft_s += t1 - t0
        logits = _target_forward(target, [tokens[-1]] + draft, cache, len(draft) + 1)   # ONE target forward
        if temperature > 0:
            p = torch.softmax(logits / temperature, dim=-1)
            V = p.shape[-1]
            q = _one_hot_rows(draft, V, dev) if (draft and q is None) else (_fit_width(q[:len(draft)], V) if draft
                                                                             else p[:0])
            n, t = rejection_verify(torch.tensor(draft, dtype=torch.long), q, p, generator, mode)
        else:
            n, t = greedy_verify(torch.tensor(draft, dtype=torch.long), logits)
        rollback(cache, len(tokens) + n)       # drop the K/V of rejected drafts
        if profile:
            _sync(dev)
            stats.verify_s += time.perf_counter() - t1
        out = (draft[:n] + [t])[:max_new_tokens - len(new)]   # a truncated prefix of an exact sample stays exact
        for j, tok in enumerate(out):
            if tok in eos:
                out = out[:j + 1]
                break
        stats.record(len(draft), n, kept=len(out))
        tokens += out
        new += out
        if eos and new[-1] in eos:
            break
    _sync(dev)
    return SpecResult(new[:max_new_tokens], stats, time.perf_counter() - t_start)


@torch.no_grad()
def target_generate(target, prompt_ids, max_new_tokens: int = 32, temperature: float = 0.0, seed: int | None = 0,
                    eos_token_id=None, generator: torch.Generator | None = None) -> SpecResult:
    """Plain decoding with the same cache code: the reference output and the baseline time."""
    check_causal_lm(target, "target model")
    prompt = _check_prompt(prompt_ids)
    dev = target.device
    generator, eos = _sampling_setup(dev, temperature, seed, generator, eos_token_id)
    stats = SpecStats(1)
    _sync(dev)
    t_start = time.perf_counter()
    cache = _prefill(target, prompt)
    last, new = prompt[-1], []
    while len(new) < max_new_tokens:
        logits = _target_forward(target, [last], cache, 1)[-1]
        if temperature > 0:
            last = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
        else:
            last = int(logits.argmax())
        new.append(last)
        stats.record(0, 0)
        if last in eos:
            break
    _sync(dev)
    return SpecResult(new, stats, time.perf_counter() - t_start)
