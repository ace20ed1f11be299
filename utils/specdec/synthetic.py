"""A tiny random pair of causal LMs (a few thousand parameters, vocabulary of a handful of tokens) whose EXACT
distribution over the next n tokens can be enumerated: V^n sequences, one batched forward per depth.
They are real transformers models with real KV caches, so the sampled loop is the same code as for Qwen."""
from __future__ import annotations

import itertools

import torch


def tiny_causal_lm(vocab: int = 6, seed: int = 0, hidden: int = 32, layers: int = 2, logit_scale: float = 30.0):
    """A random Llama-architecture LM. Its logits are scaled up so the next-token distributions are far from
    uniform (a fresh init gives near-uniform ones, where every sampler looks right)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    return model


@torch.no_grad()
def exact_sequence_distribution(model, prompt: list[int], n_tokens: int, temperature: float = 1.0) -> torch.Tensor:
    """P(next n tokens = s) for all V^n sequences s, in lexicographic order (index = base-V number)."""
    V = model.config.vocab_size
    probs = torch.ones(1)
    for depth in range(n_tokens):
        prefixes = list(itertools.product(range(V), repeat=depth))
        ids = torch.tensor([list(prompt) + list(s) for s in prefixes], dtype=torch.long)
        logits = model(input_ids=ids, use_cache=False).logits[:, -1].float()
        step = torch.softmax(logits / temperature, -1)                 # [V^depth, V]
        probs = (probs[:, None] * step).reshape(-1)
    return probs.double()


def sequence_index(tokens: list[int], vocab: int) -> int:
    idx = 0
    for t in tokens:
        idx = idx * vocab + int(t)
    return idx


def sampled_counts(sample_fn, n_samples: int, n_tokens: int, vocab: int) -> list[int]:
    """Histogram over V^n of `sample_fn(i)` (which returns >= n_tokens new tokens for sample i)."""
    counts = [0] * vocab ** n_tokens
    for i in range(n_samples):
        counts[sequence_index(sample_fn(i)[:n_tokens], vocab)] += 1
    return counts
