"""GPTQ (Frantar et al., ICLR 2023, arXiv:2210.17323): quantize a layer's weights one input column at a time and
push each column's rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's squared output error.

For a Linear y = W x and calibration inputs X (tokens x in), minimising ||W X^T - Q X^T||^2 row by row has the
Hessian H = 2 X^T X / n (in x in), the same for every output row. After column j is rounded to q_j, the
optimal update of the remaining columns is  W[:, j+1:] -= (w_j - q_j) / [H^-1]_jj * [H^-1]_{j, j+1:}.
Tricks from the paper, all here: the Cholesky factor of H^-1 gives those rows directly (numerically stable);
updates inside a block of 128 columns are applied eagerly and to the rest of the matrix once per block
("lazy batch", the same arithmetic with fewer memory passes); `act_order` quantizes columns with the largest
Hessian diagonal (the most active inputs) first; groups take their scale from the *updated* weights when the
group's first column is reached.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .calib import LINEAR_NAMES, capture_linear_inputs, first_layer_inputs, run_layer
from .rtn import QuantSpec, check_group_size, quant_params


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n for inputs x (tokens x in_features), in float32 (as the reference implementation)."""
    x = x.reshape(-1, x.shape[-1]).float()
    return (2.0 / x.shape[0]) * (x.T @ x)


SHARED_INPUT = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))
assert sorted(n for g in SHARED_INPUT for n in g) == sorted(LINEAR_NAMES)


@dataclass
class GPTQResult:
    weight: torch.Tensor     # dequantized weight (out x in), what the kernel effectively uses
    q: torch.Tensor          # integer codes (out x in), int16, in the ORIGINAL column order
    scale: torch.Tensor      # (out x n_groups)
    zero: torch.Tensor       # (out x n_groups)
    g_idx: torch.Tensor      # group of each input column (in,), int32: i // group_size unless act_order


def lower_triangular_inverse(lower: torch.Tensor, leaf: int = 256) -> torch.Tensor:
    """L^-1 for a lower-triangular L, by halves: [[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]].

    A triangular solve against the identity does n^3 flops and ignores that the answer is triangular; the halves
    turn most of the work into matrix products (1.8x faster for a 4864-wide down_proj on one CPU core)."""
    n = lower.shape[0]
    if n <= leaf:
        eye = torch.eye(n, dtype=lower.dtype, device=lower.device)
        return torch.linalg.solve_triangular(lower, eye, upper=False)
    m = n // 2
    a_inv = lower_triangular_inverse(lower[:m, :m], leaf)
    d_inv = lower_triangular_inverse(lower[m:, m:], leaf)
    out = torch.zeros_like(lower)
    out[:m, :m], out[m:, m:] = a_inv, d_inv
    out[m:, :m] = -(d_inv @ (lower[m:, :m] @ a_inv))
    return out


