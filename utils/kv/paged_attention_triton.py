"""Paged decode attention as ONE Triton kernel: the block table is followed inside the kernel.

`utils.paged_attention.paged_decode_attention` gathers every block into a padded copy and then attends: easy to
read, but it moves all K/V twice. This kernel is the idea of vLLM's PagedAttention kernel in ~40 lines: one
program per (sequence, KV head) walks the sequence's block table, loads each block of K and V straight from its
physical place, and keeps a running (online) softmax, so no copy is ever made.

Deliberately simple (no split-K over long contexts, no tensor cores: the query heads that share a KV head are
few, so the dot products are plain multiply-and-sum). GPU only; on CPU it runs solely under Triton's
interpreter (TRITON_INTERPRET=1 set before import), which the unit test uses to check it against the reference.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:                                   # the CPU install may lack Triton: callers check AVAILABLE
    triton = tl = None

AVAILABLE = triton is not None

if AVAILABLE:
    @triton.jit
    def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, scale,
                             stride_qn, stride_qh, stride_kb, stride_ks, stride_kh, stride_tn,
                             stride_on, stride_oh,
                             GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK: tl.constexpr,
                             D: tl.constexpr):
        seq, kvh = tl.program_id(0), tl.program_id(1)
        length = tl.load(lens_ptr + seq)
        g, s, d = tl.arange(0, GROUP_PAD), tl.arange(0, BLOCK), tl.arange(0, D)
        heads, gmask = kvh * GROUP + g, g < GROUP                    # the query heads served by this KV head
        q = tl.load(q_ptr + seq * stride_qn + heads[:, None] * stride_qh + d[None, :],
                    mask=gmask[:, None], other=0.0).to(tl.float32)  # [G, D]
        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)         # running max of the scores
        l_i = tl.zeros([GROUP_PAD], tl.float32)                       # running softmax denominator
        acc = tl.zeros([GROUP_PAD, D], tl.float32)                    # running weighted sum of V
        for j in range(0, tl.cdiv(length, BLOCK)):
            block = tl.load(tables_ptr + seq * stride_tn + j).to(tl.int64)   # logical block j -> physical block
            valid = j * BLOCK + s < length
            offs = block * stride_kb + kvh * stride_kh + s[:, None] * stride_ks + d[None, :]
            k = tl.load(k_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32)       # [BLOCK, D]
            v = tl.load(v_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32)
            scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale                # [G, BLOCK]
            scores = tl.where(valid[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            p = tl.exp(scores - m_new[:, None])
            alpha = tl.exp(m_i - m_new)                              # rescale what was accumulated so far
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(out_ptr + seq * stride_on + heads[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=gmask[:, None])


def paged_decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                  block_tables: torch.Tensor, context_lens: torch.Tensor,
                                  scale: float | None = None) -> torch.Tensor:
    """Same contract as utils.paged_attention.paged_decode_attention (q [batch, heads, D], caches
    [num_blocks, B, kv_heads, D], block_tables [batch, max_blocks], context_lens [batch], every length >= 1)."""
    if not AVAILABLE:
        raise RuntimeError("Triton is not installed: use utils.paged_attention.paged_decode_attention instead")
    n, heads, d = q.shape
    _, block, kv_heads, _ = k_cache.shape
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError("k_cache and v_cache need the same layout with head_dim contiguous")
    q = q.contiguous()
    tables = block_tables.to(torch.int32).contiguous()
    lens = context_lens.to(device=q.device, dtype=torch.int32).contiguous()
    out = torch.empty_like(q)
    group = heads // kv_heads
    _paged_decode_kernel[(n, kv_heads)](
        q, k_cache, v_cache, tables, lens, out, scale or d ** -0.5,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=triton.next_power_of_2(group), BLOCK=block, D=d)
    return out
