"""Prompts for three workloads, all offline and deterministic:

  edit     "add type hints / rename a variable" in a given Python function: the answer re-types the input with
           small changes, so n-gram lookup finds most of it in the prompt (the case prompt lookup was made for)
  copy     "rewrite this paragraph with one change" on real prose (Python's own reference docs, shipped with
           Python): a summary-like task whose output copies long spans of the input
  free     open-ended generation: nothing to copy, so n-gram drafts rarely match; only a draft MODEL can help
"""
from __future__ import annotations

import inspect

WORKLOADS = ("edit", "copy", "free")

_FUNCTIONS = [
    '''def moving_average(values, window):
    result = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            result.append(total / window)
    return result''',
    '''def word_counts(text, min_length=1):
    counts = {}
    for word in text.lower().split():
        word = word.strip(".,;:!?")
        if len(word) < min_length:
            continue
        counts[word] = counts.get(word, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))''',
    '''def merge_intervals(intervals):
    intervals = sorted(intervals)
    merged = []
    for start, end in intervals:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged''',
    '''def binary_search(items, target):
    low, high = 0, len(items) - 1
    while low <= high:
        middle = (low + high) // 2
        if items[middle] == target:
            return middle
        if items[middle] < target:
            low = middle + 1
        else:
            high = middle - 1
    return -1''',
    '''def flatten(nested):
    output = []
    stack = [iter(nested)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, (list, tuple)):
                stack.append(iter(item))
                break
            output.append(item)
        else:
            stack.pop()
    return output''',
    '''def parse_key_values(line, separator="=", delimiter=";"):
    pairs = {}
    for chunk in line.split(delimiter):
        if not chunk.strip():
            continue
        key, _, value = chunk.partition(separator)
        pairs[key.strip()] = value.strip()
    return pairs''',
]

_EDITS = ["Add Python type hints to this function. Reply with the complete function only.",
          "Rename the variables to longer, more descriptive names. Reply with the complete function only.",
          "Add a docstring to this function. Reply with the complete function only."]

_FREE = ["Write a short story about a lighthouse keeper who finds a message in a bottle.",
         "Explain to a ten-year-old why the sky is blue.",
         "Give me five ideas for a weekend trip in the mountains, one sentence each.",
         "Describe your ideal breakfast in a few sentences.",
         "Write a poem about autumn rain.",
         "What are the pros and cons of working from home?"]


def _passages(n: int) -> list[str]:
    from utils.workload import text_passages
    ps = [p for p in text_passages(300) if len(p) < 700]
    step = max(1, len(ps) // max(n, 1))
    return [ps[i * step] for i in range(n)]


def messages_for(workload: str, n: int) -> list[list[dict]]:
    """n chat conversations (one user turn each) for a workload name."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose one of {WORKLOADS}")
    out = []
    for i in range(n):
        if workload == "edit":
            text = f"{_EDITS[i % len(_EDITS)]}\n\n```python\n{_FUNCTIONS[i % len(_FUNCTIONS)]}\n```"
        elif workload == "copy":
            text = ("Repeat the following paragraph, replacing every occurrence of the word \"the\" with "
                    f"\"THE\". Reply with the paragraph only.\n\n{_passages(n)[i]}")
        else:
            text = _FREE[i % len(_FREE)]
        out.append([{"role": "user", "content": text}])
    return out


def prompt_ids(tokenizer, workload: str, n: int) -> list[list[int]]:
    """Token ids of the chat-formatted prompts (generation prompt added)."""
    ids = []
    for m in messages_for(workload, n):
        x = tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True)
        if isinstance(x, dict) or hasattr(x, "input_ids"):
            x = x["input_ids"]
        ids.append(list(x))
    return ids


def prompt_texts(tokenizer, workload: str, n: int) -> list[str]:
    return [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
            for m in messages_for(workload, n)]
