"""Serving workloads: which prompts arrive, how long they are, and how many tokens each one asks for.

A serving benchmark is only as meaningful as its workload. There is no dataset hub here, so prompts are
built from real English text that ships with every Python: the language reference in
`pydoc_data.topics` (~80 sections, ~460 KB, what `help("for")` prints). Each request is a chat turn
("Read this excerpt ... and <task>") whose excerpt is cut to a *sampled* number of tokens, and each
request asks for a *sampled* number of output tokens. Both distributions and the seed are explicit, so a
workload is reproducible and its shape is printed next to every result (`describe`).

Output lengths are enforced by the client (max_tokens + ignore_eos), so the benchmark measures the
lengths the workload asked for, not wherever the model happens to stop.

If you have a ShareGPT-style JSON (a list of {"conversations": [{"from": "human", "value": ...},
{"from": "gpt", "value": ...}, ...]}), `load_sharegpt(path, tokenizer)` turns its first exchanges into
requests the same way vLLM's ShareGPT dataset does (prompt = first human turn, output length = token count
of the first reply).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

TASKS = (
    "summarize it in three bullet points",
    "explain it to a beginner who knows another programming language",
    "write two quiz questions about it, with answers",
    "list the rules it states, one per line",
    "give a short example program that illustrates it",
    "say which part is most surprising and why",
)


@dataclass
class Request:
    """One request, for every part of the course: a KV-cache trace (01, 06) and a served workload (03-06).

    prompt_len: tokens of the prompt; output_len: tokens to generate (the client sends max_tokens=output_len
    and ignore_eos=True); messages: the chat turn (for /v1/chat/completions); prompt: the same turn rendered
    with the model's chat template (for /v1/completions and offline `generate`); arrival: when it arrives
    (scheduler steps in a simulated trace; the benchmark client draws its own arrival times).
    A length-only trace leaves messages and prompt empty.
    """
    prompt_len: int
    output_len: int
    messages: list[dict] = field(default_factory=list)
    prompt: str = ""
    arrival: int = 0
    id: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def total_len(self) -> int:
        return self.prompt_len + self.output_len


# ------------------------------------------------------------------------------------------ the text
def text_passages(min_chars: int = 200) -> list[str]:
    """Paragraphs of the Python language reference shipped in `pydoc_data.topics` (real prose, offline).

    Grammar blocks and very short lines are dropped so that excerpts read like text, not like BNF.
    """
    from pydoc_data.topics import topics
    passages = []
    for name in sorted(topics):
        for para in topics[name].split("\n\n"):
            lines = [ln.strip() for ln in para.splitlines()]
            if any(ln.startswith(("*****", "=====", "-----")) for ln in lines):
                continue
            text = " ".join(ln for ln in lines if ln)
            if len(text) >= min_chars and "::=" not in text and text.count(">>>") == 0:
                passages.append(text)
    if not passages:
        raise RuntimeError("pydoc_data.topics has no usable text (a stripped-down Python?). "
                           "Pass a ShareGPT file to load_sharegpt() instead.")
    return passages


def _corpus_ids(tokenizer, passages: list[str]) -> list[int]:
    """All passages tokenized back to back: a long stream to cut excerpts of any length from."""
    ids: list[int] = []
    for p in passages:
        ids.extend(tokenizer.encode(p + "\n\n", add_special_tokens=False))
    return ids


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The chat turn as the text the model sees (chat template + generation prompt)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages) + "\n"


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


# ---------------------------------------------------------------------------------- distributions
def sample_lengths(n: int, dist, rng: random.Random) -> list[int]:
    """n integer lengths from a distribution spec.

    dist: an int (all equal); ("uniform", lo, hi) inclusive; ("lognormal", median, sigma, lo, hi)
    (long-tailed, like real chat traffic, clipped to [lo, hi]); ("choice", [a, b, ...]) (uniform over
    values); or an explicit list of n values.
    """
    if isinstance(dist, int):
        return [dist] * n
    if isinstance(dist, (list, tuple)) and dist and all(isinstance(x, int) for x in dist):
        if len(dist) != n:
            raise ValueError(f"explicit length list has {len(dist)} values, expected {n}")
        return list(dist)
    kind, *args = dist
    if kind == "uniform":
        lo, hi = args
        return [rng.randint(lo, hi) for _ in range(n)]
    if kind == "lognormal":
        import math
        median, sigma, lo, hi = args
        return [int(min(hi, max(lo, round(rng.lognormvariate(math.log(median), sigma))))) for _ in range(n)]
    if kind == "choice":
        (values,) = args
        return [rng.choice(list(values)) for _ in range(n)]
    raise ValueError(f"unknown length distribution {dist!r}: use an int, ('uniform', lo, hi), "
                     f"('lognormal', median, sigma, lo, hi), ('choice', [..]) or a list of n ints")


# ----------------------------------------------------------------------------------- generators
def synthetic_workload(tokenizer, n: int, prompt_len=("lognormal", 128, 0.6, 32, 512),
                       output_len=("lognormal", 64, 0.6, 8, 256), seed: int = 0) -> list[Request]:
    """n chat requests built from the Python reference text.

    prompt_len is the target length of the *excerpt* in tokens (the rendered prompt adds the instruction
    and the chat template, ~30 tokens for SmolLM2); output_len is the number of tokens to generate.
    Same tokenizer + arguments + seed -> the same requests.
    """
    rng = random.Random(seed)
    ids = _corpus_ids(tokenizer, text_passages())
    p_lens = sample_lengths(n, prompt_len, rng)
    o_lens = sample_lengths(n, output_len, rng)
    reqs = []
    for i, (pl, ol) in enumerate(zip(p_lens, o_lens)):
        pl = min(pl, len(ids))
        start = rng.randrange(0, len(ids) - pl + 1)
        excerpt = tokenizer.decode(ids[start:start + pl]).strip()
        task = rng.choice(TASKS)
        messages = [{"role": "user", "content": f"Read this excerpt from the Python reference manual and "
                                                 f"{task}.\n\n{excerpt}"}]
        prompt = render_chat(tokenizer, messages)
        reqs.append(Request(messages=messages, prompt=prompt, prompt_len=count_tokens(tokenizer, prompt),
                            output_len=int(ol), id=i, meta={"task": task, "excerpt_tokens": pl}))
    return reqs


def load_sharegpt(path: str | Path, tokenizer, n: int | None = None, seed: int = 0,
                  max_prompt_len: int = 1024, max_total_len: int = 2048,
                  output_len: int | None = None) -> list[Request]:
    """Requests from a ShareGPT-style JSON (the format of ShareGPT_V3_unfiltered_cleaned_split.json).

    Like vLLM's ShareGPTDataset: conversations with at least two turns; prompt = first turn, output length =
    tokens of the second turn (or `output_len` if given); pairs with prompt or output < 4 tokens, prompt >
    max_prompt_len or prompt+output > max_total_len are skipped. Shuffled with `seed`, first n kept.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No ShareGPT file at {path}. Use synthetic_workload() instead, or pass the "
                                f"path of a JSON list of {{'conversations': [{{'from', 'value'}}, ...]}}.")
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversations, got {type(data).__name__}")
    rng = random.Random(seed)
    data = [d for d in data if isinstance(d, dict) and len(d.get("conversations", [])) >= 2]
    rng.shuffle(data)
    reqs: list[Request] = []
    for d in data:
        first, second = d["conversations"][0], d["conversations"][1]
        messages = [{"role": "user", "content": first["value"]}]
        prompt = render_chat(tokenizer, messages)
        p_len = count_tokens(tokenizer, prompt)
        o_len = output_len or count_tokens(tokenizer, second["value"])
        if p_len < 4 or o_len < 4 or p_len > max_prompt_len or p_len + o_len > max_total_len:
            continue
        reqs.append(Request(messages=messages, prompt=prompt, prompt_len=p_len, output_len=o_len,
                            id=len(reqs), meta={"source": path.name}))
        if n is not None and len(reqs) >= n:
            break
    if not reqs:
        raise ValueError(f"{path}: no conversation passed the length filters "
                         f"(prompt <= {max_prompt_len}, total <= {max_total_len} tokens)")
    return reqs


def describe(requests: list[Request]):
    """Prompt and output length statistics of a workload, as a pandas DataFrame (tokens)."""
    import pandas as pd
    df = pd.DataFrame({"prompt_len": [r.prompt_len for r in requests],
                       "output_len": [r.output_len for r in requests]})
    out = df.describe(percentiles=[0.5, 0.9, 0.99]).T
    out["total"] = df.sum()
    return out[["count", "mean", "min", "50%", "90%", "99%", "max", "total"]]
