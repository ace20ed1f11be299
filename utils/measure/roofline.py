"""The two ceilings every notebook compares against, measured on *this* device, and arithmetic intensity.

  bandwidth  (bytes/s): a large device-to-device copy, counting bytes read + bytes written;
  matmul     (FLOP/s):  a large square matrix product, 2*n^3 FLOP, on random data (zeros can run faster).
  ridge point = matmul / bandwidth (FLOP per byte): below it a kernel is memory-bound, above compute-bound.
"""
from __future__ import annotations

from dataclasses import dataclass

from .memory import head_dim
from .timing import Timing, benchmark


@dataclass
class Ceiling:
    value: float          # bytes/s or FLOP/s (median over repeats)
    timing: Timing
    what: str

    def __str__(self):
        return f"{self.what}: {self.value:.4g} (spread {self.timing.spread:.1%}, {self.timing})"


def measure_bandwidth(device: str = "cuda", nbytes: int | None = None, repeat: int = 20) -> Ceiling:
    """Copy bandwidth in bytes/s. Default size is several times any L2/LLC: 2 GiB on GPU, 256 MiB on CPU."""
    import torch
    nbytes = nbytes or (2 << 30 if device.startswith("cuda") else 256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = benchmark(lambda: dst.copy_(src), warmup=3, repeat=repeat, device=device, max_seconds=10)
    moved = 2 * src.numel() * src.element_size()          # read src + write dst
    del src, dst
    return Ceiling(moved / t.median, t, f"copy bandwidth ({device}, {nbytes >> 20} MiB)")


def measure_matmul_flops(device: str = "cuda", dtype=None, n: int | None = None, repeat: int = 20) -> Ceiling:
    """Dense matmul FLOP/s: bf16 8192^3 on GPU; fp32 1024^3 on CPU (bf16 is emulated on many CPUs)."""
    import torch
    on_gpu = device.startswith("cuda")
    dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
    n = n or (8192 if on_gpu else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = benchmark(lambda: a @ b, warmup=3, repeat=repeat, device=device, max_seconds=10)
    del a, b
    return Ceiling(2 * n ** 3 / t.median, t, f"matmul {str(dtype).replace('torch.', '')} n={n} ({device})")


def ridge_point(flops_per_s: float, bytes_per_s: float) -> float:
    """Arithmetic intensity (FLOP/byte) where the two roofs meet."""
    return flops_per_s / bytes_per_s


def attainable(intensity: float, flops_per_s: float, bytes_per_s: float) -> float:
    """Roofline: min(compute roof, bandwidth x intensity)."""
    return min(flops_per_s, bytes_per_s * intensity)


# --------------------------------------------------------------- a decoder forward, counted by hand
@dataclass
class ForwardCost:
    flops: float
    bytes: float

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes


def forward_cost(n_params: int, weight_bytes_per_param: float, kv_bytes_per_token: float, batch: int,
                 new_tokens: int, context: int, attn_flops_per_token_per_ctx: float = 0.0, *,
                 embedding_params: int = 0, tied_embeddings: bool = True,
                 logit_tokens: int | None = None) -> ForwardCost:
    """FLOP and minimum bytes of one forward pass over `batch` sequences of `new_tokens` each.

    FLOP: 2 per body parameter per token (one multiply-add). The input embedding is a gather (0 FLOP); the LM head
    (`embedding_params` = vocab x hidden) costs 2 per parameter per position that gets logits (`logit_tokens`,
    None = every token). `n_params` holds the table once if `tied_embeddings`, else the table plus an equal head.
    Attention (QK^T, PV): each new token against the `context` cached tokens and, causally, the new ones up to itself.
    Bytes: every weight read once per pass (shared by the whole batch) + each sequence's KV read once
    + the new tokens' KV written. Activations are ignored (small next to weights at these sizes).
    The input embedding table counts as read whole (a gather touches a few rows) so that weight bytes = model size.
    Prefill: new_tokens = prompt length, context = 0. Decode: new_tokens = 1, context = KV length before the step.
    """
    tokens = batch * new_tokens
    logit_tokens = tokens if logit_tokens is None else logit_tokens
    body_params = n_params - (1 if tied_embeddings else 2) * embedding_params
    if body_params < 0:
        raise ValueError(f"embedding_params={embedding_params:,} exceeds what n_params={n_params:,} can hold "
                         f"({'tied' if tied_embeddings else 'untied'} embeddings)")
    keys_per_sequence = new_tokens * context + new_tokens * (new_tokens + 1) // 2     # causal query-key pairs
    flops = (2 * body_params * tokens + 2 * embedding_params * logit_tokens
             + attn_flops_per_token_per_ctx * batch * keys_per_sequence)
    nbytes = n_params * weight_bytes_per_param + batch * (context + new_tokens) * kv_bytes_per_token
    return ForwardCost(flops, nbytes)


def attention_flops_per_token_per_ctx(config) -> float:
    """QK^T and PV: 2 matmuls x 2 FLOP x heads x head_dim per (query token, context token), per layer."""
    heads = config.num_attention_heads
    return 4 * config.num_hidden_layers * heads * head_dim(config)
