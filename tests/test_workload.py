"""Workload generator: seeded, the asked-for lengths, real text, ShareGPT loading."""
import json

import pytest

from utils import workload as wl


@pytest.fixture(scope="module")
def tok():
    from utils.models import load_tokenizer
    return load_tokenizer()


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