def inverse_hessian_upper_cholesky(h: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor U of H^-1 (H^-1 = U^T U): row j of U holds the weights of column j's error update.

    The reference computes chol(chol_inverse(chol(H))): three O(n^3) steps, and torch's CPU cholesky_inverse is
    slow. With J the reversal permutation and L = chol(J H J), H^-1 = (J L^-1 J)^T (J L^-1 J) and J L^-1 J is
    upper triangular: one Cholesky and one triangular inverse."""
    lower = torch.linalg.cholesky(h.flip(0, 1))
    return lower_triangular_inverse(lower).flip(0, 1)


@torch.no_grad()
def gptq_quantize_weight(w: torch.Tensor, h: torch.Tensor, spec: QuantSpec, *, blocksize: int = 128,
                         percdamp: float = 0.01, act_order: bool = False) -> GPTQResult:
    rows, cols = w.shape
    g = check_group_size(cols, spec.group_size)
    blocksize = max(blocksize // g, 1) * g if g < cols else blocksize   # groups never straddle a block
    # float32 throughout, as the reference implementation: with 1% dampening the factorisation is stable, and
    # float64 would make the O(in^3) Cholesky of a 4864-wide down_proj several times slower on a CPU
    W, H = w.detach().float().clone(), h.float().clone()
    dead = torch.diag(H) == 0                       # inputs never active: their columns cannot matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols, device=H.device)
    W, H = W[:, perm], H[perm][:, perm]
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype, device=H.device)   # dampening
    Hinv = inverse_hessian_upper_cholesky(H)

    Q = torch.zeros_like(W)
    q_codes = torch.zeros_like(W)
    n_groups = cols // g
    scales = torch.zeros(rows, n_groups, dtype=W.dtype, device=W.device)
    zeros = torch.zeros_like(scales)
    scale = zero = None
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        d = Hinv1.diagonal().tolist()                # python floats: cheaper than 0-d tensors in the loop
        codes1, Err1 = torch.empty_like(W1), torch.empty_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % g == 0:                         # new group: scale from the already-updated weights
                scale, zero = quant_params(W1[:, i:i + g].unsqueeze(1), spec)
                scale, zero = scale[:, 0, 0], zero[:, 0, 0]
                scales[:, col // g], zeros[:, col // g] = scale, zero
            w_col = W1[:, i]
            q = torch.round(w_col / scale)
            if not spec.sym:
                q.add_(zero)
            q.clamp_(spec.qmin, spec.qmax)
            codes1[:, i] = q
            err = (w_col - (q - zero) * scale if not spec.sym else w_col - q * scale).div_(d[i])
            Err1[:, i] = err
            if i + 1 < i2 - i1:
                W1[:, i + 1:].addr_(err, Hinv1[i, i + 1:], alpha=-1.0)   # eager update inside the block
        q_codes[:, i1:i2] = codes1
        gi = torch.arange(i1, i2, device=W.device) // g
        Q[:, i1:i2] = (codes1 - zeros[:, gi]) * scales[:, gi]
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]                               # lazy update of the rest
    inv = torch.argsort(perm)
    g_idx = (torch.arange(cols, device=W.device) // g)[inv].to(torch.int32)   # original column -> group
    # the weight stays on w's device; codes, scales and g_idx (for the exporter) go to the CPU
    return GPTQResult(Q[:, inv].to(w.dtype), q_codes[:, inv].to(torch.int16).cpu(), scales.float().cpu(),
                      zeros.float().cpu(), g_idx.cpu())


@torch.no_grad()
def gptq_quantize_model(model, calib_ids: torch.Tensor, spec: QuantSpec, *, act_order: bool = False,
                        percdamp: float = 0.01, progress=None) -> dict[str, GPTQResult]:
    """Quantize every decoder Linear in place, block by block: block i is calibrated on the outputs of the
    already-quantized blocks 0..i-1 (errors do not compound unseen). Returns the codes per Linear name."""
    h, kw = first_layer_inputs(model, calib_ids)
    results = {}
    layers = model.model.layers
    for li, layer in enumerate(progress(layers) if progress else layers):
        inputs = capture_linear_inputs(layer, h, kw, [names[0] for names in SHARED_INPUT])
        for names in SHARED_INPUT:
            lins = [layer.get_submodule(n) for n in names]
            # Linears that read the same input share one Hessian, and GPTQ treats rows independently:
            # stacking their rows and running once gives the same result as one run per Linear, faster.
            w = torch.cat([lin.weight.data for lin in lins]) if len(lins) > 1 else lins[0].weight.data
            res = gptq_quantize_weight(w, hessian(inputs[names[0]]), spec, act_order=act_order, percdamp=percdamp)
            r0 = 0
            for n, lin in zip(names, lins):
                r1 = r0 + lin.out_features
                part = GPTQResult(res.weight[r0:r1].clone(), res.q[r0:r1].clone(), res.scale[r0:r1].clone(),
                                  res.zero[r0:r1].clone(), res.g_idx.clone())
                lin.weight.copy_(part.weight)
                results[f"model.layers.{li}.{n}"] = part
                r0 = r1
        del inputs
        h = run_layer(layer, h, kw)                 # the next block sees the quantized block's output
    return results
