"""Paged decode attention as ONE Triton kernel: the block table is followed inside the kernel.

`utils.paged_attention.paged_decode_attention` gathers every block into a padded copy and then attends: easy to
read, but it moves all K/V twice. This kernel is the idea of vLLM's PagedAttention kernel in ~40 lines: one
program per (sequence, KV head) walks the sequence's block table, loads each block of K and V straight from its
physical place, and keeps a running (online) softmax, so no copy is ever made.

Deliberately simple (no tensor cores: the query heads that share a KV head are few, so the dot products are plain
multiply-and-sum). The first kernel runs one program per (sequence, KV head): at batch 1 with 8 KV heads that is 8
programs on a GPU with 132 SMs, so most of the chip waits. `paged_decode_attention_split_k` is the fix that
flash-decoding and vLLM's long-context path use: split each sequence's blocks into chunks, let one program attend
one chunk (writing its running max, denominator and weighted sum), then merge the chunks' partial softmaxes. GPU only; on CPU it runs solely under Triton's
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
    def _attend_blocks(q, k_ptr, v_ptr, tables_ptr, seq, kvh, length, first, last, scale,
                       stride_kb, stride_ks, stride_kh, stride_tn,
                       GROUP_PAD: tl.constexpr, BLOCK: tl.constexpr, D: tl.constexpr):
        # Online softmax of q [G, D] over logical blocks first..last-1 of one sequence's table, for one KV head:
        # (running max, denominator, weighted sum of V). Both kernels are this loop over different ranges.
        s, d = tl.arange(0, BLOCK), tl.arange(0, D)
        m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)         # running max of the scores
        l_i = tl.zeros([GROUP_PAD], tl.float32)                       # running softmax denominator
        acc = tl.zeros([GROUP_PAD, D], tl.float32)                    # running weighted sum of V
        for j in range(first, last):
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
        return m_i, l_i, acc

    @triton.jit
    def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, scale,
                             stride_qn, stride_qh, stride_kb, stride_ks, stride_kh, stride_tn,
                             stride_on, stride_oh,
                             GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK: tl.constexpr,
                             D: tl.constexpr):
        seq, kvh = tl.program_id(0), tl.program_id(1)
        length = tl.load(lens_ptr + seq)
        g, d = tl.arange(0, GROUP_PAD), tl.arange(0, D)
        heads, gmask = kvh * GROUP + g, g < GROUP                    # the query heads served by this KV head
        q = tl.load(q_ptr + seq * stride_qn + heads[:, None] * stride_qh + d[None, :],
                    mask=gmask[:, None], other=0.0).to(tl.float32)  # [G, D]
        m_i, l_i, acc = _attend_blocks(q, k_ptr, v_ptr, tables_ptr, seq, kvh, length, 0, tl.cdiv(length, BLOCK),
                                       scale, stride_kb, stride_ks, stride_kh, stride_tn, GROUP_PAD, BLOCK, D)
        out = acc / l_i[:, None]
        tl.store(out_ptr + seq * stride_on + heads[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=gmask[:, None])


def _prepare(q, k_cache, v_cache, block_tables, context_lens):
    """Checks shared by both kernels; returns q, int32 tables and lengths, ready for a launch."""
    if not AVAILABLE:
        raise RuntimeError("Triton is not installed: use utils.paged_attention.paged_decode_attention instead")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError("k_cache and v_cache need the same layout with head_dim contiguous")
    return (q.contiguous(), block_tables.to(torch.int32).contiguous(),
            context_lens.to(device=q.device, dtype=torch.int32).contiguous())


def paged_decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                  block_tables: torch.Tensor, context_lens: torch.Tensor,
                                  scale: float | None = None) -> torch.Tensor:
    """Same contract as utils.paged_attention.paged_decode_attention (q [batch, heads, D], caches
    [num_blocks, B, kv_heads, D], block_tables [batch, max_blocks], context_lens [batch], every length >= 1)."""
    q, tables, lens = _prepare(q, k_cache, v_cache, block_tables, context_lens)
    n, heads, d = q.shape
    _, block, kv_heads, _ = k_cache.shape
    out = torch.empty_like(q)
    group = heads // kv_heads
    _paged_decode_kernel[(n, kv_heads)](
        q, k_cache, v_cache, tables, lens, out, scale or d ** -0.5,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=triton.next_power_of_2(group), BLOCK=block, D=d)
    return out


if AVAILABLE:
    @triton.jit
    def _paged_decode_split_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, m_ptr, l_ptr, acc_ptr, scale,
                                   stride_qn, stride_qh, stride_kb, stride_ks, stride_kh, stride_tn,
                                   BLOCKS_PER_SPLIT, NUM_SPLITS: tl.constexpr, NUM_HEADS: tl.constexpr,
                                   GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK: tl.constexpr,
                                   D: tl.constexpr):
        seq, kvh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        length = tl.load(lens_ptr + seq)
        first = split * BLOCKS_PER_SPLIT                             # this program's chunk of the block table
        last = tl.minimum(first + BLOCKS_PER_SPLIT, tl.cdiv(length, BLOCK))
        g, d = tl.arange(0, GROUP_PAD), tl.arange(0, D)
        heads, gmask = kvh * GROUP + g, g < GROUP
        q = tl.load(q_ptr + seq * stride_qn + heads[:, None] * stride_qh + d[None, :],
                    mask=gmask[:, None], other=0.0).to(tl.float32)
        m_i, l_i, acc = _attend_blocks(q, k_ptr, v_ptr, tables_ptr, seq, kvh, length, first, last,   # this chunk
                                       scale, stride_kb, stride_ks, stride_kh, stride_tn, GROUP_PAD, BLOCK, D)
        row = (seq * NUM_HEADS + heads) * NUM_SPLITS + split          # partials laid out [seq, head, split]
        tl.store(m_ptr + row, m_i, mask=gmask)                        # an empty chunk stores (-inf, 0, 0)
        tl.store(l_ptr + row, l_i, mask=gmask)
        tl.store(acc_ptr + row[:, None] * D + d[None, :], acc, mask=gmask[:, None])

    @triton.jit
    def _merge_splits_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, stride_on, stride_oh,
                             NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, NUM_HEADS: tl.constexpr,
                             D: tl.constexpr):
        seq, head = tl.program_id(0), tl.program_id(1)
        sp, d = tl.arange(0, SPLITS_PAD), tl.arange(0, D)
        row = (seq * NUM_HEADS + head) * NUM_SPLITS + sp
        smask = sp < NUM_SPLITS
        m = tl.load(m_ptr + row, mask=smask, other=float("-inf"))
        l = tl.load(l_ptr + row, mask=smask, other=0.0)
        acc = tl.load(acc_ptr + row[:, None] * D + d[None, :], mask=smask[:, None], other=0.0)
        m_all = tl.max(m, axis=0)                                     # finite: chunk 0 always holds a token
        w = tl.where(m > float("-inf"), tl.exp(m - m_all), 0.0)       # each chunk rescaled to the common max
        out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * l, axis=0)
        tl.store(out_ptr + seq * stride_on + head * stride_oh + d, out.to(out_ptr.dtype.element_ty))


def default_num_splits(batch: int, kv_heads: int, max_blocks: int, device=None) -> int:
    """Enough chunks that (sequences x KV heads x chunks) programs cover the GPU's SMs about twice."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if torch.cuda.is_available() else 128
    return max(1, min(max_blocks, -(-2 * sms // (batch * kv_heads))))


def paged_decode_attention_split_k(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                   block_tables: torch.Tensor, context_lens: torch.Tensor,
                                   scale: float | None = None, num_splits: int | None = None) -> torch.Tensor:
    """paged_decode_attention_triton with each sequence's blocks split into `num_splits` chunks attended in
    parallel and merged by a second kernel (flash-decoding). Same contract and result."""
    q, tables, lens = _prepare(q, k_cache, v_cache, block_tables, context_lens)
    n, heads, d = q.shape
    _, block, kv_heads, _ = k_cache.shape
    max_blocks = tables.shape[1]
    splits = num_splits or default_num_splits(n, kv_heads, max_blocks, q.device)
    if splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {splits}")
    per_split = -(-max_blocks // splits)
    m = torch.empty(n, heads, splits, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    acc = torch.empty(n, heads, splits, d, device=q.device, dtype=torch.float32)
    group = heads // kv_heads
    _paged_decode_split_kernel[(n, kv_heads, splits)](
        q, k_cache, v_cache, tables, lens, m, l, acc, scale or d ** -0.5,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), tables.stride(0),
        per_split, NUM_SPLITS=splits, NUM_HEADS=heads,
        GROUP=group, GROUP_PAD=triton.next_power_of_2(group), BLOCK=block, D=d)
    out = torch.empty_like(q)
    _merge_splits_kernel[(n, heads)](m, l, acc, out, out.stride(0), out.stride(1), NUM_SPLITS=splits,
                                     SPLITS_PAD=triton.next_power_of_2(splits), NUM_HEADS=heads, D=d)
    return out
