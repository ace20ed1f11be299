"""Paged KV storage and attention that reads K/V through a block table (plain PyTorch: runs on CPU and GPU).

Layout (the one vLLM's FlashAttention backend uses): per layer, K and V are each a tensor
[num_blocks, block_size, kv_heads, head_dim]. Flattened over the first two dims, token slot
`block * block_size + offset` is one row, so writing new K/V is one `index_copy_` with the slot ids that the
BlockManager hands out.

Reading is the part that differs from a contiguous cache: `k_cache[block_tables]` gathers each sequence's
blocks into a [batch, blocks * block_size, kv_heads, head_dim] tensor, and a length mask hides the slots
past each sequence's end. This gather is an extra copy of all the KV the step reads, which is why this
readable version is slower than attention over a contiguous cache; vLLM's kernels (and FlashAttention's
paged mode) instead follow the block table *inside* the kernel, loading each block straight from its
physical place, so no copy is made (see the notebook for the measured overhead).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class PagedKVCache:
    """K and V for every layer, cut into blocks: [layers, num_blocks, block_size, kv_heads, head_dim] each."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype=torch.float32, device="cpu"):
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K/V [tokens, kv_heads, head_dim] of new tokens at flat `slots` [tokens]."""
        self.k[layer].flatten(0, 1).index_copy_(0, slots, k.to(self.k.dtype))
        self.v[layer].flatten(0, 1).index_copy_(0, slots, v.to(self.v.dtype))

    def copy_block(self, src: int, dst: int) -> None:
        """Copy-on-write: duplicate one block in every layer before a sequence writes into it."""
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]


def gather_kv(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """[num_blocks, B, kvh, D] cache + [batch, max_blocks] table -> [batch, max_blocks * B, kvh, D]."""
    n, m = block_tables.shape
    return cache[block_tables].reshape(n, m * cache.shape[1], cache.shape[2], cache.shape[3])


def masked_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context_lens: torch.Tensor,
                            scale: float | None = None) -> torch.Tensor:
    """One query token per sequence over padded K/V.

    q [batch, heads, D]; k, v [batch, T, kv_heads, D] (T >= every context length); context_lens [batch].
    Slots at or past a sequence's length are masked out. kv_heads may divide heads (GQA/MQA).
    Shared by the paged and the contiguous cache so that the two differ only in how K/V are fetched.
    """
    n, heads, d = q.shape
    t, kv_heads = k.shape[1], k.shape[2]
    mask = torch.arange(t, device=k.device)[None, :] < context_lens.to(k.device)[:, None]     # [batch, T]
    # GQA without copying K/V: the `heads // kv_heads` query heads that share a KV head become that head's
    # "query rows" (query head j uses KV head j // group, as in HF's repeat_kv).
    qg = q.reshape(n, kv_heads, heads // kv_heads, d)
    out = F.scaled_dot_product_attention(qg, k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask[:, None, None, :], scale=scale)
    return out.reshape(n, heads, d)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor,
                           scale: float | None = None) -> torch.Tensor:
    """Decode attention through block tables: q [batch, heads, D], caches [num_blocks, B, kvh, D],
    block_tables [batch, max_blocks] (padding entries may be any valid block id), context_lens [batch]."""
    return masked_decode_attention(q, gather_kv(k_cache, block_tables), gather_kv(v_cache, block_tables),
                                   context_lens, scale)


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_table: torch.Tensor, start: int, scale: float | None = None) -> torch.Tensor:
    """Causal attention for one sequence's new tokens at positions start .. start+T-1, reading every key
    (cached prefix included) through its block table. q [T, heads, D]; block_table [blocks]."""
    t = q.shape[0]
    end = start + t
    k = gather_kv(k_cache, block_table[None])[0, :end]                        # [end, kvh, D]
    v = gather_kv(v_cache, block_table[None])[0, :end]
    qpos = torch.arange(start, end, device=q.device)[:, None]
    mask = torch.arange(end, device=q.device)[None, :] <= qpos                 # causal, offset by the prefix
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(0, 1)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal_offset: int | None = None,
                        scale: float | None = None) -> torch.Tensor:
    """Textbook attention for ONE sequence, in float64, for tests: softmax(q k^T / sqrt(D)) v.

    q [Tq, heads, D]; k, v [Tk, kv_heads, D] (contiguous). With `causal_offset`, query i sees keys
    0 .. causal_offset + i. KV heads are repeated for GQA.
    """
    heads, kvh, d = q.shape[1], k.shape[1], q.shape[2]
    k = k.double().repeat_interleave(heads // kvh, dim=1)
    v = v.double().repeat_interleave(heads // kvh, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * (scale or 1 / math.sqrt(d))
    if causal_offset is not None:
        qi = torch.arange(q.shape[0])[:, None] + causal_offset
        scores = scores.masked_fill(torch.arange(k.shape[0])[None, :] > qi, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(q.dtype)


def random_paged_kv(batch: int, context: int, block_size: int, heads: int, kv_heads: int, head_dim: int, *,
                    dtype=torch.float32, device="cpu", seed: int = 0):
    """Random K/V for `batch` sequences of `context` tokens, stored both contiguously and in shuffled blocks.

    Returns (q [B, heads, D], k, v [B, context, kv_heads, D], k_cache, v_cache [blocks, block_size, kv_heads, D],
    block_tables [B, blocks per sequence], lens [B]): the inputs of paged_decode_attention and of its contiguous
    twin masked_decode_attention, which must agree. Physical blocks are a random permutation (a real cache is
    scattered)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    k = torch.randn(batch, context, kv_heads, head_dim, generator=g).to(device, dtype)
    v = torch.randn(batch, context, kv_heads, head_dim, generator=g).to(device, dtype)
    q = torch.randn(batch, heads, head_dim, generator=g).to(device, dtype)
    per_seq = -(-context // block_size)
    pad = per_seq * block_size - context
    kb = F.pad(k, (0, 0, 0, 0, 0, pad)).reshape(batch * per_seq, block_size, kv_heads, head_dim)
    vb = F.pad(v, (0, 0, 0, 0, 0, pad)).reshape(batch * per_seq, block_size, kv_heads, head_dim)
    perm = torch.randperm(batch * per_seq, generator=g).to(device)     # physical block of logical block i
    k_cache, v_cache = torch.empty_like(kb), torch.empty_like(vb)
    k_cache[perm], v_cache[perm] = kb, vb
    return q, k, v, k_cache, v_cache, perm.view(batch, per_seq), torch.full((batch,), context, device=device)
