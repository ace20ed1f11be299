"""Paged attention against textbook attention on random tensors, and the paged engine against transformers."""
import pytest
import torch

from utils.kv.block_manager import BlockManager
from utils.kv.paged_attention import (PagedKVCache, paged_decode_attention, paged_prefill_attention,
                                   reference_attention)

from tests.paged_setup import fill, ragged_paged_case


@pytest.mark.parametrize("heads,kv_heads,block_size", [(4, 4, 4), (8, 2, 16), (6, 1, 3)])   # MHA, GQA, MQA
def test_paged_decode_matches_reference(heads, kv_heads, block_size):
    torch.manual_seed(0)
    lens = [1, 7, 33, 20]
    q, cache, manager, ks, vs = ragged_paged_case(heads, kv_heads, block_size, lens)
    out = paged_decode_attention(q, cache.k[0], cache.v[0], manager.block_table_tensor(range(len(lens))),
                                 torch.tensor(lens))
    for i in range(len(lens)):
        ref = reference_attention(q[i:i + 1], ks[i], vs[i])[0]
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-4)


def test_paged_prefill_with_cached_prefix_matches_reference():
    torch.manual_seed(1)
    heads, kv_heads, d, bs = 4, 2, 8, 4
    manager = BlockManager(16, bs)
    cache = PagedKVCache(1, 16, bs, kv_heads, d)
    k, v = torch.randn(11, kv_heads, d), torch.randn(11, kv_heads, d)
    fill(cache, manager, 0, k, v)
    q = torch.randn(5, heads, d)                        # the last 5 tokens attend to a 6-token cached prefix
    table = torch.tensor(manager.tables[0].blocks)
    out = paged_prefill_attention(q, cache.k[0], cache.v[0], table, start=6)
    torch.testing.assert_close(out, reference_attention(q, k, v, causal_offset=6), atol=1e-5, rtol=1e-4)


def test_copy_block_copies_every_layer():
    cache = PagedKVCache(3, 4, 2, 1, 2)
    cache.k[:, 1] = torch.arange(3.0)[:, None, None, None]
    cache.copy_block(1, 3)
    assert torch.equal(cache.k[:, 3], cache.k[:, 1]) and cache.k[:, 3].abs().sum() > 0


def test_paged_and_contiguous_engines_match_transformers(course_model, course_tokenizer):
    """End to end on the course model: same greedy tokens and logits close to transformers' own loop."""
    from utils.kv.decode_engines import ContiguousEngine, PagedEngine, greedy_generate, hf_greedy_reference
    model, tok = course_model, course_tokenizer
    prompts = [tok(p)["input_ids"] for p in ("The capital of France is", "def add(a, b):\n   ", "Hi")]
    new = 4
    refs = [hf_greedy_reference(model, p, new) for p in prompts]
    for engine in (PagedEngine(model, num_blocks=16, block_size=4), ContiguousEngine(model, 3, 32)):
        tokens, logits = greedy_generate(engine, prompts, new, keep_logits=True)
        for (ref_tokens, ref_logits), got_tokens, got_logits in zip(refs, tokens, logits):
            assert got_tokens == ref_tokens, type(engine).__name__
            torch.testing.assert_close(got_logits, ref_logits, atol=1e-3, rtol=1e-3)
    assert engine.rows == {}, "greedy_generate must free its sequences"


def test_forked_samples_equal_independent_samples_with_fewer_blocks(course_model):
    """Copy-on-write sharing changes memory, not results."""
    from utils.kv.decode_engines import PagedEngine, parallel_sample
    model = course_model
    prompt = list(range(100, 130))                      # 30 tokens: 7 full blocks of 4 + a half-full one
    shared = PagedEngine(model, num_blocks=64, block_size=4)
    tokens_shared, peak_shared = parallel_sample(shared, prompt, n=3, steps=4, share=True)
    separate = PagedEngine(model, num_blocks=64, block_size=4)
    tokens_sep, peak_sep = parallel_sample(separate, prompt, n=3, steps=4, share=False)
    assert tokens_shared == tokens_sep
    assert shared.copies == 2, "two of the three samples copy the shared half-full block; the last writes in place"
    # 4 samples = 3 decode steps writing positions 30, 31, 32: the third opens a new block per sample
    assert peak_shared == 8 + 2 + 3, "8 shared prompt blocks + 2 copies + 3 new blocks"
    assert peak_sep == 3 * (8 + 1)
    assert shared.manager.num_used_blocks == 0


