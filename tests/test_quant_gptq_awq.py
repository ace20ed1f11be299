"""GPTQ lowers a layer's output error vs RTN; AWQ finds a planted salient channel and its folding is exact;
the mixed-bit allocator respects its budget; the exercise checkers accept the solutions and reject mistakes."""
import copy

import pytest
import torch

from utils.quant import exercises, solutions
from utils.quant.awq import awq_quantize_model, awq_search_scale
from utils.quant.gptq import gptq_quantize_model, gptq_quantize_weight, hessian
from utils.quant.mixed import allocate_bits, layer_sensitivity
from utils.quant.rtn import QuantSpec, fake_quant


def tiny_llama(hidden=256, inter=512, heads=4, kv=2, layers=2, vocab=128, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                      num_key_value_heads=kv, num_hidden_layers=layers, vocab_size=vocab,
                      max_position_embeddings=128, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():                       # norms away from 1 so that folding is really exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def correlated_inputs(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    return (torch.randn(n, d, generator=g) * torch.logspace(0, 1, d)) @ mix


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("spec", [QuantSpec(4, 64, True), QuantSpec(3, -1, False)])
def test_gptq_beats_rtn_on_layer_output_error(act_order, spec):
    torch.manual_seed(1)
    w = torch.randn(96, 256) * 0.05
    x = correlated_inputs(2048, 256)
    res = gptq_quantize_weight(w, hessian(x), spec, act_order=act_order)
    out_err = lambda wq: float((x @ (wq - w).T).pow(2).mean())
    rtn, gptq = out_err(fake_quant(w, spec)), out_err(res.weight)
    assert gptq < 0.8 * rtn, f"GPTQ {gptq:.4g} vs RTN {rtn:.4g}"
    # codes, scales and g_idx reproduce the returned weight exactly (what the exporter stores)
    deq = (res.q.float() - res.zero[:, res.g_idx.long()]) * res.scale[:, res.g_idx.long()]
    assert torch.allclose(deq, res.weight, atol=1e-6)
    assert res.q.min() >= spec.qmin and res.q.max() <= spec.qmax
    if not act_order and spec.group_size > 0:
        assert torch.equal(res.g_idx, torch.arange(256, dtype=torch.int32) // spec.group_size)


def test_awq_search_finds_planted_salient_channel():
    torch.manual_seed(2)
    d, salient = 128, 37
    w = torch.randn(64, d) * 0.05
    x = torch.randn(4096, d)
    x[:, salient] *= 40.0                                    # one input channel carries huge activations
    spec = QuantSpec(4, 64, True)
    s, alpha, losses = awq_search_scale([w], x, spec)
    assert int(s.argmax()) == salient
    assert alpha > 0 and min(losses) < 0.9 * losses[0]       # losses[0] = alpha 0 = plain RTN


def test_awq_folding_is_exact_and_quantized_awq_beats_rtn():
    model = tiny_llama()
    ids = torch.randint(0, 128, (4, 32))
    ref = model(ids).logits
    folded = copy.deepcopy(model)
    alphas = awq_quantize_model(folded, ids, QuantSpec(4, 64, True), quantize=False)
    assert torch.allclose(folded(ids).logits, ref, atol=1e-4), "scales folded into norms/linears changed the function"
    assert any(a > 0 for layer in alphas.values() for a in layer.values())
    assert "self_attn.v_proj" not in alphas[0]               # GQA: v's outputs are not o's inputs -> skipped


def test_gptq_model_quantizes_every_linear_in_place():
    model = tiny_llama()
    ids = torch.randint(0, 128, (4, 32))
    results = gptq_quantize_model(model, ids, QuantSpec(4, 64, True))
    assert len(results) == 2 * 7
    for name, r in results.items():
        assert torch.equal(model.get_submodule(name).weight.data, r.weight)


def test_allocate_bits_respects_budget_and_prefers_sensitive_layers():
    sizes = {"robust": 1000, "sensitive": 1000, "other": 2000}
    errors = {n: {b: k * 4.0 ** (-b) for b in (2, 3, 4, 5, 6, 8)}
              for n, k in (("robust", 1.0), ("sensitive", 1000.0), ("other", 10.0))}
    choice = allocate_bits(errors, sizes, 4.0)
    assert sum(choice[n] * sizes[n] for n in sizes) <= 4.0 * 4000
    assert choice["sensitive"] > choice["robust"]
    assert sum(errors[n][choice[n]] for n in sizes) < sum(errors[n][4] for n in sizes)
    with pytest.raises(ValueError, match="below the narrowest"):
        allocate_bits(errors, sizes, 1.5)


def test_layer_sensitivity_decreases_with_bits():
    model = tiny_llama(layers=1)
    errs = layer_sensitivity(model, torch.randint(0, 128, (2, 32)), bits=(2, 4, 8))
    assert len(errs) == 7
    for e in errs.values():
        assert e[2] > e[4] > e[8] > 0


def test_exercise_solutions_pass_their_checkers():
    exercises.check_asym_groupwise(solutions.asym_groupwise)
    exercises.check_bits_per_weight(solutions.bits_per_weight)
    exercises.check_allocation(solutions.allocate)


def test_exercise_checkers_reject_wrong_answers():
    with pytest.raises(AssertionError):
        exercises.check_asym_groupwise(lambda w, b, g: fake_quant(w, QuantSpec(b, g, sym=True)))
    with pytest.raises(AssertionError):
        exercises.check_bits_per_weight(lambda b, g, s, z: float(b))
    with pytest.raises(AssertionError):
        exercises.check_allocation(lambda e, s, a: {n: int(a) for n in e})   # uniform: not better than uniform


def test_gptq_stacking_linears_that_share_an_input_changes_nothing():
    """gptq_quantize_model runs q/k/v (and gate/up) as one stacked matrix: rows are independent in GPTQ, so the
    result must equal one run per Linear with the same Hessian."""
    torch.manual_seed(4)
    x = correlated_inputs(512, 128)
    ws = [torch.randn(r, 128) * 0.05 for r in (64, 32, 32)]
    spec = QuantSpec(4, 64, True)
    h = hessian(x)
    stacked = gptq_quantize_weight(torch.cat(ws), h, spec)
    r0 = 0
    for w in ws:
        one = gptq_quantize_weight(w, h, spec)
        assert torch.allclose(stacked.weight[r0:r0 + len(w)], one.weight, atol=1e-6)
        assert torch.equal(stacked.q[r0:r0 + len(w)], one.q)
        r0 += len(w)


def test_inverse_hessian_factor_matches_the_reference_formula():
    """One Cholesky of the flipped Hessian gives the same upper factor of H^-1 as GPTQ's reference
    chol(chol_inverse(chol(H)), upper=True)."""
    import torch
    from utils.quant.gptq import inverse_hessian_upper_cholesky
    torch.manual_seed(0)
    x = torch.randn(300, 96, dtype=torch.float64) * torch.rand(96, dtype=torch.float64)
    h = 2 * x.T @ x / 300 + 0.01 * torch.eye(96, dtype=torch.float64)
    ref = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    got = inverse_hessian_upper_cholesky(h)
    assert torch.allclose(got, got.triu()) and torch.allclose(got, ref, rtol=1e-8, atol=1e-10)
    assert torch.allclose(got.T @ got @ h, torch.eye(96, dtype=torch.float64), atol=1e-8)


def test_lower_triangular_inverse_by_halves_matches_a_triangular_solve():
    """The recursive inverse (leaves of 16 here, so three levels of halves) equals solve_triangular(L, I)."""
    import torch
    from utils.quant.gptq import lower_triangular_inverse
    torch.manual_seed(0)
    lower = torch.randn(100, 100, dtype=torch.float64).tril() + 10 * torch.eye(100, dtype=torch.float64)
    got = lower_triangular_inverse(lower, leaf=16)
    ref = torch.linalg.solve_triangular(lower, torch.eye(100, dtype=torch.float64), upper=False)
    assert torch.equal(got, got.tril()) and torch.allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got @ lower, torch.eye(100, dtype=torch.float64), atol=1e-10)
