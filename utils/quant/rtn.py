"""Round-to-nearest (RTN) integer quantization: the baseline every other method is measured against.

A weight matrix W (out_features x in_features) is cut along its *input* dimension into groups of `group_size`
columns (per-channel = one group spanning the whole row). Each (row, group) gets a scale s (and, asymmetric,
a zero point z) and every weight becomes an integer code q:

    symmetric   q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1)        s = max|w| / (2^(b-1) - 1)      w ~ s * q
    asymmetric  q = clamp(round(w / s) + z, 0, 2^b - 1)               s = (max - min) / (2^b - 1)     w ~ s * (q - z)

The rounding error of each weight is at most s / 2 (tests check this bound). Codes of 4 bits are stored two per
byte (`pack_int4` / `unpack_int4`); the bits a format really costs include its scales and zeros
(`bits_per_weight`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group_size: int = 64          # -1 = per output channel (one group spans the whole row)
    sym: bool = True

    def __post_init__(self):
        if self.bits not in (2, 3, 4, 5, 6, 7, 8):
            raise ValueError(f"bits={self.bits}: integer RTN here supports 2..8 bits.")
        if self.group_size != -1 and self.group_size < 2:
            raise ValueError(f"group_size={self.group_size}: use -1 (per-channel) or a group of >= 2 columns.")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.sym else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.sym else 2 ** self.bits - 1

    def label(self) -> str:
        g = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"INT{self.bits} {g} {'sym' if self.sym else 'asym'}"


def check_group_size(in_features: int, group_size: int, name: str = "this layer") -> int:
    """The group size to use for a layer with `in_features` inputs, or a clear error if it does not divide."""
    if group_size == -1:
        return in_features
    if in_features % group_size:
        divisors = [g for g in (16, 32, 64, 128, 256) if in_features % g == 0]
        raise ValueError(f"group_size={group_size} does not divide {name}'s {in_features} input features, so the "
                         f"last group would be ragged. Use a divisor of {in_features} ({divisors} here) or "
                         f"group_size=-1 for per-channel scales.")
    return group_size


def _grouped(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    g = check_group_size(w.shape[-1], spec.group_size)
    return w.reshape(w.shape[0], w.shape[-1] // g, g)


def quant_params(wg: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for each group of `wg` (rows x groups x group_size) -> (rows x groups x 1) each."""
    if spec.sym:
        scale = wg.abs().amax(-1, keepdim=True) / spec.qmax
        zero = torch.zeros_like(scale)
    else:
        lo = wg.amin(-1, keepdim=True).clamp(max=0)       # keep 0 representable (padding, ReLU-like zeros)
        hi = wg.amax(-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / spec.qmax
        zero = torch.round(-lo / scale.clamp(min=1e-12)).clamp(0, spec.qmax)
    return scale.clamp(min=1e-12), zero


def quantize(w: torch.Tensor, spec: QuantSpec):
    """Integer codes (int16 tensor: 8-bit asymmetric codes reach 255; same shape as w), scales and zeros ((rows, groups) each)."""
    wg = _grouped(w.float(), spec)
    scale, zero = quant_params(wg, spec)
    q = torch.clamp(torch.round(wg / scale) + zero, spec.qmin, spec.qmax)
    return q.to(torch.int16).reshape(w.shape), scale.squeeze(-1), zero.squeeze(-1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    rows, cols = q.shape
    g = cols if group_size == -1 else group_size
    qg = q.float().reshape(rows, cols // g, g)
    return ((qg - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(rows, cols)


def fake_quant(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize then dequantize: the weights a W4A16 kernel effectively multiplies by (same dtype as w)."""
    q, s, z = quantize(w, spec)
    return dequantize(q, s, z, spec.group_size).to(w.dtype)


# ----------------------------------------------------------------------------------------- 4-bit packing
def pack_int4(q: torch.Tensor, sym: bool = True) -> torch.Tensor:
    """Two 4-bit codes per byte along the last dim: element 2i in the low nibble, 2i+1 in the high nibble.
    Symmetric codes (-8..7) are stored offset by +8 (0..15), as GPTQ's uint4b8 type does."""
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even last dimension, got {tuple(q.shape)}")
    u = q.to(torch.int16) + (8 if sym else 0)
    if u.min() < 0 or u.max() > 15:
        raise ValueError(f"codes out of 4-bit range: [{int(q.min())}, {int(q.max())}] (sym={sym})")
    u = u.to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, sym: bool = True) -> torch.Tensor:
    lo, hi = packed & 0x0F, packed >> 4
    u = torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2).to(torch.int8)
    return u - 8 if sym else u


def bits_per_weight(bits: int, group_size: int, sym: bool, scale_bits: int = 16, in_features: int = 4096,
                    zero_bits: int | None = None) -> float:
    """Average storage bits of one weight: its code plus its share of the group's scale (and zero point)."""
    g = in_features if group_size == -1 else group_size
    extra = scale_bits + (0 if sym else (zero_bits if zero_bits is not None else bits))
    return bits + extra / g


# ------------------------------------------------------------------------------ applying it to a model
def decoder_linears(model) -> dict[str, torch.nn.Linear]:
    """The Linear layers inside the decoder blocks (attention and MLP projections), by name.
    Embeddings and the LM head stay in 16 bit, as in GPTQ/AWQ checkpoints."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}" and "lm_head" not in name}


@torch.no_grad()
def rtn_quantize_model(model, spec: QuantSpec) -> dict:
    """Replace every decoder Linear's weight by its RTN fake-quant version (in place). Returns stats."""
    lins = decoder_linears(model)
    for name, lin in lins.items():
        check_group_size(lin.in_features, spec.group_size, name)
    for lin in lins.values():
        lin.weight.copy_(fake_quant(lin.weight.data, spec))
    return {"layers": len(lins), "params": sum(l.weight.numel() for l in lins.values())}
