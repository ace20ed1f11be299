"""Who proposes the γ draft tokens.

NGramDrafter  prompt lookup (Saxena 2023; vLLM's "ngram" method): find the most recent earlier occurrence of the
              last n tokens (n from `max_n` down to `min_n`) and propose the tokens that followed it. No model,
              ~zero cost, deterministic (its q is one-hot). Pays when the output copies the input.
ModelDrafter  a small causal LM with the SAME tokenizer, decoding γ tokens autoregressively with its own KV
              cache. Before each proposal its cache is rolled back to the longest prefix it shares with the
              accepted sequence (a rejected draft's K/V must never be attended to again).
"""
from __future__ import annotations

import torch

from .verify import SpecDecError


def check_same_tokenizer(target_tok, draft_tok, target_name: str = "target", draft_name: str = "draft") -> None:
    """Raise SpecDecError unless both tokenizers map the same strings to the same ids (speculative decoding
    compares token IDS: a draft id must mean the same text to the target)."""
    if target_tok is None or draft_tok is None:
        raise SpecDecError("both tokenizers are needed to check that the pair shares a vocabulary; got None")
    tv, dv = target_tok.get_vocab(), draft_tok.get_vocab()
    if tv == dv and target_tok.eos_token_id == draft_tok.eos_token_id:
        return
    differ = sorted(t for t in set(tv) | set(dv) if tv.get(t) != dv.get(t))
    example = ", ".join(f"{t!r}: {target_name} {tv.get(t)} vs {draft_name} {dv.get(t)}" for t in differ[:3])
    raise SpecDecError(
        f"{draft_name} and {target_name} do not share a tokenizer: vocab sizes {len(dv)} vs {len(tv)}, "
        f"{len(differ)} tokens map to different ids (e.g. {example}); eos ids {draft_tok.eos_token_id} vs "
        f"{target_tok.eos_token_id}. Draft token ids would mean different text to the target. Use a draft model "
        f"from the target's family (same tokenizer), or the n-gram drafter, which needs no model.")


def check_causal_lm(model, role: str) -> None:
    """A clear message when something that is not a usable causal LM is passed as target or draft."""
    missing = [a for a in ("config", "forward") if not hasattr(model, a)]
    if model is None or missing:
        raise SpecDecError(f"the {role} must be a loaded causal LM (e.g. utils.models.load_model(...)); got "
                           f"{type(model).__name__}{' without ' + ', '.join(missing) if missing else ''}.")
    if getattr(model.config, "is_encoder_decoder", False):
        raise SpecDecError(f"the {role} is an encoder-decoder model; this loop needs decoder-only causal LMs.")
    if not getattr(model.config, "vocab_size", None):
        raise SpecDecError(f"the {role}'s config has no vocab_size: a model piece is missing (config.json?).")


def ngram_propose(tokens: list[int], k: int, max_n: int = 3, min_n: int = 1) -> list[int]:
    """Up to k tokens that followed the most recent earlier occurrence of the longest matching suffix."""
    L = len(tokens)
    if k <= 0:
        return []
    for n in range(min(max_n, L - 1), min_n - 1, -1):
        pattern = tokens[L - n:]
        first = pattern[0]
        for j in range(L - n - 1, -1, -1):           # most recent match first; the suffix itself is excluded
            if tokens[j] == first and tokens[j:j + n] == pattern:
                return list(tokens[j + n:j + n + k])
    return []


class NGramDrafter:
    """Prompt lookup: proposals are copied from the sequence itself."""
    name = "n-gram"
    deterministic = True

    def __init__(self, max_n: int = 3, min_n: int = 1):
        if not (1 <= min_n <= max_n):
            raise SpecDecError(f"n-gram sizes need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.max_n, self.min_n = max_n, min_n
        self.forwards = 0

    def reset(self) -> None:
        pass

    def propose(self, tokens: list[int], k: int, temperature: float = 0.0, generator=None):
        return ngram_propose(tokens, k, self.max_n, self.min_n), None


class ModelDrafter:
    """A draft causal LM with its own DynamicCache, rolled back to the accepted prefix before each proposal."""
    deterministic = False

    def __init__(self, model, name: str | None = None):
        check_causal_lm(model, "draft model")
        self.model = model
        self.name = name or getattr(model.config, "_name_or_path", "draft") or "draft"
        self.forwards = 0
        self.reset()

    def reset(self) -> None:
        from transformers import DynamicCache
        self.cache = DynamicCache()
        self.cached: list[int] = []          # the token ids whose K/V are in self.cache

    def _feed(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], device=self.model.device)
        out = self.model(input_ids=x, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.forwards += 1
        self.cached.extend(ids)
        return out.logits[0, -1].float()

    @torch.no_grad()
    def propose(self, tokens: list[int], k: int, temperature: float = 0.0, generator=None):
        """k draft tokens after `tokens`, and q ([k, V] probabilities) when sampling (None when greedy)."""
        from .loop import rollback
        if k <= 0:
            return [], None
        keep = 0                                   # longest common prefix of cache and sequence ...
        for a, b in zip(self.cached, tokens):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)          # ... leaving at least one token to feed
        rollback(self.cache, keep)
        del self.cached[keep:]
        logits = self._feed(tokens[keep:])
        draft, qs = [], []
        for i in range(k):
            if temperature and temperature > 0:
                q = torch.softmax(logits / temperature, dim=-1)
                t = int(torch.multinomial(q, 1, generator=generator))
                qs.append(q)
            else:
                t = int(logits.argmax())
            draft.append(t)
            if i < k - 1:
                logits = self._feed([t])
        return draft, (torch.stack(qs) if qs else None)


def SelfDrafter(target, name: str = "self (target drafts for itself)") -> ModelDrafter:
    """The target as its own draft (separate cache): α = 1 when greedy, cost ratio c = 1. A sanity point:
    it can never pay, since every token still costs one full target step plus verification."""
    return ModelDrafter(target, name=name)
