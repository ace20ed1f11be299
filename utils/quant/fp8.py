"""FP8 E4M3 (1 sign, 4 exponent, 3 mantissa bits; max 448) for weights and activations, and NF4.

FP8 is a *floating* grid: relative spacing is constant (~6% between neighbours at 3 mantissa bits), so one scale
per tensor (or per output channel) is enough; no groups. On Hopper the tensor cores multiply FP8 x FP8 directly
(W8A8): weights AND activations are quantized, which is what vLLM's quantization="fp8" does (weights per tensor
or per channel, activations per tensor, scale computed on the fly = "dynamic").

NF4 (Dettmers et al., QLoRA 2023): 16 levels placed at quantiles of a normal distribution, one absmax scale per
block of 64 weights: a 4-bit grid shaped like trained weights. bitsandbytes stores and multiplies it on CUDA;
here it is simulated (fake-quant) so its quality can be compared on any machine.
"""
from __future__ import annotations

import torch

E4M3_MAX = 448.0
_FP8 = getattr(torch, "float8_e4m3fn", None)


def _require_fp8():
    if _FP8 is None:
        raise RuntimeError(f"torch {torch.__version__} has no float8_e4m3fn dtype; FP8 needs torch >= 2.1.")


def fp8_scale(x: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """Scale so that the largest |x| (of the tensor, or of each row) lands on E4M3's max, 448."""
    amax = x.abs().amax(dim=-1, keepdim=True) if per_channel else x.abs().amax()
    return (amax.float() / E4M3_MAX).clamp(min=1e-12)


def to_fp8(x: torch.Tensor, per_channel: bool = False):
    """(fp8 tensor, scale): x ~ fp8.float() * scale."""
    _require_fp8()
    scale = fp8_scale(x, per_channel)
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(_FP8), scale


def fp8_fake_quant(x: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    q, scale = to_fp8(x, per_channel)
    return (q.float() * scale).to(x.dtype)


@torch.no_grad()
def fp8_quantize_model(model, per_channel: bool = True, activations: bool = True) -> list:
    """W8A8-FP8 simulation in place: every decoder Linear's weight to E4M3 (per-channel or per-tensor scale);
    with activations=True its input is also rounded to E4M3 with a dynamic per-tensor scale at every call.
    Returns the hook handles (remove them to stop quantizing activations)."""
    from .rtn import decoder_linears
    handles = []
    for lin in decoder_linears(model).values():
        lin.weight.copy_(fp8_fake_quant(lin.weight.data, per_channel))
        if activations:
            handles.append(lin.register_forward_pre_hook(lambda m, args: (fp8_fake_quant(args[0]),) + args[1:]))
    return handles


# ------------------------------------------------------------------------------------------------ NF4
NF4_LEVELS = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                           -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                           0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                           0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])   # QLoRA, App. E


def nf4_fake_quant(w: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """Blockwise absmax-scaled NF4, as bitsandbytes' quant_type="nf4" (scales kept exact: no double quant)."""
    flat = w.float().reshape(-1, blocksize)
    absmax = flat.abs().amax(-1, keepdim=True).clamp(min=1e-12)
    levels = NF4_LEVELS.to(flat.device)
    idx = torch.bucketize(flat / absmax, (levels[1:] + levels[:-1]) / 2)   # nearest level
    return (levels[idx] * absmax).reshape(w.shape).to(w.dtype)


@torch.no_grad()
def nf4_quantize_model(model, blocksize: int = 64) -> None:
    from .rtn import decoder_linears
    for lin in decoder_linears(model).values():
        lin.weight.copy_(nf4_fake_quant(lin.weight.data, blocksize))


def bitsandbytes_status() -> tuple[bool, str]:
    """(usable, reason): bitsandbytes' NF4 needs the package and (for its kernels) a CUDA GPU."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False, "bitsandbytes is not installed (pip install bitsandbytes); NF4 is simulated instead"
    if not torch.cuda.is_available():
        return False, "bitsandbytes' NF4 kernels need a CUDA GPU; NF4 is simulated instead"
    return True, "bitsandbytes available"
