"""Workload generator: seeded, the asked-for lengths, real text, ShareGPT loading."""
import json

import pytest

from utils import workload as wl


@pytest.fixture(scope="module")
def tok(course_tokenizer):
    return course_tokenizer


def test_passages_are_real_text():
    ps = wl.text_passages()
    assert len(ps) > 100 and all(len(p) >= 200 for p in ps)
    assert not any("::=" in p for p in ps)


def test_synthetic_is_seeded_and_sized(tok):
    a = wl.synthetic_workload(tok, 12, prompt_len=("uniform", 20, 60), output_len=("choice", [8, 64]), seed=3)
    b = wl.synthetic_workload(tok, 12, prompt_len=("uniform", 20, 60), output_len=("choice", [8, 64]), seed=3)
    c = wl.synthetic_workload(tok, 12, prompt_len=("uniform", 20, 60), output_len=("choice", [8, 64]), seed=4)
    assert [r.prompt for r in a] == [r.prompt for r in b] and [r.prompt for r in a] != [r.prompt for r in c]
    assert {r.output_len for r in a} <= {8, 64}
    for r in a:
        assert r.prompt_len == len(tok.encode(r.prompt, add_special_tokens=False))
        assert 20 - 3 <= r.meta["excerpt_tokens"] <= 60
        assert r.prompt_len > r.meta["excerpt_tokens"]                 # instruction + chat template added
        assert r.messages[0]["role"] == "user" and r.messages[0]["content"] in r.prompt
    assert [r.id for r in a] == list(range(12))


def test_length_distributions():
    import random
    rng = random.Random(0)
    assert wl.sample_lengths(3, 7, rng) == [7, 7, 7]
    xs = wl.sample_lengths(500, ("lognormal", 64, 0.8, 8, 256), rng)
    assert min(xs) >= 8 and max(xs) <= 256 and 40 < sorted(xs)[250] < 100
    assert wl.sample_lengths(2, [5, 6], rng) == [5, 6]
    with pytest.raises(ValueError):
        wl.sample_lengths(2, ("zipf", 1), rng)
    with pytest.raises(ValueError):
        wl.sample_lengths(3, [1, 2], rng)


def test_sharegpt(tmp_path, tok):
    data = [{"conversations": [{"from": "human", "value": "What does a for loop do in Python, exactly?"},
                               {"from": "gpt", "value": "It iterates over the items of an iterable, one by one."}]},
            {"conversations": [{"from": "human", "value": "hi"}]},                       # one turn: skipped
            {"conversations": [{"from": "human", "value": "Explain list comprehensions to me."},
                               {"from": "gpt", "value": "ok"}]}]                          # reply < 4 tokens
    p = tmp_path / "sg.json"
    p.write_text(json.dumps(data))
    reqs = wl.load_sharegpt(p, tok)
    assert len(reqs) == 1 and reqs[0].output_len == len(tok.encode(data[0]["conversations"][1]["value"],
                                                                   add_special_tokens=False))
    assert wl.load_sharegpt(p, tok, output_len=32)[0].output_len == 32
    with pytest.raises(FileNotFoundError, match="synthetic_workload"):
        wl.load_sharegpt(tmp_path / "missing.json", tok)


def test_describe(tok):
    df = wl.describe(wl.synthetic_workload(tok, 5, prompt_len=30, output_len=10))
    assert list(df.index) == ["prompt_len", "output_len"] and df.loc["output_len", "total"] == 50


def test_one_sharegpt_reader_for_traces_and_workloads(tmp_path, tok):
    # 01's KV trace and 03's workload read the same file into the same requests (one set of rules: vLLM's).
    from utils.kv.trace import sharegpt_trace
    convs = [{"conversations": [{"from": "human", "value": f"Question {i}: " + "why is decoding slow? " * (i + 2)},
                                {"from": "gpt", "value": "Because of memory bandwidth. " * (i + 2)}]} for i in range(12)]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(convs))
    work = wl.load_sharegpt(path, tok, n=8, seed=1)
    trace = sharegpt_trace(path, tok, n=8, seed=1)
    assert [(r.prompt_len, r.output_len) for r in work] == [(r.prompt_len, r.output_len) for r in trace]
    assert [r.arrival for r in trace] == sorted(r.arrival for r in trace)
    assert type(work[0]) is type(trace[0]) is wl.Request
