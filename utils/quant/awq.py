"""AWQ (Lin et al., MLSys 2024, arXiv:2306.00978): protect the weights that meet large activations by scaling
them up before rounding, and fold the inverse scale into the operation that produces the layer's input.

For a Linear y = W x, any per-input-channel s > 0 gives y = (W diag(s)) (x / s) exactly. Quantizing W diag(s)
instead of W shrinks the *relative* rounding error of the columns with large s; the activations those columns
meet are divided by s, so their contribution to the output error shrinks. AWQ searches
    s = mean|x|^alpha,  alpha in {0, 1/n, ..., (n-1)/n}       (normalised so that sqrt(max s * min s) = 1)
and keeps the alpha whose quantized output  Q(W diag(s)) (x / s)  is closest to  W x  on calibration data.
No gradient, no Hessian: a 1-D grid search per group of layers that share an input.

Folding (what makes it free at inference): x / s is absorbed by the previous op. For a Llama block:
    input_layernorm          -> q_proj, k_proj, v_proj   (norm weight / s)
    post_attention_layernorm -> gate_proj, up_proj       (norm weight / s)
    up_proj                  -> down_proj                (up rows / s: down's input is act(gate) * up)
    v_proj                   -> o_proj                   (only when v's outputs ARE o's inputs: no GQA)
"""
from __future__ import annotations

import torch

from .calib import capture_linear_inputs, first_layer_inputs, run_layer
from .rtn import QuantSpec, check_group_size, fake_quant


@torch.no_grad()
def awq_search_scale(weights: list[torch.Tensor], x: torch.Tensor, spec: QuantSpec, n_grid: int = 20):
    """Best per-input-channel scale for Linears that share input x (tokens x in). Returns (s, alpha, losses)."""
    x = x.float()
    x_mean = x.abs().mean(0)
    ref = [x @ w.float().T for w in weights]
    losses, best = [], (float("inf"), None, None)
    for k in range(n_grid):
        alpha = k / n_grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = 0.0
        for w, y in zip(weights, ref):
            wq = fake_quant(w.float() * s, spec) / s
            loss += float((x @ wq.T - y).pow(2).mean())
        losses.append(loss)
        if loss < best[0]:
            best = (loss, s, alpha)
    return best[1], best[2], losses


@torch.no_grad()
def _fold(prev: torch.nn.Module, nexts: list[torch.nn.Linear], s: torch.Tensor) -> None:
    """prev's output / s, each next's weight * s: the block computes exactly the same function."""
    s = s.to(prev.weight.dtype)
    if isinstance(prev, torch.nn.Linear):
        prev.weight.div_(s.view(-1, 1))
        if prev.bias is not None:
            prev.bias.div_(s)
    else:                                           # RMSNorm: y = weight * normalised(x)
        prev.weight.div_(s)
    for lin in nexts:
        lin.weight.mul_(s.view(1, -1).to(lin.weight.dtype))


def awq_groups(layer):
    """(name of the previous op, names of the Linears sharing its output, name whose input to record)."""
    groups = [("input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "self_attn.q_proj"),
              ("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"], "mlp.gate_proj"),
              ("mlp.up_proj", ["mlp.down_proj"], "mlp.down_proj")]
    v, o = layer.self_attn.v_proj, layer.self_attn.o_proj
    if v.out_features == o.in_features:
        groups.insert(1, ("self_attn.v_proj", ["self_attn.o_proj"], "self_attn.o_proj"))
    return groups


@torch.no_grad()
def awq_quantize_model(model, calib_ids: torch.Tensor, spec: QuantSpec, *, n_grid: int = 20,
                       max_tokens: int = 4096, progress=None, quantize: bool = True) -> dict:
    """Search and fold AWQ scales block by block, then (quantize=True) RTN-quantize every decoder Linear in
    place. Returns {block index: {group: alpha}}. Scales are searched on at most max_tokens tokens."""
    h, kw = first_layer_inputs(model, calib_ids)
    chosen = {}
    layers = model.model.layers
    for li, layer in enumerate(progress(layers) if progress else layers):
        groups = awq_groups(layer)
        inputs = capture_linear_inputs(layer, h, kw, [g[2] for g in groups])
        chosen[li] = {}
        for prev_name, next_names, key in groups:
            nexts = [layer.get_submodule(n) for n in next_names]
            for n, lin in zip(next_names, nexts):
                check_group_size(lin.in_features, spec.group_size, n)
            x = inputs[key]
            if len(x) > max_tokens:
                x = x[torch.linspace(0, len(x) - 1, max_tokens).long()]
            s, alpha, _ = awq_search_scale([l.weight.data for l in nexts], x, spec, n_grid)
            _fold(layer.get_submodule(prev_name), nexts, s)
            chosen[li][prev_name] = alpha
        if quantize:
            for name, mod in layer.named_modules():
                if isinstance(mod, torch.nn.Linear):
                    mod.weight.copy_(fake_quant(mod.weight.data, spec))
        h = run_layer(layer, h, kw)
    return chosen