def test_random_paged_kv_is_a_shuffled_copy_of_the_contiguous_kv():
    from utils.kv.paged_attention import masked_decode_attention, random_paged_kv
    q, k, v, kc, vc, tables, lens = random_paged_kv(3, 37, 8, heads=6, kv_heads=2, head_dim=16)
    assert tables.shape == (3, 5) and sorted(tables.flatten().tolist()) == list(range(15))
    torch.testing.assert_close(kc[tables[1, 2]], k[1, 16:24])            # logical block 2 of sequence 1
    torch.testing.assert_close(paged_decode_attention(q, kc, vc, tables, lens), masked_decode_attention(q, k, v, lens))


def test_decode_step_times_times_every_engine_and_frees_them(course_model):
    from utils.kv.decode_engines import ContiguousEngine, PagedEngine, decode_step_times
    engines = {"paged": PagedEngine(course_model, num_blocks=16, block_size=4),
               "contiguous": ContiguousEngine(course_model, 2, 32)}
    t = decode_step_times(engines, [[100, 101, 102], [200, 201]], steps=3, warmup=1)
    assert set(t) == {"paged", "contiguous"} and all(len(x.samples) == 3 and x.min > 0 for x in t.values())
    assert engines["paged"].manager.tables == {} and engines["contiguous"].rows == {}


def test_static_decode_step_equals_the_engines_own_decode(course_model, course_tokenizer):
    """The fixed-shape step that notebook 01 captures in a CUDA graph computes what engine.decode computes: same
    logits, step after step, for both caches (run eagerly here; the notebook checks the replayed graph on a GPU)."""
    from utils.kv.decode_engines import ContiguousEngine, PagedEngine
    from utils.kv.graphed_decode import StaticDecode
    model, tok = course_model, course_tokenizer
    prompts = [tok(p)["input_ids"] for p in ("The capital of France is", "def add(a, b):\n   ", "Hi")]
    ids = list(range(len(prompts)))
    for make in (lambda: PagedEngine(model, num_blocks=24, block_size=4), lambda: ContiguousEngine(model, 3, 40)):
        eager, static = make(), make()
        nxt = {}
        for eng in (eager, static):
            nxt[id(eng)] = [int(eng.prefill(i, p).argmax()) for i, p in zip(ids, prompts)]
        runner = StaticDecode(static, batch=len(prompts), max_len=32)
        for _ in range(4):
            want = eager.decode(ids, nxt[id(eager)])
            got = runner.step(ids, nxt[id(static)])
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            nxt[id(eager)] = want.argmax(-1).tolist()
            nxt[id(static)] = got.argmax(-1).tolist()
        with pytest.raises(ValueError, match="fixed batch"):
            runner.step(ids[:2], [1, 2])
        before = [static.num_tokens(i) for i in ids]
        with pytest.raises(ValueError, match="captured bound"):          # refused before any bookkeeping
            StaticDecode(static, batch=len(prompts), max_len=max(before)).step(ids, [1, 2, 3])
        assert [static.num_tokens(i) for i in ids] == before
    with pytest.raises(ValueError, match="max_len"):
        StaticDecode(ContiguousEngine(model, 1, 16), batch=1, max_len=32)


def test_graphed_greedy_and_step_times_on_cpu(course_model, course_tokenizer):
    from utils.kv.decode_engines import ContiguousEngine, PagedEngine, greedy_generate
    from utils.kv.graphed_decode import graphed_greedy, graphed_step_times
    model, tok = course_model, course_tokenizer
    prompts = [tok(p)["input_ids"] for p in ("The capital of France is", "Hi")]
    want, _ = greedy_generate(PagedEngine(model, num_blocks=16, block_size=4), prompts, 4)
    assert graphed_greedy(PagedEngine(model, num_blocks=16, block_size=4), prompts, 4, max_len=24) == want
    assert graphed_greedy(ContiguousEngine(model, 2, 24), prompts, 4, max_len=24) == want
    engines = {"paged": PagedEngine(model, num_blocks=16, block_size=4), "contiguous": ContiguousEngine(model, 2, 24)}
    t = graphed_step_times(engines, prompts, steps=3, max_len=24, warmup=1)
    for name in engines:
        assert len(t[name]["device"].samples) == 3 and t[name]["step"].median >= t[name]["device"].median > 0
    assert engines["contiguous"].rows == {} and engines["paged"].manager.num_used_blocks == 0
