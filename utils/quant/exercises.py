"""Checkers for the exercises of 02_quantization_deep_dive (reference solutions: utils/quant/solutions.py).

Each checker takes the learner's function, runs it on inputs it generates, compares with the course's own
implementation, and raises AssertionError with a hint when something is off. It returns a short summary.
"""
from __future__ import annotations

import torch

from .mixed import allocate_bits
from .rtn import QuantSpec, fake_quant


def check_asym_groupwise(fn) -> str:
    """Exercise 1: fn(w, bits, group_size) -> fake-quantized w (asymmetric, one scale + zero per group)."""
    g = torch.Generator().manual_seed(1)
    for bits, group in ((4, 64), (3, 32), (8, 128)):
        w = torch.randn(48, 256, generator=g) * 0.02 + 0.005
        got = fn(w.clone(), bits, group)
        assert got.shape == w.shape, f"shape {tuple(got.shape)} != {tuple(w.shape)}"
        want = fake_quant(w, QuantSpec(bits, group, sym=False))
        step = (w.reshape(48, -1, group).amax(-1) - w.reshape(48, -1, group).amin(-1).clamp(max=0)) / (2**bits - 1)
        err = (got - w).abs().reshape(48, -1, group).amax(-1)
        assert (err <= step * 0.5 + 1e-6).all(), (
            f"{bits}-bit g{group}: an error exceeds half a step; is the zero point rounded and the code clamped "
            f"to [0, {2**bits - 1}]?")
        levels = max(len(torch.unique(r)) for r in got.reshape(-1, group))
        assert levels <= 2**bits, f"a group uses {levels} distinct values; {bits} bits allow {2**bits}"
        assert torch.allclose(got, want, atol=1e-6), f"{bits}-bit g{group}: differs from the course's RTN"
    return "asymmetric group-wise RTN: matches the course's implementation at 3, 4 and 8 bits"


def check_bits_per_weight(fn) -> str:
    """Exercise 2: fn(bits, group_size, scale_bits, zero_bits) -> average storage bits per weight."""
    cases = {"Q8_0 (32 int8 + fp16 scale)": ((8, 32, 16, 0), 8.5),
             "Q4_0 (32 x 4 bit + fp16 scale)": ((4, 32, 16, 0), 4.5),
             "GPTQ sym g64, fp16 scales": ((4, 64, 16, 0), 4.25),
             "AWQ g128, fp16 scale + 4-bit zero": ((4, 128, 16, 4), 4.15625),
             "Q4_1 (fp16 scale + fp16 min per 32)": ((4, 32, 16, 16), 5.0)}
    for label, (args, want) in cases.items():
        got = fn(*args)
        assert abs(got - want) < 1e-9, f"{label}: got {got}, expected {want} (code bits + (scale + zero) / group)"
    return f"bits per weight: {len(cases)} formats right"


def check_allocation(fn) -> str:
    """Exercise 3: fn(errors, sizes, avg_bits) -> {layer: bits} within the budget and near-optimal."""
    g = torch.Generator().manual_seed(3)
    widths = (2, 3, 4, 5, 6, 8)
    names = [f"layer{i}" for i in range(24)]
    sizes = {n: int(torch.randint(1, 5, (1,), generator=g)) * 1000 for n in names}
    sens = {n: float(torch.rand(1, generator=g)) ** 3 * 100 for n in names}
    errors = {n: {b: sens[n] * sizes[n] * 4.0 ** (-b) for b in widths} for n in names}
    for avg in (3.0, 4.0, 5.0):
        got = fn(errors, sizes, avg)
        assert set(got) == set(names), "return one width for every layer"
        assert all(b in widths for b in got.values()), f"widths must come from {widths}"
        used = sum(got[n] * sizes[n] for n in names) / sum(sizes.values())
        assert used <= avg + 1e-9, f"average {used:.3f} bits exceeds the budget {avg}"
        mine = sum(errors[n][got[n]] for n in names)
        ref_choice = allocate_bits(errors, sizes, avg)
        ref = sum(errors[n][ref_choice[n]] for n in names)
        uniform = sum(errors[n][int(avg)] for n in names)
        assert mine <= 1.10 * ref, f"avg {avg}: total error {mine:.4g} vs the reference allocation's {ref:.4g}"
        assert mine < uniform, f"avg {avg}: no better than uniform {int(avg)}-bit ({mine:.4g} vs {uniform:.4g})"
    return "bit allocation: within budget and within 10% of the reference's error at 3, 4 and 5 bits"
