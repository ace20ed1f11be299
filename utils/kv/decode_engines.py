"""A small Llama decode engine on a transformers model's own weights, with a pluggable KV cache.

`llama_forward` is the Llama forward pass written out (embed -> per layer: RMSNorm, q/k/v projections,
RoPE, attention, o_proj, residual, RMSNorm, SwiGLU MLP, residual -> final norm -> lm_head), reusing the
HF modules for every weight. Attention is the one piece handed in as a function, so that two engines can
share everything else:
  * PagedEngine:      K/V in blocks (utils.kv.block_manager + utils.kv.paged_attention), read through block tables;
  * ContiguousEngine: K/V in one [max_batch, max_len] slab per layer, one row reserved per sequence.
Both do batched decode of sequences of different lengths, and the notebook checks both against
transformers' own generate loop (same logits within tolerance, same greedy tokens).

Works for Llama-architecture models (SmolLM2, Llama, Mistral without sliding window). No sampling, no
scheduler: just the KV-cache mechanics.
"""
from __future__ import annotations

from typing import Callable

import torch

from .block_manager import BlockManager
from ..measure.memory import kv_shape
from .paged_attention import PagedKVCache, masked_decode_attention, paged_decode_attention, paged_prefill_attention

# attend(layer, q [T, heads, D], k [T, kv_heads, D], v) -> [T, heads, D]; it also stores k, v in its cache.
AttendFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding on x [T, heads, D] with cos/sin [T, D] (HF's rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


@torch.no_grad()
def llama_forward(model, input_ids: torch.Tensor, positions: torch.Tensor, attend: AttendFn) -> torch.Tensor:
    """Logits [T, vocab] for a flat batch of T tokens (any mix of sequences; `attend` knows which is which)."""
    inner = model.model
    heads = model.config.num_attention_heads
    _, kv_heads, head_dim = kv_shape(model.config)
    h = inner.embed_tokens(input_ids)                                         # [T, hidden]
    cos, sin = inner.rotary_emb(h[None], positions[None])                     # [1, T, D] each
    cos, sin = cos[0], sin[0]
    for i, layer in enumerate(inner.layers):
        attn, t = layer.self_attn, h.shape[0]
        x = layer.input_layernorm(h)
        q = _rope(attn.q_proj(x).view(t, heads, head_dim), cos, sin)
        k = _rope(attn.k_proj(x).view(t, kv_heads, head_dim), cos, sin)
        v = attn.v_proj(x).view(t, kv_heads, head_dim)
        o = attend(i, q, k, v)                                                # [T, heads, D]
        h = h + attn.o_proj(o.reshape(t, heads * head_dim))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(inner.norm(h))


class PagedEngine:
    """Sequences in a paged KV cache: prefill, batched decode, fork (copy-on-write) and free."""

    def __init__(self, model, num_blocks: int, block_size: int = 16):
        self.model, self.device = model, model.device
        layers, kv_heads, head_dim = kv_shape(model.config)
        self.manager = BlockManager(num_blocks, block_size)
        self.cache = PagedKVCache(layers, num_blocks, block_size, kv_heads, head_dim, model.dtype, model.device)
        self.scale = model.model.layers[0].self_attn.scaling
        self.copies = 0                                          # copy-on-write block copies made so far

    def num_tokens(self, seq_id: int) -> int:
        return self.manager.tables[seq_id].num_tokens

    def prefill(self, seq_id: int, token_ids: list[int]) -> torch.Tensor:
        """Store the prompt's KV in fresh blocks; return the last position's logits [vocab]."""
        t = len(token_ids)
        self.manager.allocate(seq_id, t)
        slots = torch.tensor(self.manager.slots(seq_id, 0, t), device=self.device)
        table = torch.tensor(self.manager.tables[seq_id].blocks, device=self.device)

        def attend(layer, q, k, v):
            self.cache.write(layer, slots, k, v)
            return paged_prefill_attention(q, self.cache.k[layer], self.cache.v[layer], table, 0, self.scale)

        ids = torch.tensor(token_ids, device=self.device)
        return llama_forward(self.model, ids, torch.arange(t, device=self.device), attend)[-1]

    def fork(self, parent_id: int, child_id: int) -> None:
        self.manager.fork(parent_id, child_id)

    def append_slots(self, seq_ids: list[int]) -> list[int]:
        """Room for one more token in each sequence: its slot, after any copy-on-write the block manager asks for."""
        slots = []
        for s in seq_ids:
            slot, copy = self.manager.append_slot(s)
            if copy is not None:
                self.cache.copy_block(*copy)
                self.copies += 1
            slots.append(slot)
        return slots

    def decode(self, seq_ids: list[int], token_ids: list[int]) -> torch.Tensor:
        """Append one token to each sequence and return next-token logits [batch, vocab]."""
        slots = self.append_slots(seq_ids)
        dev = self.device
        lens = torch.tensor([self.num_tokens(s) for s in seq_ids], device=dev)
        tables = self.manager.block_table_tensor(seq_ids).to(dev)
        slots = torch.tensor(slots, device=dev)

        def attend(layer, q, k, v):
            self.cache.write(layer, slots, k, v)
            return paged_decode_attention(q, self.cache.k[layer], self.cache.v[layer], tables, lens, self.scale)

        return llama_forward(self.model, torch.tensor(token_ids, device=dev), lens - 1, attend)

    def free(self, seq_id: int) -> None:
        self.manager.free(seq_id)


class ContiguousEngine:
    """The baseline: each sequence reserves one row of `max_len` slots, K/V stored at [row, position]."""

    def __init__(self, model, max_batch: int, max_len: int):
        self.model, self.device = model, model.device
        layers, kv_heads, head_dim = kv_shape(model.config)
        shape = (layers, max_batch, max_len, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=model.dtype, device=model.device)
        self.v = torch.zeros(shape, dtype=model.dtype, device=model.device)
        self.scale = model.model.layers[0].self_attn.scaling
        self.rows: dict[int, int] = {}          # seq id -> row
        self.lens: dict[int, int] = {}          # seq id -> tokens stored
        self.max_batch, self.max_len = max_batch, max_len

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def num_tokens(self, seq_id: int) -> int:
        return self.lens[seq_id]

    def prefill(self, seq_id: int, token_ids: list[int]) -> torch.Tensor:
        free = sorted(set(range(self.max_batch)) - set(self.rows.values()))
        if not free:
            raise RuntimeError(f"all {self.max_batch} rows are reserved")
        row, t = free[0], len(token_ids)
        self.rows[seq_id], self.lens[seq_id] = row, t

        def attend(layer, q, k, v):
            self.k[layer, row, :t], self.v[layer, row, :t] = k, v
            return torch.nn.functional.scaled_dot_product_attention(
                q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, scale=self.scale,
                enable_gqa=q.shape[1] != k.shape[1]).transpose(0, 1)

        ids = torch.tensor(token_ids, device=self.device)
        return llama_forward(self.model, ids, torch.arange(t, device=self.device), attend)[-1]

    def decode(self, seq_ids: list[int], token_ids: list[int]) -> torch.Tensor:
        rows = [self.rows[s] for s in seq_ids]
        pos = [self.lens[s] for s in seq_ids]
        if max(pos) >= self.max_len:
            raise RuntimeError(f"a sequence reached max_len={self.max_len}")
        for s in seq_ids:
            self.lens[s] += 1
        dev = self.device
        rows_t, pos_t = torch.tensor(rows, device=dev), torch.tensor(pos, device=dev)
        lens = pos_t + 1
        t_max = int(max(pos)) + 1
        # rows 0..n-1 in order: a view of the slab, no copy (the contiguous advantage)
        in_order = rows == list(range(len(rows)))

        def attend(layer, q, k, v):
            self.k[layer, rows_t, pos_t], self.v[layer, rows_t, pos_t] = k, v
            if in_order:
                kk, vv = self.k[layer, :len(rows), :t_max], self.v[layer, :len(rows), :t_max]
            else:
                kk, vv = self.k[layer, rows_t, :t_max], self.v[layer, rows_t, :t_max]
            return masked_decode_attention(q, kk, vv, lens, self.scale)

        return llama_forward(self.model, torch.tensor(token_ids, device=dev), pos_t, attend)

    def free(self, seq_id: int) -> None:
        del self.rows[seq_id], self.lens[seq_id]


def greedy_generate(engine, prompts: list[list[int]], max_new_tokens: int, keep_logits: bool = False):
    """Prefill every prompt (one at a time), then decode all of them together, greedily.

    Returns (tokens, logits): tokens[i] = the max_new_tokens generated ids of prompt i; logits[i] = a
    [max_new_tokens, vocab] float32 CPU tensor of the logits that chose them (only if keep_logits).
    """
    ids = list(range(len(prompts)))
    first = [engine.prefill(i, p) for i, p in zip(ids, prompts)]
    step_logits = [torch.stack(first)]
    tokens = [[int(l.argmax())] for l in first]
    for _ in range(max_new_tokens - 1):
        logits = engine.decode(ids, [t[-1] for t in tokens])
        step_logits.append(logits)
        for t, row in zip(tokens, logits.argmax(-1).tolist()):
            t.append(row)
    for i in ids:
        engine.free(i)
    if not keep_logits:
        return tokens, None
    stacked = torch.stack(step_logits, 1).float().cpu()                           # [batch, steps, vocab]
    return tokens, list(stacked)


@torch.no_grad()
def hf_greedy_reference(model, prompt: list[int], max_new_tokens: int):
    """transformers' own cached decode of one prompt: (tokens, logits [max_new_tokens, vocab] float32 CPU)."""
    from transformers import DynamicCache
    cache = DynamicCache()
    ids = torch.tensor([prompt], device=model.device)
    tokens, logits = [], []
    for _ in range(max_new_tokens):
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        last = out.logits[0, -1]
        logits.append(last.float().cpu())
        tokens.append(int(last.argmax()))
        ids = torch.tensor([[tokens[-1]]], device=model.device)
    return tokens, torch.stack(logits)


def parallel_sample(engine: PagedEngine, prompt: list[int], n: int, steps: int, *, share: bool = True,
                    temperature: float = 0.8, seed: int = 0):
    """n sampled continuations of one prompt (parallel sampling, as in `SamplingParams(n=...)`).

    share=True: prefill once and fork n-1 times; the prompt's blocks are shared and only a partly filled
    last block is copied when a sample first writes to it (copy-on-write). share=False: n independent
    prefills of the same prompt. Same seed -> same samples either way. Returns (tokens [n][steps],
    peak blocks in use).
    """
    gen = torch.Generator().manual_seed(seed)
    ids = list(range(n))
    if share:
        first = engine.prefill(0, prompt)
        for i in ids[1:]:
            engine.fork(0, i)
        logits = first[None].expand(n, -1)
    else:
        logits = torch.stack([engine.prefill(i, prompt) for i in ids])
    tokens, peak = [[] for _ in ids], engine.manager.num_used_blocks
    for step in range(steps):
        probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=gen)[:, 0].tolist()
        for t, x in zip(tokens, nxt):
            t.append(x)
        if step < steps - 1:
            logits = engine.decode(ids, nxt)
            peak = max(peak, engine.manager.num_used_blocks)
    for i in ids:
        engine.free(i)
    return tokens, peak


def decode_step_times(engines: dict, prompts: list[list[int]], steps: int, *, warmup: int = 2, device: str = "cpu"):
    """Prefill the same prompts into every engine, then time batched greedy decode steps, alternating engines
    step by step (so a slow moment of the machine hits both alike). Returns {name: Timing} of one step."""
    import time
    from ..measure.timing import Timing, synchronize
    ids = list(range(len(prompts)))
    last = {name: [int(eng.prefill(i, p).argmax()) for i, p in zip(ids, prompts)] for name, eng in engines.items()}
    samples = {name: [] for name in engines}
    for step in range(warmup + steps):
        for name, eng in engines.items():
            synchronize(device)
            t0 = time.perf_counter()
            logits = eng.decode(ids, last[name])
            synchronize(device)
            if step >= warmup:
                samples[name].append(time.perf_counter() - t0)
            last[name] = logits.argmax(-1).tolist()
    for eng in engines.values():
        for i in ids:
            eng.free(i)
    return {name: Timing(s) for name, s in samples.items()}
