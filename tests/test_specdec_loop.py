"""The draft-verify loop on a tiny random pair of real transformers models: greedy output identical to the
target's, the KV rollback equal to a freshly computed cache, the sampled output distributed exactly as the
target's (and a wrong sampler caught), clear refusals of bad input."""
import pytest
import torch

from utils.specdec import (ModelDrafter, NGramDrafter, SelfDrafter, SpecDecError, check_same_tokenizer,
                           ngram_propose, rollback, speculative_generate, target_generate)
from utils.specdec.stats import chisquare_test
from utils.specdec.synthetic import exact_sequence_distribution, sampled_counts, tiny_causal_lm


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(1)
    return tiny_causal_lm(vocab=16, seed=0, logit_scale=4.0), tiny_causal_lm(vocab=16, seed=1, logit_scale=4.0)


def test_ngram_propose():
    seq = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    assert ngram_propose(seq, 2, max_n=3) == [4, 5]
    assert ngram_propose(seq, 10, max_n=3) == [4, 5, 9, 1, 2, 3]
    assert ngram_propose([7, 8, 9], 3) == []                      # nothing repeats
    assert ngram_propose([5, 1, 5, 2, 5], 1, max_n=1) == [2]       # the most recent match wins
    assert ngram_propose(seq, 0) == []
    with pytest.raises(SpecDecError):
        NGramDrafter(max_n=1, min_n=2)


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_speculative_equals_target_greedy(pair, gamma):
    target, draft = pair
    g = torch.Generator().manual_seed(gamma)
    for drafter in (ModelDrafter(draft), NGramDrafter(3, 1), SelfDrafter(target)):
        for _ in range(6):
            prompt = torch.randint(0, 16, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
            ref = target_generate(target, prompt, 20).tokens
            res = speculative_generate(target, drafter, prompt, gamma=gamma, max_new_tokens=20)
            assert res.tokens == ref, (drafter, prompt)
            assert len(res.tokens) == 20
            assert res.stats.steps <= 20 and res.stats.emitted == 20


def test_self_drafting_accepts_everything(pair):
    target, _ = pair
    res = speculative_generate(target, SelfDrafter(target), [1, 2, 3], gamma=4, max_new_tokens=21)
    assert res.stats.alpha == 1.0 and res.stats.tokens_per_step == pytest.approx(21 / res.stats.steps)
    assert res.stats.steps == 5                                      # 4 full steps of 5 tokens + 1


@torch.no_grad()
def test_rollback_matches_a_fresh_cache(pair):
    from transformers import DynamicCache
    target, _ = pair
    ids = torch.tensor([[1, 5, 2, 7, 3, 9, 4, 11, 6]])
    grown = DynamicCache()
    target(input_ids=ids[:, :4], past_key_values=grown, use_cache=True)
    target(input_ids=torch.tensor([[2, 2, 2, 2]]), past_key_values=grown, use_cache=True)   # 4 "rejected" drafts
    assert rollback(grown, 4) == 4 and grown.get_seq_length() == 4
    target(input_ids=ids[:, 4:], past_key_values=grown, use_cache=True)
    fresh = DynamicCache()
    target(input_ids=ids, past_key_values=fresh, use_cache=True)
    for a, b in zip(grown.layers, fresh.layers):
        torch.testing.assert_close(a.keys, b.keys)
        torch.testing.assert_close(a.values, b.values)
    with pytest.raises(SpecDecError):
        rollback(grown, 100)


def test_without_rollback_the_output_is_wrong(pair, monkeypatch):
    """The rollback is load-bearing: skip it and greedy outputs diverge from the target's."""
    import utils.specdec.loop as loop
    target, draft = pair
    prompts = [[1, 2, 3], [4, 4, 8, 1], [9], [3, 14, 15, 9, 2]]
    refs = [target_generate(target, p, 16).tokens for p in prompts]
    monkeypatch.setattr(loop, "rollback", lambda cache, keep: 0)
    outs = [speculative_generate(target, ModelDrafter(draft), p, gamma=4, max_new_tokens=16).tokens for p in prompts]
    assert outs != refs


def test_sampled_distribution_equals_target_and_wrong_sampler_is_rejected():
    torch.set_num_threads(1)
    V, n_tok = 5, 2
    target, draft = tiny_causal_lm(V, 0, logit_scale=6.0), tiny_causal_lm(V, 1, logit_scale=6.0)
    prompt = [0, 3, 1]
    exact = exact_sequence_distribution(target, prompt, n_tok).tolist()
    drafter = ModelDrafter(draft)

    def run(mode, n):
        g = torch.Generator().manual_seed(123)
        return sampled_counts(lambda i: speculative_generate(target, drafter, prompt, gamma=3, max_new_tokens=n_tok,
                                                             temperature=1.0, generator=g, mode=mode).tokens,
                              n, n_tok, V)
    assert chisquare_test(run("exact", 1500), exact)["p_value"] > 1e-3
    assert chisquare_test(run("no_ratio", 600), exact)["p_value"] < 1e-6


def test_eos_stops_generation(pair):
    target, draft = pair
    ref = target_generate(target, [1, 2, 3], 20).tokens
    eos = ref[5]
    res = speculative_generate(target, ModelDrafter(draft), [1, 2, 3], 4, 20, eos_token_id=eos)
    assert res.tokens == ref[:ref.index(eos) + 1]


class _Tok:
    def __init__(self, vocab, eos):
        self._v, self.eos_token_id = vocab, eos

    def get_vocab(self):
        return dict(self._v)


def test_bad_input_is_refused_clearly(pair):
    target, draft = pair
    a = _Tok({"a": 0, "b": 1, "c": 2}, 2)
    check_same_tokenizer(a, _Tok({"a": 0, "b": 1, "c": 2}, 2))
    with pytest.raises(SpecDecError, match="do not share a tokenizer.*n-gram"):
        check_same_tokenizer(a, _Tok({"a": 0, "b": 2, "c": 1}, 1))
    with pytest.raises(SpecDecError, match="gamma"):
        speculative_generate(target, ModelDrafter(draft), [1, 2], gamma=0)
    with pytest.raises(SpecDecError, match="draft model"):
        ModelDrafter(None)
    with pytest.raises(SpecDecError, match="target model"):
        speculative_generate(object(), NGramDrafter(), [1, 2])
    with pytest.raises(SpecDecError, match="empty"):
        speculative_generate(target, NGramDrafter(), [])
