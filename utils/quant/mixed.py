"""Mixed precision by measured sensitivity (the idea behind EXL2): give more bits to the layers whose
quantization error costs the most, fewer to the robust ones, under a fixed average.

1. Measure: for every decoder Linear and every candidate width b, the squared output error
   ||X W^T - X Q_b(W)^T||^2 on calibration inputs X (RTN, same group size for every width).
2. Allocate: minimise the summed error subject to sum(b * numel) <= avg_bits * total. A Lagrange multiplier
   lambda prices one bit: each layer independently picks argmin_b err_b + lambda * b * numel; bisection on
   lambda meets the budget; leftover bits then go greedily to the best error drop per bit.
EXL2 itself measures error after GPTQ and mixes widths *inside* a layer; the principle is the same.
"""
from __future__ import annotations

import torch

from .calib import LINEAR_NAMES, capture_linear_inputs, first_layer_inputs, run_layer
from .rtn import QuantSpec, fake_quant


@torch.no_grad()
def layer_sensitivity(model, calib_ids: torch.Tensor, bits=(2, 3, 4, 5, 6, 8), group_size: int = 64,
                      sym: bool = False, max_tokens: int = 2048) -> dict[str, dict[int, float]]:
    """{linear name: {bits: squared output error summed over tokens}} on the unquantized model's activations."""
    h, kw = first_layer_inputs(model, calib_ids)
    errors = {}
    for li, layer in enumerate(model.model.layers):
        inputs = capture_linear_inputs(layer, h, kw, list(LINEAR_NAMES))
        for name in LINEAR_NAMES:
            w = layer.get_submodule(name).weight.data.float()
            x = inputs[name]
            if len(x) > max_tokens:
                x = x[torch.linspace(0, len(x) - 1, max_tokens).long()]
            errors[f"model.layers.{li}.{name}"] = {
                b: float((x @ (w - fake_quant(w, QuantSpec(b, group_size, sym))).T).pow(2).sum()) for b in bits}
        h = run_layer(layer, h, kw)
    return errors


def allocate_bits(errors: dict[str, dict[int, float]], sizes: dict[str, int], avg_bits: float) -> dict[str, int]:
    """Widths per layer with sum(b * size) <= avg_bits * sum(size), minimising the summed error."""
    names = list(errors)
    budget = avg_bits * sum(sizes[n] for n in names)
    widths = sorted(next(iter(errors.values())))
    if budget < widths[0] * sum(sizes.values()):
        raise ValueError(f"avg_bits={avg_bits} is below the narrowest width {widths[0]}")

    def pick(lam):
        return {n: min(widths, key=lambda b: errors[n][b] + lam * b * sizes[n]) for n in names}

    def cost(choice):
        return sum(choice[n] * sizes[n] for n in names)

    lo, hi = 0.0, 1.0
    while cost(pick(hi)) > budget:
        hi *= 4
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(pick(mid)) > budget else (lo, mid)
    choice = pick(hi)
    while True:                                   # spend what is left, best error drop per extra bit first
        left = budget - cost(choice)
        options = []
        for n in names:
            up = [b for b in widths if b > choice[n] and (b - choice[n]) * sizes[n] <= left]
            if up:
                b = up[0]
                options.append(((errors[n][choice[n]] - errors[n][b]) / ((b - choice[n]) * sizes[n]), n, b))
        if not options:
            return choice
        gain, n, b = max(options)
        if gain <= 0:
            return choice
        choice[n] = b


@torch.no_grad()
def apply_bits(model, choice: dict[str, int], group_size: int = 64, sym: bool = False) -> None:
    for name, b in choice.items():
        lin = model.get_submodule(name)
        lin.weight.copy_(fake_quant(lin.weight.data, QuantSpec(b, group_size, sym)))
