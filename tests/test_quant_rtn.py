"""RTN quantization, 4-bit packing and the GPTQ int32 packing: exact round trips and error bounds."""
import pytest
import torch

from utils.quant.export import pack_rows_int32, unpack_rows_int32
from utils.quant.rtn import (QuantSpec, bits_per_weight, check_group_size, dequantize, fake_quant, pack_int4,
                             quantize, unpack_int4)


@pytest.mark.parametrize("sym", [True, False])
def test_pack_unpack_int4_round_trip_every_code(sym):
    lo, hi = (-8, 7) if sym else (0, 15)
    q = torch.arange(lo, hi + 1, dtype=torch.int8).repeat(3, 2)[:, torch.randperm(32)]
    packed = pack_int4(q, sym=sym)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 16)       # two codes per byte
    assert torch.equal(unpack_int4(packed, sym=sym), q)


def test_pack_int4_layout_low_nibble_first():
    assert pack_int4(torch.tensor([[1, 2]], dtype=torch.int8), sym=False).item() == 0x21


def test_pack_int4_rejects_bad_input():
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.int8))
    with pytest.raises(ValueError, match="4-bit range"):
        pack_int4(torch.tensor([[9, 0]], dtype=torch.int8), sym=True)


def test_gptq_int32_packing_round_trip():
    u = torch.randint(0, 16, (64, 24))
    p = pack_rows_int32(u)
    assert p.dtype == torch.int32 and p.shape == (8, 24)
    assert torch.equal(unpack_rows_int32(p), u)
    assert pack_rows_int32(torch.full((8, 1), 15)).item() == -1        # 0xFFFFFFFF as a signed int32


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [-1, 32, 64])
@pytest.mark.parametrize("sym", [True, False])
def test_rtn_error_at_most_half_a_step(bits, group, sym):
    torch.manual_seed(bits + group)
    w = torch.randn(16, 192) * 0.05 + (0 if sym else 0.01)
    spec = QuantSpec(bits, group, sym)
    q, scale, zero = quantize(w, spec)
    assert q.min() >= spec.qmin and q.max() <= spec.qmax
    assert torch.allclose(dequantize(q, scale, zero, group), fake_quant(w, spec))
    g = 192 if group == -1 else group
    step = scale.repeat_interleave(g, dim=1)
    assert ((fake_quant(w, spec) - w).abs() <= step / 2 + 1e-7).all()
    assert len(torch.unique(q)) <= 2**bits


def test_rtn_error_shrinks_with_bits_and_smaller_groups():
    torch.manual_seed(0)
    w = torch.randn(64, 512) * torch.logspace(-2, 0, 512)          # columns of very different magnitude
    err = lambda s: float((fake_quant(w, s) - w).pow(2).mean())
    assert err(QuantSpec(8, -1)) < err(QuantSpec(4, -1)) / 100
    assert err(QuantSpec(4, 32)) < err(QuantSpec(4, 128)) < err(QuantSpec(4, -1))
    assert err(QuantSpec(4, 64, sym=False)) < err(QuantSpec(4, 64, sym=True))


def test_asym_keeps_zero_exact():
    w = torch.cat([torch.zeros(4, 32), torch.rand(4, 32) + 0.3], dim=1)   # zeros next to positive weights
    assert (fake_quant(w, QuantSpec(4, 64, sym=False))[:, :32] == 0).all()


def test_group_size_that_does_not_divide_is_refused_clearly():
    with pytest.raises(ValueError, match=r"group_size=128 does not divide .* 576.*64"):
        check_group_size(576, 128)
    with pytest.raises(ValueError, match="does not divide"):
        fake_quant(torch.randn(4, 576), QuantSpec(4, 128))
    assert check_group_size(576, -1) == 576
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(bits=1)


def test_bits_per_weight_counts_scales_and_zeros():
    assert bits_per_weight(4, 64, sym=True) == 4.25
    assert bits_per_weight(4, 128, sym=False) == 4 + 20 / 128
    assert bits_per_weight(8, -1, sym=True, in_features=4096) == 8 + 16 / 4096
